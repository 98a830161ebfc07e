"""Predicted against published throughput for the runs in topology/data/published_runs.yaml.

Prints the Markdown table kept in docs/validation.md: each row's estimate under the current
step-time model beside the previous model's (`old_estimate`, at the layout assumed then), then
MAPE, worst error and the correlation of error with model width, over the fully sourced rows and
over all rows. Run: python benchmarks/published_runs.py
"""
from llmlaunch.topology.published import (error, evaluate_run, fully_sourced, load_runs, pearson,
                                          published_tflops, summary)


def main() -> None:
    print("| run | GPUs | engine | dp x pp x tp (v) | micro-batch x m | recompute | fits (GiB) "
          "| published TFLOP/s | estimate | error | previous estimate | previous error | sourced |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for run in load_runs():
        cand = evaluate_run(run)
        lay = cand.layout
        published = published_tflops(run)
        err = error(run, cand)
        old = run.get("old_estimate")
        old_err = old / published - 1 if old else None
        rows.append((run, err, old_err))
        note = " (known gap)" if run.get("known_gap") else ""
        v = f" ({lay.virtual_stages})" if lay.virtual_stages > 1 else ""
        print(f"| {run['name']}{note} | {run['gpus']} | {run['engine']} | {lay.dp} x {lay.pp} x "
              f"{lay.tp}{v} | {lay.micro_batch} x {lay.grad_accum} | {lay.recompute}"
              f"{' + SP' if lay.sequence_parallel else ''} | {'yes' if cand.fits else 'no'} "
              f"({cand.worst_stage.total / 2**30:.1f}) | {published:.1f} | {cand.tflops_per_gpu:.1f} "
              f"| {err:+.1%} | {old if old else '-'} | {f'{old_err:+.1%}' if old_err is not None else '-'} "
              f"| {'yes' if fully_sourced(run) else 'no'} |")
    print()
    for label, chosen in (("fully sourced", [r for r in rows if fully_sourced(r[0])]),
                          ("all rows", rows)):
        for which, index in (("estimate", 1), ("previous", 2)):
            picked = [r for r in chosen if r[index] is not None]
            errs = [r[index] for r in picked]
            widths = [r[0]["model"]["hidden"] for r in picked]
            s = summary(errs)
            print(f"- {label}, {which} model: {s['runs']} rows, MAPE {s['mape']:.1%}, worst "
                  f"{s['worst']:+.1%}, correlation of error with width {pearson(widths, errs):+.2f}")


if __name__ == "__main__":
    main()
