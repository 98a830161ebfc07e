"""Predicted against published throughput for the runs in topology/data/published_runs.yaml.

Prints the Markdown table kept in docs/validation.md: each row's estimate under the current
step-time model beside the per-GEMM model as it first landed (`landed_estimate`) and the model
before issue 17 (`old_estimate`, at the layout assumed then), then MAPE, worst error and the
correlation of error with model width, over the fully sourced rows and over all rows; then the
table of modern runs (topology/data/modern_runs.yaml: H100 and newer, 2023 on), tokens/s per GPU
under the engine that ran each, and its MAPE and worst error.
Run: python benchmarks/published_runs.py
"""
from llmlaunch.topology.published import (error, estimated_tokens_per_s_per_gpu, evaluate_run,
                                          fully_sourced, load_modern_runs, load_runs, memory_error,
                                          pearson, published_tflops, summary)


def modern_table() -> None:
    """The modern runs: layout, engine, precision, fit, published and estimated tokens/s/GPU."""
    print("| run | GPU x count | engine | precision | dp x pp x tp x cp (v, ep) | micro-batch x m "
          "| ZeRO | recompute | fits (GiB) | published tok/s/GPU | estimate | error |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    errors = []
    for run in load_modern_runs():
        cand = evaluate_run(run)
        lay = cand.layout
        err = error(run, cand)
        if not run.get("known_gap"):
            errors.append(err)
        extra = ", ".join(x for x in (f"v {lay.virtual_stages}" if lay.virtual_stages > 1 else "",
                                      f"ep {lay.ep}" if lay.ep > 1 else "") if x)
        fit = f"{'yes' if cand.fits else 'no'} ({cand.worst_stage.total / 2**30:.1f}"
        mem_err = memory_error(run, cand)
        fit += f"; measured {run['memory_gib']}, {mem_err:+.1%})" if mem_err is not None else ")"
        note = " (known gap)" if run.get("known_gap") else ""
        print(f"| {run['name']}{note} | {run['gpu']} x {run['gpus']} | {run['engine']} "
              f"| {run['precision']} | {lay.dp} x {lay.pp} x {lay.tp} x {lay.cp}"
              f"{f' ({extra})' if extra else ''} | {lay.micro_batch} x {lay.grad_accum} "
              f"| {lay.zero_stage} | {lay.recompute}{' + SP' if lay.sequence_parallel else ''} "
              f"| {fit} | {run['tokens_per_s_per_gpu']} "
              f"| {estimated_tokens_per_s_per_gpu(run, cand):.0f} | {err:+.1%} |")
    s = summary(errors)
    print()
    print(f"- modern runs, estimate model: {s['runs']} rows (known gaps apart), MAPE "
          f"{s['mape']:.1%}, worst {s['worst']:+.1%}")


def main() -> None:
    print("| run | GPUs | engine | dp x pp x tp (v) | micro-batch x m | recompute | fits (GiB) "
          "| published TFLOP/s | estimate | error | as landed | its error | before issue 17 "
          "| its error | sourced |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for run in load_runs():
        cand = evaluate_run(run)
        lay = cand.layout
        published = published_tflops(run)
        err = error(run, cand)
        landed, old = run.get("landed_estimate"), run.get("old_estimate")
        landed_err = landed / published - 1 if landed else None
        old_err = old / published - 1 if old else None
        rows.append((run, err, landed_err, old_err))
        note = " (known gap)" if run.get("known_gap") else ""
        v = f" ({lay.virtual_stages})" if lay.virtual_stages > 1 else ""
        cells = [f"{x}" if x else "-" for x in (landed, old)]
        errs = [f"{e:+.1%}" if e is not None else "-" for e in (landed_err, old_err)]
        print(f"| {run['name']}{note} | {run['gpus']} | {run['engine']} | {lay.dp} x {lay.pp} x "
              f"{lay.tp}{v} | {lay.micro_batch} x {lay.grad_accum} | {lay.recompute}"
              f"{' + SP' if lay.sequence_parallel else ''} | {'yes' if cand.fits else 'no'} "
              f"({cand.worst_stage.total / 2**30:.1f}) | {published:.1f} | {cand.tflops_per_gpu:.1f} "
              f"| {err:+.1%} | {cells[0]} | {errs[0]} | {cells[1]} | {errs[1]} "
              f"| {'yes' if fully_sourced(run) else 'no'} |")
    print()
    for label, chosen in (("fully sourced", [r for r in rows if fully_sourced(r[0])]),
                          ("all rows", rows)):
        for which, index in (("estimate", 1), ("as landed", 2), ("before issue 17", 3)):
            picked = [r for r in chosen if r[index] is not None]
            errs = [r[index] for r in picked]
            widths = [r[0]["model"]["hidden"] for r in picked]
            s = summary(errs)
            print(f"- {label}, {which} model: {s['runs']} rows, MAPE {s['mape']:.1%}, worst "
                  f"{s['worst']:+.1%}, correlation of error with width {pearson(widths, errs):+.2f}")
    # Korthikanti et al.'s Table 5 gives iteration times (Calculon: 3.65% mean, 8.87% worst)
    timed = [r for r in rows if r[0]["name"].startswith("korthikanti")]
    for which, index in (("estimate", 1), ("as landed", 2)):
        s = summary([1 / (1 + r[index]) - 1 for r in timed if r[index] is not None])
        print(f"- Korthikanti et al. Table 5, iteration time, {which} model: {s['runs']} rows, "
              f"MAPE {s['mape']:.1%}, worst {s['worst']:+.1%}")
    print()
    modern_table()


if __name__ == "__main__":
    main()
