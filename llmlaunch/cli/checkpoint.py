"""`llmlaunch checkpoint inspect|convert`: a checkpoint directory's tags (verified on request), and
a tag re-sliced offline for another layout. A thin layer over llmlaunch.launcher.checkpoints."""
from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser("checkpoint", help="inspect (and verify) a checkpoint directory; convert a "
                       "tag to another layout", description="Checkpoints of llmlaunch runs, offline.")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    i = verbs.add_parser("inspect", help="tags, step, layout, ZeRO stage, size, complete, verified",
                         description="Every tag of CKPT_DIR (a run's checkpoints/ folder): its step, "
                                     "layout, ZeRO stage, engine, size, whether its manifest was "
                                     "written (complete) and whether it can move to another layout "
                                     "(movable). --verify reads every file and compares it with the "
                                     "checksum its manifest recorded: yes, CORRUPT (the file and why "
                                     "below the table), or no checksums (written before they "
                                     "existed); the exit status is 1 when a tag is corrupt.")
    i.add_argument("ckpt_dir", metavar="CKPT_DIR")
    i.add_argument("--verify", action="store_true", help="check every file against its checksum")
    i.add_argument("--json", action="store_true", help="one JSON object on stdout")
    i.set_defaults(func=run_inspect)
    c = verbs.add_parser("convert", help="re-slice a tag for another layout",
                         description="Write DST, a checkpoint directory that a run of LAYOUT resumes "
                                     "from, from SRC_TAG (a tag directory, or a checkpoint directory: "
                                     "its newest tag that verifies), one tensor at a time. The source "
                                     "is verified first; a DST that is, contains or lies inside the "
                                     "source is refused. A run resumes on another layout by itself "
                                     "(checkpoint.reshard: auto); convert is for doing it ahead of "
                                     "time or on another machine.")
    c.add_argument("src", metavar="SRC_TAG")
    c.add_argument("--layout", required=True, metavar="dp=D,pp=P,tp=T", help="the target layout")
    c.add_argument("dst", metavar="DST")
    c.add_argument("--force", action="store_true", help="replace an existing DST")
    c.set_defaults(func=run_convert)


def run_inspect(args: argparse.Namespace) -> int:
    from llmlaunch.launcher.checkpoints.store import CheckpointStore
    from llmlaunch.launcher.checkpoints.tools import format_inspect

    report = CheckpointStore(args.ckpt_dir).inspect(verify=args.verify)
    print(json.dumps(report, indent=2) if args.json else format_inspect(report), end="\n" if args.json else "")
    corrupt = [t for t in report["tags"] if t["verified"] is False and t["problem"]
               and not t["problem"].startswith("incomplete")]
    return 1 if corrupt else 0


def run_convert(args: argparse.Namespace) -> int:
    import time

    from llmlaunch.launcher.checkpoints.store import CheckpointStore
    from llmlaunch.launcher.checkpoints.tools import parse_layout

    layout = parse_layout(args.layout)
    start = time.perf_counter()
    written = CheckpointStore(args.src).convert(layout, args.dst, force=args.force)
    print(f"wrote {written} (dp {layout['dp']} x pp {layout['pp']} x tp {layout['tp']}) in "
          f"{time.perf_counter() - start:.1f} s; resume from it with checkpoint.dir: {args.dst}")
    return 0
