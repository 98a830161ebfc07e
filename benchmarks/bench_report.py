"""The plan report page: Python build time, file size, and load time in headless chromium.

Goals (issue 7): building the page for `--gpus 1024 --params 175e9` well under 1 s (plotly import
included), the page drawn in a headless browser in under 2 s, the page for 131072 GPUs under 5 MB.

Load time is what the page itself measures: performance.now() (from navigation start) when every
plot is drawn, written to <body data-render-ms>; data-script-ms is when plotly.js had been parsed
and run. The chromium process's wall time (browser start-up included) is printed beside it.

Run: python benchmarks/bench_report.py [--repeats 5]   (needs chromium: apt-get install chromium)
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "helpers"))
from browser import body_attrs, run_chromium  # noqa: E402

CASES = [("1024 GPUs, 175B", ["--gpus", "1024", "--params", "175e9"]),
         ("131072 GPUs, 175B", ["--gpus", "131072", "--params", "175e9"])]

BUILD = """
import sys, time
from llmlaunch.cli.plan import plan_from_argv
inputs, result, chosen = plan_from_argv(sys.argv[2:])
start = time.perf_counter()
from llmlaunch.report.plan_page import write_plan_report  # plotly is imported inside, lazily
write_plan_report(sys.argv[1], inputs, result, chosen)
print(time.perf_counter() - start)
"""


def build_seconds(out: Path, cli_args: list[str]) -> float:
    """Import of the report module and plotly + building and writing the page, in a fresh process
    (the search before it is not counted: bench_plan.py times that)."""
    proc = subprocess.run([sys.executable, "-c", BUILD, str(out), *cli_args], capture_output=True,
                          text=True, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, cli_args in CASES:
            page = tmp / "plan.html"
            builds = [build_seconds(page, cli_args) for _ in range(args.repeats)]
            size = page.stat().st_size
            renders, scripts, walls = [], [], []
            for i in range(args.repeats):
                start = time.perf_counter()
                dom, console = run_chromium(page, tmp / f"profile{i}", "--dump-dom")
                walls.append(time.perf_counter() - start)
                body = body_attrs(dom)
                if body.get("ready") != "1" or body.get("errors") != "0" or console:
                    raise SystemExit(f"{name}: the page did not draw cleanly: {body} {console}")
                renders.append(int(body["render-ms"]) / 1e3)
                scripts.append(int(body["script-ms"]) / 1e3)
            load = statistics.median(renders)
            print(f"{name:20s} build {statistics.median(builds):.3f} s median (goal < 1 s), "
                  f"page {size / 1e6:.2f} MB ({size:,} bytes)"
                  + (f" (goal < 5 MB: {'met' if size < 5e6 else 'MISSED'})" if "131072" in name else ""))
            print(f"{'':20s} drawn in the browser {load:.3f} s median (min {min(renders):.3f}, max "
                  f"{max(renders):.3f}; plotly.js ready at {statistics.median(scripts):.3f} s; goal "
                  f"< 2 s: {'met' if load < 2 else 'MISSED'}), chromium process "
                  f"{statistics.median(walls):.2f} s wall")


if __name__ == "__main__":
    main()
