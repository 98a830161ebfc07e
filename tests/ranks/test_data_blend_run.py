"""Real ranks training on a blend of the three foreign formats (a Megatron .bin/.idx pair, a
parquet folder, datatrove .ds files) written by the test from known documents: the windows the
ranks read are the hand-computed ones, each source's share is logged, the validation loss reaches
metrics.jsonl and the run page under both engines, a resume at step 3 on another dp and engine
gives the uninterrupted losses, and export-hf writes the run's tokenizer beside the weights."""
import json
import shutil

import numpy as np
import pytest
from token_data import windows_by_hand, write_datatrove, write_megatron, write_parquet
from train_job import Job, losses

VOCAB, SEQ, STEPS = 512, 32, 6
GLOBAL_BATCH = 16          # tiny-cpu: micro-batch 2 x grad_accum 4 x dp 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from llmlaunch.data import default_corpus_path
    from llmlaunch.data.tokenizer import encode_documents, train_bpe

    root = tmp_path_factory.mktemp("blend-run")
    texts = [json.loads(line)["text"] for line in open(default_corpus_path())]
    tokenizer = train_bpe(texts, VOCAB)
    tokenizer.save(str(root / "tokenizer.json"))
    tokens, lengths = encode_documents(tokenizer, texts, tokenizer.token_to_id("<|endoftext|>"))
    ends = np.cumsum(lengths)
    docs = [tokens[e - n:e].tolist() for e, n in zip(ends, lengths)]
    parts = {"meg": docs[:200], "pq": docs[200:300], "dt": docs[300:400], "eval": docs[400:]}
    paths = {"meg": write_megatron(root / "meg", parts["meg"]),
             "pq": write_parquet(root / "pq", parts["pq"]),
             "dt": write_datatrove(root / "dt", parts["dt"]),
             "eval": write_megatron(root / "eval", parts["eval"])}
    sources = [{"path": str(paths[n]), "weight": w, "name": n}
               for n, w in (("meg", 0.5), ("pq", 0.3), ("dt", 0.2))]
    sets = [f"model.vocab={VOCAB}", f"model.seq_len={SEQ}", f"train.steps={STEPS}",
            "checkpoint.every=3", "train.eval_every=2", "train.eval_batches=1",
            f"data.sources={json.dumps(sources)}",
            f"data.eval_sources={json.dumps([{'path': str(paths['eval'])}])}",
            f"data.tokenizer={root / 'tokenizer.json'}"]
    return root, parts, sets


@pytest.fixture(scope="module")
def pipeline_run(data):
    root, _, sets = data
    run_dir = root / "run"
    job = Job(run_dir, *sets)
    assert job.wait(timeout=400) == 0, job.output()[-3000:]
    return run_dir


def test_the_ranks_read_the_hand_computed_windows(data, pipeline_run):
    from llmlaunch.config import load_run_dir_config
    from llmlaunch.launcher.run_data import data_specs, open_training_index

    _, parts, _ = data
    config = load_run_dir_config(pipeline_run)
    index = open_training_index(config, config.layout_obj(), pipeline_run, data_specs(config, pipeline_run))
    assert index.directory.parent == pipeline_run / "data-index"
    for g in range(2 * GLOBAL_BATCH):
        s, j = index.blend.locate(g)
        name = index.names[s]
        stem = index.directory / f"epoch-{s}-0"
        order = np.load(f"{stem}-docs.npy").tolist()
        windows = np.load(f"{stem}-windows.npy").tolist()
        assert index.sample(g)[1].tolist() == windows_by_hand(parts[name], order, [windows[j]],
                                                              SEQ)[0]


def test_shares_eval_loss_and_run_page(pipeline_run):
    from llmlaunch.report.run_page import run_page_html

    records = [json.loads(line) for line in (pipeline_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert [r["step"] for r in records if "eval_loss" in r] == [2, 4, 6]
    assert records[-1]["samples_by_source"] == {"meg": 48, "pq": 29, "dt": 19}
    assert records[-1]["eval_loss"] < records[1]["eval_loss"]
    log = (pipeline_run / "logs" / "rank00000.log").read_text()
    # tiny-cpu logs every 5 steps: 80 samples, 40 + 24 + 16
    assert "| data: meg 50.0%, pq 30.0%, dt 20.0%" in log and "step 6 eval_loss" in log
    assert 'id="fig-metric-eval_loss"' in run_page_html(pipeline_run)


def resume_at_step_3(pipeline_run, run_dir, sets, *more, nproc=None):
    """The run's step-3 checkpoint (and its metrics up to there) resumed with `more` settings."""
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(pipeline_run / "checkpoints" / "step00000003",
                    run_dir / "checkpoints" / "step00000003")
    (run_dir / "checkpoints" / "latest").write_text("step00000003")
    lines = (pipeline_run / "metrics.jsonl").read_text().splitlines()[:3]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    job = Job(run_dir, *sets, *more, nproc=nproc)
    assert job.wait(timeout=400) == 0, job.output()[-3000:]
    return run_dir


def test_evaluation_does_not_disturb_training_and_resume_is_bit_exact(data, pipeline_run):
    """Resumed at step 3 on the same layout without evaluating: steps 4-6 equal the run that
    evaluated at steps 4 and 6, bit for bit (same data position, same randomness)."""
    root, _, sets = data
    run_dir = resume_at_step_3(pipeline_run, root / "no-eval", sets, "train.eval_every=0")
    assert losses(run_dir) == losses(pipeline_run)


@pytest.fixture(scope="module")
def resumed_on_plain_engine(data, pipeline_run):
    """The run's step-3 checkpoint resumed on one rank (dp 1, pp 1: the plain engine)."""
    root, _, sets = data
    return resume_at_step_3(pipeline_run, root / "resumed", sets, "layout.dp=1", "layout.pp=1",
                            "layout.grad_accum=8", nproc=1)


def test_resume_on_another_dp_gives_the_uninterrupted_losses(pipeline_run, resumed_on_plain_engine):
    want = [json.loads(line) for line in (pipeline_run / "metrics.jsonl").read_text().splitlines()]
    got = [json.loads(line) for line in
           (resumed_on_plain_engine / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], rel=1e-5)
    got_eval = {r["step"]: r["eval_loss"] for r in got if "eval_loss" in r}   # 4, 6: plain engine
    want_eval = {r["step"]: r["eval_loss"] for r in want if "eval_loss" in r}
    assert sorted(got_eval) == sorted(want_eval) == [2, 4, 6]
    assert [got_eval[s] for s in (4, 6)] == pytest.approx([want_eval[s] for s in (4, 6)], rel=1e-5)
    assert got[-1]["samples_by_source"] == want[-1]["samples_by_source"]
    assert losses(resumed_on_plain_engine)[:3] == losses(pipeline_run)[:3]


def test_export_hf_writes_the_runs_tokenizer(resumed_on_plain_engine, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmlaunch.cli import main

    out = tmp_path / "hf"
    assert main(["export-hf", str(resumed_on_plain_engine / "checkpoints"), str(out)]) == 0
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert len(tokenizer) == VOCAB and tokenizer.eos_token == "<|endoftext|>"
    assert model.config.eos_token_id == tokenizer.eos_token_id
    prompt = tokenizer("The weather in the town", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=5, do_sample=False,
                               pad_token_id=tokenizer.eos_token_id)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 5
    assert isinstance(tokenizer.decode(generated[0]), str)
