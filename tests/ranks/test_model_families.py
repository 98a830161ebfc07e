"""Each family llmlaunch's model runs, against transformers' own implementation at tp=2 x pp=2: a
tiny random HF model of the family is imported into a (dp=1, pp=2, tp=2) pipeline, and the
pipeline's logits (gathered from the last stage's TP slices) equal AutoModelForCausalLM's on the
same weights (fp32, 1e-5), as the single-process model's do (tests/torch/test_model_hf.py); the
pipeline exports back to HF unchanged.

This file is also the driver the ranks run: one launch, every family in turn.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))  # rank_harness
from rank_harness import run_ranks  # noqa: E402

from llmlaunch.topology.model_spec import ModelSpec  # noqa: E402

# heads and KV heads divisible by tp=2; vocab 200 padded to 256: both TP ranks hold real rows
FAMILIES = {
    "gpt2": ModelSpec(arch="gpt2", layers=3, hidden=64, heads=4, vocab=200, seq_len=16),
    "llama": ModelSpec(arch="llama", layers=3, hidden=64, heads=4, kv_heads=2, head_dim=32,
                       vocab=200, seq_len=16, rope_theta=500000.0, tied_embeddings=True),
    "mistral": ModelSpec(arch="mistral", layers=3, hidden=64, heads=4, kv_heads=2, vocab=200,
                         seq_len=16, sliding_window=5, norm_eps=1e-6),
    "qwen2": ModelSpec(arch="qwen2", layers=3, hidden=64, heads=4, kv_heads=2, vocab=200,
                       seq_len=16, rope_theta=1e6, norm_eps=1e-6),
    "qwen3": ModelSpec(arch="qwen3", layers=3, hidden=64, heads=4, kv_heads=2, head_dim=32,
                       vocab=200, seq_len=16, rope_theta=1e6, norm_eps=1e-6,
                       tied_embeddings=True),
}
PP, TP = 2, 2
TOLERANCE = 1e-5


def tokens_for(spec: ModelSpec) -> torch.Tensor:
    generator = torch.Generator().manual_seed(11)
    return torch.randint(0, spec.vocab, (2, spec.seq_len + 1), generator=generator)


def driver_main(argv):
    import deepspeed
    import torch.distributed as dist

    from llmlaunch.model import build_pipeline_model, export_hf, gather_logits, next_token_batch
    from rank_harness import finish_test_distributed, init_test_distributed, write_rank_result

    parser = argparse.ArgumentParser()
    parser.add_argument("--work", required=True)
    args = parser.parse_args(argv)
    work = Path(args.work)
    init_test_distributed()
    for arch, spec in FAMILIES.items():
        model = build_pipeline_model(spec, pp=PP, tp=TP, dp=1, hf_dir=work / f"{arch}_source")
        config = {"train_batch_size": 2, "train_micro_batch_size_per_gpu": 2,
                  "gradient_accumulation_steps": 1, "steps_per_print": 10 ** 9,
                  "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}
        engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                          config=config)
        inputs, labels = next_token_batch(tokens_for(spec))
        _, logits = engine.eval_batch(iter([(inputs, labels)]), return_logits=True,
                                      num_micro_batches=1)
        if engine.is_last_stage():
            full = gather_logits(logits, model.tp_group, spec.vocab)
            if model.tp_group.rank == 0:
                torch.save(full, work / f"{arch}_logits.pt")
        export_hf(engine, work / f"{arch}_roundtrip")
        dist.barrier()
    write_rank_result({"families": list(FAMILIES)})
    finish_test_distributed()


def test_families_at_tp2_pp2_equal_transformers(tmp_path):
    from hf_models import hf_state, make_random_hf_model  # transformers: not in the ranks
    from transformers import AutoModelForCausalLM

    for arch, spec in FAMILIES.items():
        make_random_hf_model(spec, tmp_path / f"{arch}_source")
    run = run_ranks(__file__, PP * TP, ["--work", str(tmp_path)], timeout_s=280,
                    results_dir=tmp_path / "ranks").check()
    assert sorted(run.results) == list(range(PP * TP)) and not run.leftover_pids
    report = {}
    for arch, spec in FAMILIES.items():
        hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / f"{arch}_source")).eval()
        inputs = tokens_for(spec)[:, :-1]
        with torch.no_grad():
            theirs = hf(inputs).logits
        ours = torch.load(tmp_path / f"{arch}_logits.pt")
        assert ours.shape == theirs.shape
        report[arch] = (ours - theirs).abs().max().item()
        torch.testing.assert_close(ours, theirs, rtol=TOLERANCE, atol=TOLERANCE)
        original, roundtrip = hf_state(tmp_path / f"{arch}_source"), hf_state(
            tmp_path / f"{arch}_roundtrip")
        assert original.keys() == roundtrip.keys()
        for key in original:
            assert torch.equal(original[key], roundtrip[key]), (arch, key)
    print(f"\nmax |logit difference| vs transformers at pp={PP} x tp={TP}: {report}")


if __name__ == "__main__":
    driver_main(sys.argv[1:])
