"""The pre-start data step for every source kind (launcher/run_data.py, data/source_checks.py):
vocabulary, a global batch, evaluation data, the tokenizer, and a multi-host job without data;
plan --emit --data/--tokenizer writing them into run.yaml."""
import numpy as np
import pytest
import yaml
from token_data import known_documents, prepare_checked, write_datatrove, write_megatron, write_parquet

from llmlaunch.cli import main
from llmlaunch.config import ConfigError, RunConfig
from llmlaunch.data import DataError
from llmlaunch.launcher.run_data import parse_data_spec



def config(sources=(), vocab=600, **train):
    c = RunConfig()
    c.model.vocab, c.model.seq_len = vocab, 16
    c.layout.micro_batch, c.layout.grad_accum = 2, 2
    c.data.sources = [dict(s) for s in sources]
    for key, value in train.items():
        setattr(c.train, key, value)
    return c.validate()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("run-checks")
    return root, [{"path": str(write_megatron(root / "meg", known_documents(30, 1))), "weight": 5},
                  {"path": str(write_parquet(root / "pq", known_documents(30, 2))), "weight": 3},
                  {"path": str(write_datatrove(root / "dt", known_documents(30, 3))), "weight": 2}]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from llmlaunch.data.tokenizer import train_bpe

    texts = [f"document number {i} about the weather and the town" for i in range(200)]
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_bpe(texts, 300, "<|endoftext|>").save(str(path))
    return path


def test_a_blend_of_three_kinds_is_checked_and_summarised(sources):
    root, srcs = sources
    held = prepare_checked(config(srcs, steps=10), root)
    assert held.startswith("meg (50%): ") and "pq (30%): " in held and "dt (20%): " in held
    assert "token ids up to 499" in held and "epochs over the run: meg" in held


def test_ids_beyond_the_model_vocabulary_are_refused_for_each_kind(sources):
    root, srcs = sources
    for source in srcs:
        with pytest.raises(DataError, match=r"holds token ids up to 499, but model.vocab is 400"):
            prepare_checked(config([source], vocab=400), root)


def test_each_source_holds_its_share_of_a_global_batch(sources, tmp_path):
    root, srcs = sources
    tiny = write_megatron(tmp_path / "tiny", [list(range(1, 20))])   # 19 tokens: one window of 17
    with pytest.raises(DataError, match=r"tiny' holds 19 tokens: 1 sequence\(s\) of 17 tokens, "
                                        r"fewer than its share \(2\) of one global batch of 4"):
        prepare_checked(config([{**srcs[0], "weight": 1}, {"path": str(tiny), "weight": 1}]), root)


def test_the_tokenizer_must_fit_the_model_and_hold_the_data(sources, tokenizer):
    root, srcs = sources
    c = config(srcs, vocab=200)
    c.data.tokenizer = str(tokenizer)
    with pytest.raises(DataError, match=r"tokenizer.json' has a vocabulary of 300, but model.vocab "
                                        r"is 200: set model.vocab to at least 300"):
        prepare_checked(c, root)
    c = config(srcs)
    c.data.tokenizer = str(tokenizer)
    with pytest.raises(DataError, match=r"holds ids up to 499, beyond the vocabulary of "
                                        r"data.tokenizer .* \(300\)"):
        prepare_checked(c, root)


def test_evaluation_data_is_named_and_large_enough(sources):
    root, srcs = sources
    with pytest.raises(DataError, match="no source has a validation split .* data.eval_sources"):
        prepare_checked(config(srcs, eval_every=5), root)
    c = config(srcs, eval_every=5, eval_batches=1000)
    c.data.eval_sources = [{"path": srcs[0]["path"], "weight": 1.0}]
    with pytest.raises(DataError, match=r"evaluation source .*meg' holds \d+ sequence\(s\) of 17 "
                                        r"tokens; train.eval_batches asks it for 4000"):
        prepare_checked(c, root)
    c.train.eval_batches = 2
    assert prepare_checked(c, root)


def test_no_data_on_several_hosts_needs_allow_toy_corpus(tmp_path):
    c = config()
    assert prepare_checked(c, tmp_path, hosts=1) is None
    with pytest.raises(DataError, match="names no data .* on 2 hosts: .* data.allow_toy_corpus"):
        prepare_checked(c, tmp_path, hosts=2)
    c.data.allow_toy_corpus = True
    assert prepare_checked(c, tmp_path, hosts=2) is None


def test_sources_are_checked_as_config(tmp_path):
    c = RunConfig()
    c.data.path, c.data.sources = "a", [{"path": "b", "weight": 1.0}]
    with pytest.raises(ConfigError, match="give data.path or data.sources, not both"):
        c.validate()
    from llmlaunch.config import from_dict

    for bad, needle in (([{"path": "a", "weight": 0}], "weight must be positive"),
                        ([{"path": "a", "colour": 1}], "unknown key.*colour"),
                        ([{"path": "x/a"}, {"path": "y/a"}], "two sources named 'a'"),
                        ("a", "must be a list")):
        with pytest.raises(ConfigError, match=needle):
            from_dict({"data": {"sources": bad}})


def test_plan_emit_writes_the_data_and_tokenizer(tmp_path, tokenizer, capsys):
    assert parse_data_spec("0.7:/a,0.3:b") == [{"path": "/a", "weight": 0.7},
                                              {"path": str((tmp_path / "x").parent.cwd() / "b"),
                                               "weight": 0.3}]
    with pytest.raises(ValueError, match="is not PATH or WEIGHT:PATH"):
        parse_data_spec("-1:/a")
    out = tmp_path / "emitted"
    assert main(["plan", "--gpu", "cpu", "--gpus", "4", "--gpus-per-node", "4", "--layers", "2",
                 "--hidden", "64", "--heads", "4", "--vocab", "512", "--seq-len", "32", "--emit",
                 str(out), "--data", "2:/data/web,1:/data/code", "--tokenizer", str(tokenizer)]) == 0
    data = yaml.safe_load((out / "run.yaml").read_text())["data"]
    assert data["sources"] == [{"path": "/data/web", "weight": 2.0},
                               {"path": "/data/code", "weight": 1.0}]
    assert data["tokenizer"] == str(tokenizer) and data["allow_toy_corpus"] is False
    assert np.isclose(sum(s["weight"] for s in data["sources"]), 3.0)
