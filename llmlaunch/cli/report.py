"""`llmlaunch report RUN_DIR`: the plan page for a trained run, with its measured curves."""
from __future__ import annotations

import argparse

from llmlaunch.report.run_page import write_run_report


def register(sub) -> None:
    p = sub.add_parser("report", help="the plan page for a trained run, with its measured curves",
                       description="Write RUN_DIR/report.html (or --out): the layout, schedule and "
                                   "memory of the run's plan, loss/lr/grad-norm/tokens-per-second "
                                   "curves from metrics.jsonl, and measured against predicted.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (run.yaml, metrics.jsonl, "
                                                       "optional validate.json)")
    p.add_argument("--out", metavar="FILE.html", help="where to write (default RUN_DIR/report.html;"
                                                      " a .png gets a static image)")
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    out = write_run_report(args.run_dir, args.out)
    print(f"wrote {out}")
    return 0
