"""Wall time of `llmlaunch plan` as a user runs it (a fresh process each time), and of the search alone.

Goals: under 1 s as a whole process for 1024 and for 131072 GPUs (issue 17; issue 2 allowed 5 s at
131072 GPUs), with the engines, FP8, context parallelism and the GPUs of issue 23 too, and the published
DeepSeek-V3 config.json (issue 23: counted from its shapes in pure Python, topology/hf_defaults.py;
it used to import transformers to build the model on the meta device, 7.7 s). Its default sequence
is 8192 tokens (the preset's is 4096), so the search also tries context parallelism: about twice
the preset's layouts.
Run: python benchmarks/bench_plan.py [--repeats 5]
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "helpers"))
from family_configs import CONFIGS  # noqa: E402  (the published DeepSeek-V3 config.json)

HF_DIR = Path(tempfile.mkdtemp(prefix="bench-plan-"))
(HF_DIR / "config.json").write_text(json.dumps(CONFIGS["deepseek-v3"]))

CASES = [
    ("1024 GPUs, 175B", ["plan", "--gpus", "1024", "--params", "175e9"], 1.0),
    ("131072 GPUs, 175B", ["plan", "--gpus", "131072", "--params", "175e9"], 1.0),
    ("131072 GPUs, llama3-405b on H100", ["plan", "--gpus", "131072", "--model", "llama3-405b",
                                          "--gpu", "h100-80gb"], 1.0),
    # Mixture-of-Experts: the search also tries every expert-parallel degree (issue 14)
    ("1024 GPUs, mixtral-8x7b", ["plan", "--gpus", "1024", "--model", "mixtral-8x7b"], 1.0),
    ("131072 GPUs, mixtral-8x7b", ["plan", "--gpus", "131072", "--model", "mixtral-8x7b"], 1.0),
    # issue 23: engines, FP8, context parallelism (searched at 128k tokens), Blackwell, MLA
    ("1024 GPUs, llama3-70b FP8 Megatron-Core", ["plan", "--gpus", "1024", "--model", "llama3-70b",
                                                "--gpu", "h100-80gb", "--engine", "megatron-core",
                                                "--precision", "fp8"], 1.0),
    ("1024 GPUs, llama3-8b at 128k, cp searched", ["plan", "--gpus", "1024", "--model", "llama3-8b",
                                                   "--gpu", "h100-80gb", "--seq-len", "131072"], 1.0),
    ("1024 GPUs, llama3-405b FSDP on B200", ["plan", "--gpus", "1024", "--model", "llama3-405b",
                                             "--gpu", "b200-180gb", "--engine", "fsdp"], 1.0),
    ("1024 GPUs, deepseek-v3 FP8 Megatron-Core", ["plan", "--gpus", "1024", "--model", "deepseek-v3",
                                                  "--gpu", "h100-80gb", "--engine", "megatron-core",
                                                  "--precision", "fp8"], 1.0),
    ("1024 GPUs, DeepSeek-V3 config.json", ["plan", "--gpus", "1024", "--hf-config", str(HF_DIR),
                                            "--gpu", "h100-80gb", "--engine", "megatron-core",
                                            "--precision", "fp8"], 1.0),
]


def wall_seconds(args: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "llmlaunch", *args], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(args)} failed: {proc.stderr.strip()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    baseline = statistics.median(wall_seconds(["--version"]) for _ in range(args.repeats))
    print(f"python start-up + CLI import (llmlaunch --version): {baseline:.3f} s median")
    for name, cli_args, goal in CASES:
        times = [wall_seconds(cli_args) for _ in range(args.repeats)]
        med = statistics.median(times)
        verdict = f"goal < {goal:g} s: {'met' if med < goal else 'MISSED'}"
        print(f"{name:42s} median {med:.3f} s  (min {min(times):.3f}, max {max(times):.3f}; "
              f"{med / baseline:.1f}x start-up; {verdict})")


if __name__ == "__main__":
    main()
