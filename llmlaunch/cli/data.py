"""Command-line glue for ``llmlaunch data prepare``.

``llmlaunch/cli/__init__.py`` creates the ``data prepare`` subparser, calls :func:`add_prepare_arguments` on it
and dispatches to :func:`run_prepare`.  Only argparse and the standard library are imported here;
numpy, tokenizers and datasketch load inside ``run_prepare``.
"""

from __future__ import annotations

import argparse
import sys

from llmlaunch.data.errors import DataError

# Duplicated from the modules that own them so that building the parser imports nothing heavy.
_DEFAULT_VOCAB_SIZE = 8192
_DEFAULT_SHARD_SIZE_TOKENS = 100_000_000
_EOD_TOKEN = "<|endoftext|>"


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every ``data prepare`` flag to ``parser``."""
    io = parser.add_argument_group("input and output")
    io.add_argument(
        "--input", dest="inputs", metavar="PATH", nargs="+", action="extend", required=True,
        help="input files, directories or glob patterns (.txt/.md: blank-line separated documents; "
        ".jsonl: one JSON object per line; .parquet: needs pyarrow; text/JSONL may be .gz). Repeatable.",
    )
    io.add_argument("--out", required=True, metavar="DIR", help="output directory (must not exist unless --force)")
    io.add_argument("--force", action="store_true", help="replace an existing --out directory")
    io.add_argument("--text-field", default="text", metavar="NAME", help="JSONL/Parquet field holding the text (default: text)")
    io.add_argument(
        "--text-split", choices=("blank-line", "file"), default="blank-line",
        help="how .txt files split into documents: at blank lines (default) or one document per file",
    )
    io.add_argument(
        "--shard-size-tokens", type=_positive_int, default=_DEFAULT_SHARD_SIZE_TOKENS, metavar="N",
        help=f"start a new shard before a document that would exceed N tokens (default: {_DEFAULT_SHARD_SIZE_TOKENS})",
    )
    io.add_argument(
        "--val-fraction", type=float, default=0.01, metavar="F",
        help="fraction of kept documents held out for validation, chosen by seed; at least one document "
        "when two or more are kept and F > 0 (default: 0.01)",
    )

    tok = parser.add_argument_group("tokenizer")
    choice = tok.add_mutually_exclusive_group()
    choice.add_argument(
        "--vocab-size", type=int, default=None, metavar="N",
        help=f"train a byte-level BPE with N entries on the kept training documents (default: {_DEFAULT_VOCAB_SIZE})",
    )
    choice.add_argument("--tokenizer", metavar="PATH", default=None, help="use this Hugging Face tokenizer (a directory or its tokenizer.json) instead of training one")
    tok.add_argument("--eod-token", default=None, metavar="TOKEN", help=f"end-of-document token appended to every document (default: the given tokenizer's eos_token, else {_EOD_TOKEN})")

    cleaning = parser.add_argument_group("cleaning")
    cleaning.add_argument("--normalization", choices=("NFC", "NFKC"), default="NFC", help="Unicode normal form of the text (default: NFC)")
    cleaning.add_argument(
        "--quality-config", metavar="FILE", default=None,
        help="YAML or JSON mapping of quality thresholds to override (see docs/data.md)",
    )
    cleaning.add_argument(
        "--quality", metavar="NAME=VALUE", action="append", default=[],
        help="override one quality threshold, e.g. min_words=20 or disabled=stop_words,top_ngram. Repeatable.",
    )
    cleaning.add_argument("--no-quality-filters", action="store_true", help="skip all quality filters")
    cleaning.add_argument("--no-near-dup", action="store_true", help="skip MinHash near-duplicate removal")
    cleaning.add_argument("--near-dup-threshold", type=float, default=0.8, metavar="J", help="Jaccard similarity that makes a near duplicate (default: 0.8)")
    cleaning.add_argument("--near-dup-num-perm", type=_positive_int, default=128, metavar="N", help="MinHash permutations (default: 128)")
    cleaning.add_argument("--near-dup-shingle-words", type=_positive_int, default=5, metavar="N", help="words per MinHash shingle (default: 5)")
    cleaning.add_argument(
        "--eval", dest="eval_inputs", metavar="PATH", nargs="+", action="extend", default=[],
        help="evaluation files: training documents sharing an n-gram with them are dropped. Repeatable.",
    )
    cleaning.add_argument("--decontam-ngram", type=_positive_int, default=13, metavar="N", help="n-gram length in words for decontamination (default: 13)")

    run = parser.add_argument_group("run")
    run.add_argument("--seed", type=_non_negative_int, default=0, metavar="N", help="seed for MinHash and the validation split (default: 0)")
    run.add_argument("--workers", type=_positive_int, default=1, metavar="N", help="worker processes for cleaning and tokenisation (default: 1)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bars on stderr (default: when stderr is a terminal)")
    many = parser.add_argument_group("beyond one process (docs/data.md: the same output, from N tasks)")
    many.add_argument("--tasks", type=_positive_int, default=1, metavar="N",
                      help="split scanning and deduplication into N tasks (needs --tokenizer); "
                      "without --slurm or --stage they run here, --workers at a time")
    many.add_argument("--slurm", action="store_true",
                      help="run the N tasks as Slurm array jobs of this command (sbatch), and wait")
    many.add_argument("--slurm-option", dest="slurm_options", action="append", default=[], metavar="OPT",
                      help="an sbatch option for those jobs, e.g. --slurm-option=--partition=cpu. Repeatable.")
    many.add_argument("--stage", choices=("scan", "dedup", "finish"),
                      help="run one stage's task only (what each Slurm task runs)")
    many.add_argument("--task", type=_non_negative_int, default=None, metavar="I",
                      help="the task of --stage (default: $SLURM_ARRAY_TASK_ID, else 0)")
    many.add_argument("--work", metavar="DIR", default=None,
                      help="the stages' work folder, on a file system every host sees "
                      "(default: .OUT.work beside --out)")


def config_from_args(args: argparse.Namespace):
    """Translate parsed flags into a :class:`~llmlaunch.data.prepare.PrepareConfig`."""
    import dataclasses

    from llmlaunch.data.clean import NearDupConfig
    from llmlaunch.data.prepare import PrepareConfig
    from llmlaunch.data.quality import FILTER_NAMES, load_thresholds

    thresholds = load_thresholds(args.quality_config, args.quality)
    if args.no_quality_filters:
        thresholds = dataclasses.replace(thresholds, disabled=FILTER_NAMES)
    tokenizer, eod_token = args.tokenizer, args.eod_token or _EOD_TOKEN
    if args.tokenizer:   # a directory or tokenizer.json; the EOD from tokenizer_config.json
        from llmlaunch.data.tokenizer_files import load_run_tokenizer

        found = load_run_tokenizer(args.tokenizer, args.eod_token or "", label="--tokenizer")
        tokenizer, eod_token = str(found.path), found.eod_token
    return PrepareConfig(
        inputs=list(args.inputs),
        out=args.out,
        vocab_size=args.vocab_size,
        tokenizer=tokenizer,
        eval_inputs=list(args.eval_inputs),
        seed=args.seed,
        workers=args.workers,
        force=args.force,
        text_field=args.text_field,
        text_split=args.text_split,
        normalization=args.normalization,
        val_fraction=args.val_fraction,
        eod_token=eod_token,
        shard_size_tokens=args.shard_size_tokens,
        thresholds=thresholds,
        near_dup=NearDupConfig(
            enabled=not args.no_near_dup,
            threshold=args.near_dup_threshold,
            num_perm=args.near_dup_num_perm,
            shingle_words=args.near_dup_shingle_words,
        ),
        decontam_ngram_words=args.decontam_ngram,
        progress=args.progress,
        work=args.work,
    )


def format_summary(manifest: dict) -> str:
    """A few lines describing a finished preparation."""
    splits = manifest["splits"]
    removed = ", ".join(f"{name}={count}" for name, count in manifest["removed"].items() if count) or "none"
    return (
        f"documents: {manifest['documents_in']} in, {manifest['documents_out']} out "
        f"(train {splits['train']['documents']}, val {splits['val']['documents']})\n"
        f"removed: {removed}\n"
        f"tokens: {manifest['tokens_out']} (train {splits['train']['tokens']}, val {splits['val']['tokens']}), "
        f"vocab {manifest['vocab_size']}, {manifest['dtype']}"
    )


def run_prepare(args: argparse.Namespace) -> int:
    """Run ``data prepare`` for parsed ``args``; print a summary to stdout; return the exit code (0).

    Bad input raises :class:`~llmlaunch.data.errors.DataError` (a ``ValueError``) with a one-line message.
    """
    import os

    from llmlaunch.data.prepare import prepare

    config = config_from_args(args)
    if args.tasks == 1 and (args.stage or args.slurm):
        raise DataError("--stage and --slurm go with --tasks N (N > 1)")
    if args.tasks > 1:
        from llmlaunch.data import prepare_tasks

        if config.tokenizer is None:
            raise DataError("data prepare --tasks needs --tokenizer (training a tokenizer needs every "
                            "document in one place: train one first, or give your model's)")
        if args.slurm:
            from llmlaunch.data.prepare_slurm import submit

            return submit(_argv_of(args), args.tasks, prepare_tasks.work_dir(config),
                          args.slurm_options)
        if args.stage:
            task = args.task if args.task is not None else int(os.environ.get("SLURM_ARRAY_TASK_ID", "0"))
            print(f"data prepare: stage {args.stage} task {task} of {args.tasks} on "
                  f"{os.uname().nodename}", flush=True)
            manifest = prepare_tasks.run_stage(config, args.stage, task, args.tasks)
        else:
            manifest = prepare_tasks.run_local(config, args.tasks, args.workers)
        if manifest is not None:
            print(f"wrote {config.out}")
            print(format_summary(manifest))
        return 0
    result = prepare(config)
    print(f"wrote {result.out}")
    print(format_summary(result.manifest))
    sys.stdout.flush()
    return 0


_NOT_PASSED_ON = {"slurm", "slurm_options", "stage", "task", "func", "_parser", "command",
                  "data_command", "help"}


def _argv_of(args: argparse.Namespace) -> list[str]:
    """The flags `args` was parsed from (those a stage task needs), for the same command on another
    host: every option whose value is not its default, --out and --input always."""
    out = []
    for action in args._parser._actions:
        if action.dest in _NOT_PASSED_ON or not action.option_strings:
            continue
        value, flag = getattr(args, action.dest, None), action.option_strings[-1]
        if isinstance(action, argparse.BooleanOptionalAction):
            out += [] if value is None else [f"--{action.dest.replace('_', '-')}" if value
                                             else f"--no-{action.dest.replace('_', '-')}"]
        elif isinstance(action, argparse._StoreTrueAction):
            out += [flag] if value else []
        elif isinstance(action, (argparse._AppendAction, argparse._ExtendAction)) or action.nargs == "+":
            if value:
                out += [flag, *map(str, value)] if action.nargs == "+" else \
                    [x for item in value for x in (flag, str(item))]
        elif value is not None and (value != action.default or action.required):
            out += [flag, str(value)]
    return out


__all__ = ["DataError", "add_prepare_arguments", "config_from_args", "format_summary", "run_prepare"]


def register(sub) -> None:
    """`llmlaunch data prepare`."""
    p = sub.add_parser("data", help="prepare training data")
    data_sub = p.add_subparsers(dest="data_command", metavar="{prepare}", required=True)
    prep = data_sub.add_parser("prepare", help="raw text to deduplicated, filtered, tokenized shards")
    add_prepare_arguments(prep)
    prep.set_defaults(func=run_prepare, _parser=prep)
