"""Predicted against published throughput for the runs in topology/data/published_runs.yaml.

Prints the Markdown table kept in docs/validation.md. Run: python benchmarks/published_runs.py
"""
from llmlaunch.topology.published import evaluate_run, load_runs


def main() -> None:
    print("| run | GPUs | GPU | dp x pp x tp | micro-batch x m | recompute | fits (worst stage GiB) "
          "| published TFLOP/s | estimated | error | source |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for run in load_runs():
        cand = evaluate_run(run)
        lay = cand.layout
        err = cand.tflops_per_gpu / run["tflops_per_gpu"] - 1
        note = " (known gap)" if run.get("known_gap") else ""
        print(f"| {run['name']}{note} | {run['gpus']} | {run['gpu']} | {lay.dp} x {lay.pp} x {lay.tp} "
              f"| {lay.micro_batch} x {lay.grad_accum} | {lay.recompute} "
              f"| {'yes' if cand.fits else 'no'} ({cand.worst_stage.total / 2**30:.1f}) "
              f"| {run['tflops_per_gpu']} | {cand.tflops_per_gpu:.0f} | {err:+.0%} | {run['source']} |")


if __name__ == "__main__":
    main()
