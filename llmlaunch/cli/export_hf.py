"""`llmlaunch export-hf CKPT_DIR OUT_DIR`: a Hugging Face model directory from a complete
checkpoint of any layout and engine. A thin layer over llmlaunch.launcher.checkpoints.tools."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("export-hf", help="write a Hugging Face model directory from a checkpoint",
                       description="OUT_DIR gets config.json and the weights (fp32 master weights) "
                                   "of CKPT_DIR's newest tag that verifies, or of the tag given, "
                                   "whatever the layout and ZeRO stage it was written under; "
                                   "AutoModelForCausalLM.from_pretrained(OUT_DIR) loads it. An "
                                   "OUT_DIR that is, contains or lies inside the checkpoint is "
                                   "refused.")
    p.add_argument("ckpt_dir", metavar="CKPT_DIR", help="a checkpoint directory or one tag of it")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--tokenizer", metavar="PATH",
                   help="tokenizer files to copy beside the model (a directory or one file)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT_DIR")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from llmlaunch.launcher.checkpoints.tools import export_hf

    out = export_hf(args.ckpt_dir, args.out_dir, force=args.force, tokenizer=args.tokenizer)
    print(f"wrote {out}")
    return 0
