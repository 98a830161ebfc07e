"""`llmlaunch checkpoint inspect|convert`: a checkpoint directory's tags, and a tag re-sliced
offline for another layout. A thin layer over llmlaunch.launcher.checkpoint_tools."""
from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser("checkpoint", help="inspect a checkpoint directory; convert a tag to "
                       "another layout", description="Checkpoints of llmlaunch runs, offline.")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    i = verbs.add_parser("inspect", help="tags, step, layout, ZeRO stage, size, complete or not",
                         description="Every tag of CKPT_DIR (a run's checkpoints/ folder): its step, "
                                     "layout, ZeRO stage, engine, size, whether every rank finished "
                                     "saving it (complete) and whether it can move to another "
                                     "layout (movable).")
    i.add_argument("ckpt_dir", metavar="CKPT_DIR")
    i.add_argument("--json", action="store_true", help="one JSON object on stdout")
    i.set_defaults(func=run_inspect)
    c = verbs.add_parser("convert", help="re-slice a complete tag for another layout",
                         description="Write DST, a checkpoint directory that a run of LAYOUT resumes "
                                     "from, from SRC_TAG (a tag directory, or a checkpoint directory: "
                                     "its newest complete tag), one tensor at a time. A run resumes "
                                     "on another layout by itself (checkpoint.reshard: auto); convert "
                                     "is for doing it ahead of time or on another machine.")
    c.add_argument("src", metavar="SRC_TAG")
    c.add_argument("--layout", required=True, metavar="dp=D,pp=P,tp=T", help="the target layout")
    c.add_argument("dst", metavar="DST")
    c.add_argument("--force", action="store_true", help="replace an existing DST")
    c.set_defaults(func=run_convert)


def run_inspect(args: argparse.Namespace) -> int:
    from llmlaunch.launcher.checkpoint_tools import format_inspect, inspect

    report = inspect(args.ckpt_dir)
    print(json.dumps(report, indent=2) if args.json else format_inspect(report), end="\n" if args.json else "")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    import time

    from llmlaunch.launcher.checkpoint_tools import convert, parse_layout

    layout = parse_layout(args.layout)
    start = time.perf_counter()
    written = convert(args.src, layout, args.dst, force=args.force)
    print(f"wrote {written} (dp {layout['dp']} x pp {layout['pp']} x tp {layout['tp']}) in "
          f"{time.perf_counter() - start:.1f} s; resume from it with checkpoint.dir: {args.dst}")
    return 0
