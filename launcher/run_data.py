"""A run's data: run.yaml's data section resolved against the run directory, checked against the
model before any rank starts, and its sample index built once (data/sample_index.py).

- `data_specs`: data.sources (or data.path as one source), paths resolved; None: the corpus shipped
  with llmlaunch, prepared once into RUN_DIR/data by global rank 0 (`ensure_data`).
- `prepare_run_data(config, layout, run_dir, hosts)`: the pre-start step the supervisor (launcher/job.py)
  runs once, under Slurm and locally: every source's files against its index or manifest, the
  vocabulary against the model, at least one global batch, the evaluation data, and the index built
  or reused. Raises DataError with one line.
- `open_training_index` / `open_eval_index`: what a rank reads (memory-mapped, never loaded).
"""
from __future__ import annotations

from pathlib import Path

from llmlaunch.config import RunConfig
from llmlaunch.run_files import DATA
from llmlaunch.topology.layout import Layout


def _resolve(path: str, run_dir: Path) -> str:
    given = Path(path)
    return str(given if given.is_absolute() else (run_dir / given))


def data_specs(config: RunConfig, run_dir: Path):
    """The run's training sources (SourceSpecs), or None for the shipped corpus."""
    from llmlaunch.data.sources import SourceSpec

    d = config.data
    entries = d.sources or ([{"path": d.path, "weight": 1.0}] if d.path else [])
    if not entries:
        return None
    return [SourceSpec(path=_resolve(e["path"], run_dir), weight=float(e.get("weight", 1.0)),
                       split=e.get("split", "train"), name=e.get("name", ""),
                       column=e.get("column", ""), dtype=e.get("dtype", "") or d.dtype)
            for e in entries]


def shipped_corpus_specs(run_dir: Path):
    from llmlaunch.data.sources import SourceSpec

    return [SourceSpec(path=str(run_dir / DATA), name="data")]


def eval_specs(config: RunConfig, run_dir: Path, train_specs):
    """data.eval_sources, else the val split of each prepared training source (weights kept)."""
    import dataclasses

    from llmlaunch.data.sources import SourceSpec, detect_kind

    if config.data.eval_sources:
        return [SourceSpec(path=_resolve(e["path"], run_dir), weight=float(e.get("weight", 1.0)),
                           split=e.get("split", "train"), name=e.get("name", ""),
                           column=e.get("column", ""), dtype=e.get("dtype", "") or config.data.dtype)
                for e in config.data.eval_sources]
    found = [dataclasses.replace(s, split="val") for s in train_specs
             if Path(s.path).exists() and detect_kind(Path(s.path)) == "prepared"]
    if not found:
        from llmlaunch.data.errors import DataError

        raise DataError("train.eval_every is set but no source has a validation split (only `data "
                        "prepare` directories do): name the evaluation data in data.eval_sources")
    return found


def ensure_data(config: RunConfig, layout: Layout, run_dir: Path, rank: int):
    """The run's sources; the shipped corpus is prepared once into RUN_DIR/data by global rank 0
    (before the process group forms: the others wait for it at the rendezvous), which also builds
    the index when no pre-start step did."""
    specs = data_specs(config, run_dir)
    if specs is None:
        target = run_dir / DATA
        if rank == 0 and not (target / "manifest.json").is_file():
            from llmlaunch.data import default_corpus_path
            from llmlaunch.data.prepare import PrepareConfig, prepare

            prepare(PrepareConfig(inputs=[str(default_corpus_path())], out=target,
                                  vocab_size=config.model.vocab, seed=config.train.seed,
                                  force=True, progress=False))
        specs = shipped_corpus_specs(run_dir)
    if rank == 0:
        build_indexes(config, layout, run_dir, specs)
    return specs


def run_samples(config: RunConfig, layout: Layout) -> int:
    return config.train.steps * layout.global_batch


def build_indexes(config: RunConfig, layout: Layout, run_dir: Path, specs,
                  log=lambda line: None):
    """Build or reuse the training index (and the evaluation one); returns (train dir, eval dir)."""
    from llmlaunch.data.sample_index import build_index, index_root

    common = dict(seed=config.train.seed, seq_len=config.model.seq_len,
                  global_batch=layout.global_batch, log=log)
    train = build_index(specs, index_root(run_dir), samples=run_samples(config, layout), **common)
    evaluation = None
    if config.train.eval_every:
        evaluation = build_index(eval_specs(config, run_dir, specs), index_root(run_dir),
                                 samples=0, **common)
    return train, evaluation


def open_training_index(config: RunConfig, layout: Layout, run_dir: Path, specs):
    from llmlaunch.data.sample_index import find_index, index_root

    return find_index(specs, index_root(run_dir), seed=config.train.seed,
                      seq_len=config.model.seq_len, global_batch=layout.global_batch)


def open_eval_index(config: RunConfig, layout: Layout, run_dir: Path, specs):
    from llmlaunch.data.sample_index import find_index, index_root

    index = find_index(eval_specs(config, run_dir, specs), index_root(run_dir),
                       seed=config.train.seed, seq_len=config.model.seq_len,
                       global_batch=layout.global_batch)
    index.shuffle = False   # evaluation reads its windows in order: the same batches every time
    return index


def prepare_run_data(config: RunConfig, layout: Layout, run_dir: Path, hosts: int = 1,
                     log=lambda line: None) -> str | None:
    """The pre-start check and index build (module docstring); returns what the data holds (None:
    the shipped corpus, which rank 0 prepares for this model's vocabulary)."""
    from llmlaunch.data.errors import DataError
    from llmlaunch.data.source_checks import check_index_against_model

    specs = data_specs(config, run_dir)
    tokenizer = None
    if config.data.tokenizer:
        from llmlaunch.data.tokenizer_files import load_run_tokenizer

        tokenizer = load_run_tokenizer(_resolve(config.data.tokenizer, run_dir),
                                       config.data.eod_token)
        if tokenizer.vocab_size > config.model.vocab:
            raise DataError(f"data.tokenizer {str(tokenizer.path)!r} has a vocabulary of "
                            f"{tokenizer.vocab_size:,}, but model.vocab is {config.model.vocab:,}: "
                            f"set model.vocab to at least {tokenizer.vocab_size}")
    if specs is None:
        if hosts > 1 and not config.data.allow_toy_corpus:
            raise DataError(f"run.yaml names no data (data.path and data.sources are empty) and "
                            f"the job runs on {hosts} hosts: it would train on the toy corpus "
                            "shipped with llmlaunch. Give the data (plan --emit --data SPEC, or "
                            "data.sources), or set data.allow_toy_corpus: true")
        return None
    train_dir, eval_dir = build_indexes(config, layout, run_dir, specs, log)
    lay = layout
    summary = check_index_against_model(train_dir, vocab=config.model.vocab,
                                        global_batch=lay.global_batch,
                                        samples=run_samples(config, lay), tokenizer=tokenizer)
    if eval_dir is not None:
        check_index_against_model(eval_dir, vocab=config.model.vocab,
                                  global_batch=lay.global_batch,
                                  eval_samples=config.train.eval_batches * lay.global_batch,
                                  tokenizer=tokenizer)
    return summary


def parse_data_spec(spec: str) -> list[dict]:
    """`plan --emit --data SPEC`: `PATH`, or `W1:PATH1,W2:PATH2,...` (weights, normalised later),
    each path made absolute; ValueError naming the item otherwise."""
    sources = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            raise ValueError(f"--data {spec!r}: an empty item (give PATH or W1:PATH1,W2:PATH2)")
        weight, sep, path = item.partition(":")
        try:
            value = float(weight) if sep else 1.0
        except ValueError:
            value, path = 1.0, item
        if not value > 0 or not path:
            raise ValueError(f"--data {spec!r}: {item!r} is not PATH or WEIGHT:PATH with a "
                             "positive weight")
        sources.append({"path": str(Path(path).resolve()), "weight": value})
    return sources


def tokenizer_of_run(run_dir: Path):
    """The run's tokenizer (export-hf writes it beside the weights): data.tokenizer, else the
    tokenizer.json of its first prepared source (the shipped corpus's: RUN_DIR/data); None when the
    run names none. Returns a RunTokenizer."""
    from llmlaunch.config import load_run_dir_config
    from llmlaunch.data.sources import MANIFEST_FILE
    from llmlaunch.data.tokenizer_files import load_run_tokenizer

    try:
        config = load_run_dir_config(run_dir)
    except ValueError:
        return None
    if config.data.tokenizer:
        return load_run_tokenizer(_resolve(config.data.tokenizer, run_dir), config.data.eod_token)
    for spec in data_specs(config, run_dir) or shipped_corpus_specs(run_dir):
        manifest = Path(spec.path) / MANIFEST_FILE
        if manifest.is_file():
            import json

            made = json.loads(manifest.read_text(encoding="utf-8"))
            return load_run_tokenizer(manifest.parent / made["tokenizer"]["file"],
                                      config.data.eod_token or made.get("eod_token", ""))
    return None


__all__ = ["data_specs", "eval_specs", "ensure_data", "prepare_run_data",
           "open_training_index", "open_eval_index", "build_indexes"]
