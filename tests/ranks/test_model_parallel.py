"""Every layout trains the same model: losses and gradient norms of multi-rank runs (dp, pp, tp)
match the single-process run; per-rank parameter counts match topology/params.py; a trained model
of any layout exports to HF (live and from a DeepSpeed checkpoint) with the same logits; HF import
slices to any layout and exports back unchanged.

This file is also the driver the ranks run (`python -m torch.distributed.run ... this file`), one
launch per layout, training both architectures in turn (DeepSpeed start-up dominates the cost).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from llmlaunch.topology.model_spec import ModelSpec
from llmlaunch.topology.memory import stage_params
from llmlaunch.topology.stage_split import split_stages

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))  # rank_harness
from rank_harness import run_ranks  # noqa: E402

# vocab 200: padded to 256 at tp 1 and 2, so padding is exercised and both TP ranks hold real rows
SPECS = {
    "gpt2": ModelSpec(arch="gpt2", layers=4, hidden=64, heads=4, vocab=200, seq_len=16),
    "llama": ModelSpec(arch="llama", layers=4, hidden=64, heads=4, kv_heads=2, vocab=200,
                       seq_len=16, rope_theta=500000.0),
    # the llama family's variants: QKV biases and a tied head (Qwen2-0.5B's), QK-norm with a head
    # dim other than h/a (Qwen3's)
    "qwen2": ModelSpec(arch="qwen2", layers=4, hidden=64, heads=4, kv_heads=2, vocab=200,
                       seq_len=16, rope_theta=1e6, norm_eps=1e-6, tied_embeddings=True),
    "qwen3": ModelSpec(arch="qwen3", layers=4, hidden=64, heads=4, kv_heads=2, head_dim=32,
                       vocab=200, seq_len=16, rope_theta=1e6, norm_eps=1e-6),
}
SEED = 1234
STEPS = 10
GLOBAL_BATCH = 8
MICRO_BATCH = 2
LR = 1e-3
# the baseline's pre-clip norms range over about 1.5-2.2 (gpt2) and 1.4-1.8 (llama): with these
# thresholds some steps clip and some do not
CLIP = {"gpt2": 1.9, "llama": 1.5, "qwen2": 1.5, "qwen3": 1.98}
RTOL = 1e-4
# bf16 (the GPU setting; DeepSpeed runs it on CPU too) only has to track fp32 loosely
BF16_RTOL = 2e-2
# (dp, pp, tp) -> cases (arch, ZeRO stage, recompute, dtype). ZeRO-1 is the engine path that
# logs the global grad norm; ZeRO-0's fp32 path (runtime/utils.clip_grad_norm_) is recorded by
# the driver.
LAYOUTS = {
    (1, 1, 1): [("gpt2", 1, "none", "fp32"), ("llama", 1, "none", "fp32"),
                ("qwen2", 1, "none", "fp32"), ("qwen3", 1, "none", "fp32")],
    (2, 1, 1): [("gpt2", 1, "none", "fp32"), ("llama", 0, "selective", "fp32")],
    (1, 2, 1): [("gpt2", 0, "full", "fp32"), ("llama", 1, "none", "fp32"),
                ("gpt2", 1, "none", "bf16")],
    (1, 1, 2): [("gpt2", 1, "selective", "fp32"), ("llama", 0, "full", "fp32")],
    (2, 2, 2): [("gpt2", 1, "selective", "fp32"), ("llama", 1, "full", "fp32"),
                ("gpt2", 0, "none", "fp32"), ("llama", 0, "none", "fp32"),
                ("qwen2", 1, "selective", "fp32"), ("qwen3", 1, "full", "fp32")],
}
EXPORT_LAYOUT = (2, 2, 2)
LAUNCH_TIMEOUT_S = 280


# ---------------------------------------------------------------------------------------------
# Driver (runs inside each rank)
# ---------------------------------------------------------------------------------------------

def global_batch(spec: ModelSpec, step: int) -> torch.Tensor:
    """Step `step`'s global batch of token ids [GLOBAL_BATCH, s+1], the same in every layout:
    arithmetic progressions mod V (random start, stride 1-3), learnable within a few steps."""
    generator = torch.Generator().manual_seed(10_000 + step)
    start = torch.randint(0, spec.vocab, (GLOBAL_BATCH, 1), generator=generator)
    stride = torch.randint(1, 4, (GLOBAL_BATCH, 1), generator=generator)
    return (start + stride * torch.arange(spec.seq_len + 1)) % spec.vocab


def ds_config(arch: str, dp: int, zero_stage: int, dtype: str = "fp32") -> dict:
    return {
        "train_batch_size": GLOBAL_BATCH,
        "train_micro_batch_size_per_gpu": MICRO_BATCH,
        "gradient_accumulation_steps": GLOBAL_BATCH // (MICRO_BATCH * dp),
        "optimizer": {"type": "AdamW", "params": {"lr": LR, "weight_decay": 0.01,
                                                  "torch_adam": True}},
        "gradient_clipping": CLIP[arch],
        "zero_optimization": {"stage": zero_stage},
        "steps_per_print": 10 ** 9,
        "bf16": {"enabled": dtype == "bf16"},
    }


def record_fp32_clip_norms(engine) -> list[float]:
    """Without ZeRO the fp32 engine clips with runtime/utils.clip_grad_norm_ and drops the norm it
    computed; run the very same call and keep the norm."""
    from deepspeed.runtime.utils import clip_grad_norm_

    norms = []

    def clip_and_record():
        norm = clip_grad_norm_(parameters=engine.module.parameters(),
                               max_norm=engine.gradient_clipping(), mpu=engine.mpu)
        norms.append(float(norm))

    engine.clip_fp32_gradients = clip_and_record
    return norms


def train_case(arch, zero_stage, recompute, dtype, layout, export_dir):
    import deepspeed

    from llmlaunch.model import build_pipeline_model, count_parameters, replica_micro_batches

    dp, pp, tp = layout
    spec = SPECS[arch]
    model = build_pipeline_model(spec, pp=pp, tp=tp, dp=dp, recompute=recompute, seed=SEED,
                                 dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    params = count_parameters(model)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                      config=ds_config(arch, dp, zero_stage, dtype))
    logs_norm = zero_stage > 0 or dtype == "bf16"   # the ZeRO and bf16 optimizers log the norm
    fp32_norms = None if logs_norm else record_fp32_clip_norms(engine)
    dp_rank = model.mpu().get_data_parallel_rank()
    losses, norms = [], []
    for step in range(STEPS):
        batches = replica_micro_batches(global_batch(spec, step), MICRO_BATCH, dp_rank, dp)
        losses.append(float(engine.train_batch(iter(batches))))
        if logs_norm:
            norms.append(float(engine.get_global_grad_norm()))
    result = {"losses": losses, "norms": norms if logs_norm else fp32_norms,
              "params": params, "stage_blocks": model.stage_blocks()}
    if export_dir is not None and zero_stage == 1 and dtype == "fp32":
        export_trained(engine, spec, arch, Path(export_dir))
    return result


def export_trained(engine, spec, arch, export_dir: Path):
    """HF exports of the trained model (live and via a DeepSpeed checkpoint) and our logits."""
    import torch.distributed as dist

    from llmlaunch.model import (export_hf, export_hf_from_checkpoint, gather_logits,
                                 next_token_batch)

    export_hf(engine, export_dir / f"{arch}_trained")
    inputs, labels = next_token_batch(global_batch(spec, STEPS)[:MICRO_BATCH])
    _, logits = engine.eval_batch(iter([(inputs, labels)]), return_logits=True,
                                  num_micro_batches=1)
    module = engine.module
    if engine.is_last_stage():
        full = gather_logits(logits, module.tp_group, spec.vocab)
        if module.mpu().get_data_parallel_rank() == 0 and module.tp_group.rank == 0:
            torch.save({"inputs": inputs, "logits": full}, export_dir / f"{arch}_logits.pt")
    checkpoint = export_dir / f"{arch}_checkpoint"
    engine.save_checkpoint(str(checkpoint), tag="final")
    dist.barrier()
    if dist.get_rank() == 0:
        export_hf_from_checkpoint(checkpoint, spec, export_dir / f"{arch}_from_checkpoint")
    dist.barrier()


def import_case(arch, hf_dir, layout, export_dir):
    """Slice an HF model to this layout and export it straight back."""
    from llmlaunch.model import build_pipeline_model, export_hf

    dp, pp, tp = layout
    model = build_pipeline_model(SPECS[arch], pp=pp, tp=tp, dp=dp, hf_dir=hf_dir)
    export_hf(model, Path(export_dir) / f"{arch}_roundtrip")


def driver_main(argv):
    import torch.distributed as dist

    from rank_harness import finish_test_distributed, init_test_distributed, write_rank_result

    parser = argparse.ArgumentParser()
    parser.add_argument("--layout", required=True, help="dp,pp,tp")
    parser.add_argument("--export-dir")
    parser.add_argument("--import-hf", action="append", default=[], help="arch=dir")
    args = parser.parse_args(argv)
    layout = tuple(int(x) for x in args.layout.split(","))
    init_test_distributed()
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    coord = PipeModelDataParallelTopology(num_pp=layout[1], num_mp=layout[2],
                                          num_dp=layout[0]).get_coord(dist.get_rank())
    result = {"pipe": coord.pipe, "data": coord.data, "model": coord.model, "cases": {}}
    for arch, zero_stage, recompute, dtype in LAYOUTS[layout]:
        name = f"{arch}/zero{zero_stage}/{recompute}/{dtype}"
        result["cases"][name] = train_case(arch, zero_stage, recompute, dtype, layout,
                                           args.export_dir)
    for item in args.import_hf:
        arch, hf_dir = item.split("=", 1)
        import_case(arch, hf_dir, layout, args.export_dir)
    write_rank_result(result)
    finish_test_distributed()


# ---------------------------------------------------------------------------------------------
# Tests (pytest side)
# ---------------------------------------------------------------------------------------------

def launch(layout, tmp_path, extra_args=()):
    dp, pp, tp = layout
    run = run_ranks(__file__, dp * pp * tp, ["--layout", f"{dp},{pp},{tp}", *extra_args],
                    timeout_s=LAUNCH_TIMEOUT_S, results_dir=tmp_path / "ranks")
    run.check()
    assert not run.leftover_pids
    assert sorted(run.results) == list(range(dp * pp * tp)), run.output[-3000:]
    return run.results


def expected_rank_params(spec: ModelSpec, pp: int, tp: int, stage: int) -> int:
    """The planner's per-GPU parameter count for this stage (topology/memory.py)."""
    return stage_params(spec, stage, pp, tp, split_stages(spec, pp, tp)[stage])


def relative_difference(values, reference):
    return max(abs(v - r) / abs(r) for v, r in zip(values, reference))


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """Per arch, the single-process losses and grad norms."""
    results = launch((1, 1, 1), tmp_path_factory.mktemp("baseline"))
    return {name.split("/")[0]: case for name, case in results[0]["cases"].items()}


def test_single_process_run_trains_and_clips(baseline):
    for arch, case in baseline.items():
        assert len(case["losses"]) == STEPS and all(map(math.isfinite, case["losses"]))
        assert case["losses"][-1] < case["losses"][0] - 0.05, (arch, case["losses"])
        clipped = [n > CLIP[arch] for n in case["norms"]]
        assert any(clipped) and not all(clipped), (arch, case["norms"])


def check_layout_against_baseline(layout, results, baseline):
    dp, pp, tp = layout
    report = {}
    for rank, result in results.items():
        for name, case in result["cases"].items():
            arch = name.split("/")[0]
            spec = SPECS[arch]
            assert case["params"] == expected_rank_params(spec, pp, tp, result["pipe"]), \
                (rank, name, result)
            assert case["stage_blocks"] == split_stages(spec, pp, tp)[result["pipe"]]
            tolerance = BF16_RTOL if name.endswith("bf16") else RTOL
            loss_diff = relative_difference(case["losses"], baseline[arch]["losses"])
            norm_diff = relative_difference(case["norms"], baseline[arch]["norms"])
            assert loss_diff < tolerance, (rank, name, case["losses"], baseline[arch]["losses"])
            assert norm_diff < tolerance, (rank, name, case["norms"], baseline[arch]["norms"])
            worst = report.setdefault(name, [0.0, 0.0])
            worst[0], worst[1] = max(worst[0], loss_diff), max(worst[1], norm_diff)
    print(f"\nlayout dp,pp,tp={layout}: max relative (loss, grad norm) difference "
          + json.dumps(report))


@pytest.mark.parametrize("layout", [k for k in LAYOUTS if k not in ((1, 1, 1), EXPORT_LAYOUT)],
                         ids=lambda layout: "dp{}-pp{}-tp{}".format(*layout))
def test_layout_matches_single_process(layout, baseline, tmp_path):
    check_layout_against_baseline(layout, launch(layout, tmp_path), baseline)


def test_3d_layout_trains_exports_and_imports(baseline, tmp_path):
    """(dp=2, pp=2, tp=2): training matches the single process; the trained model exports to HF
    (live and from its DeepSpeed checkpoint) with our logits; HF -> this layout -> HF is exact."""
    from hf_models import hf_state, make_random_hf_model   # transformers: not in the ranks
    from transformers import AutoModelForCausalLM

    export_dir = tmp_path / "export"
    export_dir.mkdir()
    sources = {arch: make_random_hf_model(spec, tmp_path / f"{arch}_source")
               for arch, spec in SPECS.items()}
    imports = [f"--import-hf={arch}={path}" for arch, path in sources.items()]
    results = launch(EXPORT_LAYOUT, tmp_path, ["--export-dir", str(export_dir), *imports])
    check_layout_against_baseline(EXPORT_LAYOUT, results, baseline)

    for arch in SPECS:
        live, from_checkpoint = (hf_state(export_dir / f"{arch}_trained"),
                                 hf_state(export_dir / f"{arch}_from_checkpoint"))
        assert live.keys() == from_checkpoint.keys()
        for key in live:
            assert torch.equal(live[key], from_checkpoint[key]), key

        ours = torch.load(export_dir / f"{arch}_logits.pt")
        hf_model = AutoModelForCausalLM.from_pretrained(str(export_dir / f"{arch}_trained"))
        with torch.no_grad():
            theirs = hf_model(ours["inputs"]).logits
        assert theirs.shape == ours["logits"].shape
        torch.testing.assert_close(theirs, ours["logits"], rtol=1e-4, atol=1e-4)

        original, roundtrip = hf_state(sources[arch]), hf_state(export_dir / f"{arch}_roundtrip")
        assert original.keys() == roundtrip.keys()
        for key in original:
            assert torch.equal(original[key], roundtrip[key]), (arch, key)


if __name__ == "__main__":
    driver_main(sys.argv[1:])
