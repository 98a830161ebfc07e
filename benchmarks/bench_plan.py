"""Wall time of `llmlaunch plan` as a user runs it (a fresh process each time), and of the search alone.

Goals: under 1 s as a whole process for 1024 and for 131072 GPUs (issue 17; issue 2 allowed 5 s at
131072 GPUs).
Run: python benchmarks/bench_plan.py [--repeats 5]
"""
import argparse
import statistics
import subprocess
import sys
import time

CASES = [
    ("1024 GPUs, 175B", ["plan", "--gpus", "1024", "--params", "175e9"], 1.0),
    ("131072 GPUs, 175B", ["plan", "--gpus", "131072", "--params", "175e9"], 1.0),
    ("131072 GPUs, llama3-405b on H100", ["plan", "--gpus", "131072", "--model", "llama3-405b",
                                          "--gpu", "h100-80gb"], 1.0),
    # Mixture-of-Experts: the search also tries every expert-parallel degree (issue 14)
    ("1024 GPUs, mixtral-8x7b", ["plan", "--gpus", "1024", "--model", "mixtral-8x7b"], 1.0),
    ("131072 GPUs, mixtral-8x7b", ["plan", "--gpus", "131072", "--model", "mixtral-8x7b"], 1.0),
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
        print(f"{name:36s} median {med:.3f} s  (min {min(times):.3f}, max {max(times):.3f}; "
              f"{med / baseline:.1f}x start-up; goal < {goal:g} s: {'met' if med < goal else 'MISSED'})")


if __name__ == "__main__":
    main()
