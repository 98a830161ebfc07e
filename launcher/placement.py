"""Where every rank really ran: RUN_DIR/ranks.json, one entry per rank (rank, host, local rank,
pipeline stage, tensor rank, data-parallel replica), to hold against the dry-run map `plan`
prints (report/text.py: topology_report). The coordinates are the layout's own (Layout.coords,
the rank order of DeepSpeed's PipeModelDataParallelTopology that the process groups use).

Each rank writes RUN_DIR/.ranks/rank-N.json when it starts; the rank that finds all of them there
writes ranks.json (atomically; any rank may, they write the same content). A start clears the
folder first (the job body), so ranks.json describes the latest start.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from llmlaunch import run_files
from llmlaunch.atomic import write_text_atomic
from llmlaunch.topology.layout import Layout

from .hostnet import host_name

RANKS_DIR = run_files.RANKS_DIR
RANKS_FILE = run_files.RANKS


def rank_entry(layout: Layout, rank: int, local_rank: int, host: str) -> dict:
    """One rank's entry of ranks.json."""
    c = layout.coords(rank)
    return {"rank": rank, "host": host, "local_rank": local_rank, "stage": c["pp"],
            "tensor_rank": c["tp"], "replica": c["dp"]}


def record_placement(run_dir: Path, layout: Layout, rank: int, world: int,
                     local_rank: int | None = None, host: str | None = None) -> Path | None:
    """Write this rank's entry; the rank that completes the set writes ranks.json (its path)."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0)) if local_rank is None else local_rank
    entry = rank_entry(layout, rank, local_rank, host or host_name())
    folder = Path(run_dir) / RANKS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / f"rank-{rank}.json", json.dumps(entry) + "\n")
    entries = []
    for r in range(world):
        try:
            entries.append(json.loads((folder / f"rank-{r}.json").read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return None
    path = Path(run_dir) / RANKS_FILE
    write_text_atomic(path, json.dumps(entries, indent=1) + "\n")
    return path
