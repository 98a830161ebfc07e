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
                   help="tokenizer files to write beside the model (a directory or its "
                        "tokenizer.json; default: the run's, data.tokenizer or its prepared "
                        "data's tokenizer.json)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT_DIR")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from llmlaunch.launcher.checkpoints.tools import export_hf

    out = export_hf(args.ckpt_dir, args.out_dir, force=args.force,
                    tokenizer=export_tokenizer(args.ckpt_dir, args.tokenizer))
    print(f"wrote {out}")
    return 0


def export_tokenizer(ckpt_dir: str, given: str | None):
    """What export-hf writes beside the weights: a transformers tokenizer (AutoTokenizer loads it)
    from --tokenizer, else from the run the checkpoint belongs to (launcher/run_data.py); None when
    neither names one."""
    from pathlib import Path

    from llmlaunch.launcher.checkpoints.tools import resolve_tag
    from llmlaunch.launcher.run_data import tokenizer_of_run

    if given:
        from llmlaunch.data.tokenizer_files import load_run_tokenizer

        found = load_run_tokenizer(given, label="--tokenizer")
    else:
        # only where the tag lies (its manifest; export_hf verifies the files and says so)
        tag = resolve_tag(ckpt_dir, say=lambda _line: None, files=False).tag_dir
        found = next((t for t in (tokenizer_of_run(d) for d in (tag.parent.parent, tag.parent))
                      if t is not None), None)
    if found is None:
        return None
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if found.directory is not None and (Path(found.directory) / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(found.directory), local_files_only=True)
    return PreTrainedTokenizerFast(tokenizer_file=str(found.path), eos_token=found.eod_token,
                                   bos_token=found.eod_token)
