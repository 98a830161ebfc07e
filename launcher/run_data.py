"""A run's training data: run.yaml's data.path resolved against the run directory, or the corpus
shipped with llmlaunch prepared once into RUN_DIR/data."""
from __future__ import annotations

from pathlib import Path

from llmlaunch.config import RunConfig


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
    target = run_dir / "data"
    if rank == 0 and not (target / "manifest.json").is_file():
        from llmlaunch.data import default_corpus_path
        from llmlaunch.data.prepare import PrepareConfig, prepare

        prepare(PrepareConfig(inputs=[str(default_corpus_path())], out=target,
                              vocab_size=config.model.vocab, seed=config.train.seed, force=True,
                              progress=False))
    return target
