"""A run's training data: run.yaml's data.path resolved against the run directory, or the corpus
shipped with llmlaunch prepared once into RUN_DIR/data."""
from __future__ import annotations

import sys
from pathlib import Path

from llmlaunch.config import RunConfig
from llmlaunch.run_files import DATA


def given_data_path(config: RunConfig, run_dir: Path) -> Path | None:
    """data.path resolved against the run directory (None: the shipped corpus); it must exist."""
    if not config.data.path:
        return None
    path = Path(config.data.path)
    path = path if path.is_absolute() else (run_dir / path)
    if not path.exists():
        raise ValueError(f"data.path {str(path)!r} does not exist: prepare it with `llmlaunch "
                         "data prepare --out DIR`, or leave data.path empty for the shipped corpus")
    return path


def ensure_data(config: RunConfig, run_dir: Path, rank: int) -> Path:
    """data.path, or the shipped corpus prepared once into RUN_DIR/data (by global rank 0, before
    the process group forms: the others wait for it at the rendezvous)."""
    given = given_data_path(config, run_dir)
    if given is not None:
        return given
    target = run_dir / DATA
    if rank == 0 and not (target / "manifest.json").is_file():
        from llmlaunch.data import default_corpus_path
        from llmlaunch.data.prepare import PrepareConfig, prepare

        prepare(PrepareConfig(inputs=[str(default_corpus_path())], out=target,
                              vocab_size=config.model.vocab, seed=config.train.seed, force=True,
                              progress=False))
    return target


def check_run_data(config: RunConfig, run_dir: Path) -> str | None:
    """Refuse data that does not belong to the model, before any rank starts (llmlaunch.data.checks:
    the manifest's vocabulary, or a flat file's dtype and largest id, and enough tokens for a
    global batch). Returns what the data holds (None: the shipped corpus, which the ranks prepare
    for this model's vocabulary)."""
    from llmlaunch.data.checks import check_against_model, summarize

    path = given_data_path(config, run_dir)
    if path is None:
        return None
    summary = summarize(path, dtype=config.data.dtype or None)
    lay = config.layout_obj()
    check_against_model(summary, vocab=config.model.vocab, seq_len=config.model.seq_len,
                        global_batch=lay.global_batch)
    return summary.describe()


def main(argv: list[str] | None = None) -> int:
    """`python -m llmlaunch.launcher.run_data --config RUN.yaml --run-dir DIR [--set ...]`: the check
    the Slurm job body runs on its first host before any rank starts; 0 when the data fits."""
    from .entry import rank_arguments

    try:
        config, run_dir = rank_arguments(argv, "llmlaunch.launcher.run_data",
                                         "check run.yaml's data against its model")
        held = check_run_data(config, run_dir)
    except ValueError as exc:
        print(f"llmlaunch: error: {exc}", file=sys.stderr)
        return 2
    print(f"llmlaunch: data: {held or 'the shipped corpus (prepared for the model by rank 0)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
