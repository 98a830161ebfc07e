"""Hugging Face round trip of the MoE families at ep 2 x tp 2 (dp 2, 4 ranks): a tiny random
transformers Mixtral (4 experts, top-2) and Qwen3-MoE (8 experts, top-4, un-normalised top-k
weights) are imported into llmlaunch's model with their experts split over the expert-parallel
group and every matrix over the tensor-parallel one; its logits (every replica's, gathered from the
TP slices) equal transformers' on the same weights (fp32, 1e-5), and `export_hf` writes the
experts back, from the ranks that hold them, to a directory transformers loads: the same tensors,
so the same logits.

This file is also the driver the ranks run: one launch, both families in turn.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))  # rank_harness
from moe_specs import tiny_moe_families  # noqa: E402
from rank_harness import run_ranks  # noqa: E402

from llmlaunch.topology.model_spec import ModelSpec  # noqa: E402

FAMILIES = tiny_moe_families(hidden=64, vocab=200, seq_len=16)
DP, TP, EP = 2, 2, 2
TOLERANCE = 1e-5


def tokens_for(spec: ModelSpec) -> torch.Tensor:
    generator = torch.Generator().manual_seed(12)
    return torch.randint(0, spec.vocab, (2, spec.seq_len + 1), generator=generator)


def driver_main(argv):
    import deepspeed
    import torch.distributed as dist

    from llmlaunch.model import build_pipeline_model, export_hf, gather_logits, next_token_batch
    from llmlaunch.model.lm import logits_of
    from llmlaunch.model.sharding import canonical_named_parameters, expert_of
    from rank_harness import finish_test_distributed, init_test_distributed, write_rank_result

    parser = argparse.ArgumentParser()
    parser.add_argument("--work", required=True)
    args = parser.parse_args(argv)
    work = Path(args.work)
    init_test_distributed()
    held = {}
    for arch, spec in FAMILIES.items():
        model = build_pipeline_model(spec, pp=1, tp=TP, dp=DP, ep=EP,
                                     hf_dir=work / f"{arch}_source")
        config = {"train_batch_size": 2 * DP, "train_micro_batch_size_per_gpu": 2,
                  "gradient_accumulation_steps": 1, "steps_per_print": 10 ** 9,
                  "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}
        engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                          config=config)
        inputs, labels = next_token_batch(tokens_for(spec))
        _, output = engine.eval_batch(iter([(inputs, labels)]), return_logits=True,
                                      num_micro_batches=1)
        full = gather_logits(logits_of(output), model.tp_group, spec.vocab)
        replica = engine.grid.get_data_parallel_id()
        if model.tp_group.rank == 0:
            torch.save(full, work / f"{arch}_logits_dp{replica}.pt")
        held[arch] = sorted({expert_of(name) for name, _ in canonical_named_parameters(model)}
                            - {None})
        export_hf(engine, work / f"{arch}_roundtrip")
        dist.barrier()
    write_rank_result({"experts_held": held})
    finish_test_distributed()


def test_moe_families_at_ep2_tp2_equal_transformers_and_export_back(tmp_path):
    from hf_models import hf_logits, hf_state, make_random_hf_model  # transformers: not in ranks

    for arch, spec in FAMILIES.items():
        make_random_hf_model(spec, tmp_path / f"{arch}_source")
    world = DP * TP
    run = run_ranks(__file__, world, ["--work", str(tmp_path)], timeout_s=280,
                    results_dir=tmp_path / "ranks").check()
    assert sorted(run.results) == list(range(world)) and not run.leftover_pids
    report = {}
    for arch, spec in FAMILIES.items():
        per_rank = spec.experts // EP
        for rank, result in run.results.items():      # dp rank = rank // tp; ep rank = dp rank
            first = (rank // TP) % EP * per_rank
            assert result["experts_held"][arch] == list(range(first, first + per_rank))
        inputs = tokens_for(spec)[:, :-1]
        theirs = hf_logits(tmp_path / f"{arch}_source", inputs)
        for replica in range(DP):
            ours = torch.load(tmp_path / f"{arch}_logits_dp{replica}.pt")
            assert ours.shape == theirs.shape
            torch.testing.assert_close(ours, theirs, rtol=TOLERANCE, atol=TOLERANCE)
        report[arch] = (ours - theirs).abs().max().item()
        original, roundtrip = (hf_state(tmp_path / f"{arch}_source"),
                               hf_state(tmp_path / f"{arch}_roundtrip"))
        assert original.keys() == roundtrip.keys()
        for key in original:
            assert torch.equal(original[key], roundtrip[key]), (arch, key)
        torch.testing.assert_close(hf_logits(tmp_path / f"{arch}_roundtrip", inputs), theirs,
                                   rtol=0, atol=0)
    print(f"\nmax |logit difference| vs transformers at ep={EP} x tp={TP} (dp={DP}): {report}")


if __name__ == "__main__":
    driver_main(sys.argv[1:])
