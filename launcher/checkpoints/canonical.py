"""Layout-free training state beside every checkpoint: what lets a run resume on another layout.

Each checkpoint tag holds, next to DeepSpeed's own files (which only the same layout and engine can
load), `canonical/`: for every canonical parameter (model/sharding.py names, e.g.
blocks.3.attn.qkv.weight) and every tensor-parallel slice of it, the fp32 master weight and Adam's
exp_avg and exp_avg_sq, one file per (name, TP rank): `canonical/NAME/tpR.pt`. `canonical/meta.json`
says the model, the layout they were written under, Adam's step count and every file expected.

Written by every rank through DeepSpeed's public accessors of the full fp32 state
(deepspeed.utils.safe_get_full_fp32_param / safe_get_full_optimizer_state, for ZeRO 1-3 and the bf16
optimizer; the torch optimizer's own state without ZeRO), by data-parallel replica 0 of each
(stage, TP rank). Read, on any layout, by merging the source TP slices of one tensor at a time and
slicing them for this rank (model/sharding.py), then setting them through the matching accessors.
Nothing here reads DeepSpeed's checkpoint files, so their format may change under us; the accessors
are pinned by tests/ranks/test_reshard.py. docs/checkpoints.md says why this rather than
DeepSpeed's universal checkpoint.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

CANONICAL_DIR = "canonical"
META_FILE = "meta.json"
STATE_KEYS = ("param", "exp_avg", "exp_avg_sq")
FORMAT = "llmlaunch-canonical-1"


def tensor_file(root: Path, name: str, tp_rank: int) -> Path:
    return root / CANONICAL_DIR / name / f"tp{tp_rank}.pt"


# ---------------------------------------------------------------------------------------------
# what one rank holds, through DeepSpeed's accessors

def owned_parameters(module) -> Iterator[tuple[str, object]]:
    """(canonical name, parameter) of the parameters this rank writes: all its own, minus the
    last pipeline stage's copy of a tied table (stage 0 writes it)."""
    from llmlaunch.model.sharding import canonical_named_parameters

    for name, param in canonical_named_parameters(module):
        if not getattr(param, "ds_pipe_replicated", False):
            yield name, param


def all_parameters(module) -> Iterator[tuple[str, object]]:
    """(canonical name, parameter) of every parameter this rank holds, tied copies included."""
    from llmlaunch.model.sharding import canonical_named_parameters

    seen = set()
    for name, param in canonical_named_parameters(module):
        seen.add(id(param))
        yield name, param
    for layer in module.modules():       # the last stage's copy of gpt2's tied table
        for param in layer.parameters(recurse=False):
            if id(param) not in seen and getattr(param, "ds_pipe_replicated", False):
                seen.add(id(param))
                yield "embed.token.weight", param


def _basic_optimizer(engine):
    outer = engine.optimizer
    inner = getattr(outer, "optimizer", None)
    return inner if inner is not None and inner is not outer else outer


def _wrapped(param) -> bool:
    """A ZeRO (1-3) or bf16-optimizer parameter, whose fp32 state DeepSpeed keeps elsewhere."""
    return hasattr(param, "ds_id") or hasattr(param, "_hp_mapping")


def get_state(engine, param) -> dict:
    """{param, exp_avg, exp_avg_sq} of one parameter, full (this TP slice), fp32, on CPU.
    Collective over the data-parallel group for ZeRO parameters."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    if _wrapped(param):
        out = {"param": safe_get_full_fp32_param(param)}
        for key in STATE_KEYS[1:]:
            out[key] = safe_get_full_optimizer_state(param, key)
    else:
        state = _basic_optimizer(engine).state.get(param, {})
        out = {"param": param.detach()}
        for key in STATE_KEYS[1:]:
            out[key] = state.get(key)
    for key, value in out.items():
        if value is None:
            raise RuntimeError(f"no {key} for a parameter of shape {tuple(param.shape)}: the "
                               "optimizer state is not initialised")
    return {key: value.detach().float().cpu().clone() for key, value in out.items()}


def set_state(engine, param, state: dict, dp_rank: int) -> None:
    """Set one parameter's fp32 master, its model copy, and Adam's moments from full fp32 tensors
    (this TP slice). Collective-free; every data-parallel rank sets its own partitions."""
    import torch
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    value = state["param"].to(device=param.device)
    if _wrapped(param):
        safe_set_full_fp32_param(param, value)
        for key in STATE_KEYS[1:]:
            safe_set_full_optimizer_state(param, state[key].to(param.device), key)
        if hasattr(param, "ds_tensor"):          # ZeRO-3: the model copy is partitioned too
            part = param.ds_tensor
            flat = value.flatten()
            start = part.numel() * dp_rank
            piece = flat[start:start + part.numel()]
            with torch.no_grad():
                part.data.zero_()
                part.data[:piece.numel()].copy_(piece.to(part.dtype))
            return
    else:
        optimizer = _basic_optimizer(engine)
        slot = optimizer.state[param]
        for key in STATE_KEYS[1:]:
            slot[key] = state[key].to(device=param.device, dtype=torch.float32).clone()
        slot.setdefault("step", torch.zeros((), dtype=torch.float32))
    with torch.no_grad():
        param.data.copy_(value.to(param.dtype).view_as(param.data))


def _optimizer_tensors(engine) -> list:
    """The tensors the basic optimizer keeps Adam state for. ZeRO-3 hands its flat fp32 partitions
    to the optimizer only for the length of a step (its param_groups are empty in between), so
    they are read from the ZeRO-3 optimizer itself."""
    flat = getattr(engine.optimizer, "fp32_partitioned_groups_flat", None)
    if flat is not None:
        return list(flat)
    return [p for group in _basic_optimizer(engine).param_groups for p in group["params"]]


def ensure_optimizer_state(engine) -> None:
    """Create Adam's state before the first step, as torch's AdamW would (zero moments, step 0),
    and let a ZeRO / bf16 wrapper link its parameters to it (DeepSpeed links them lazily, after
    the first step): a moved checkpoint is loaded before any step is taken."""
    import torch

    optimizer = _basic_optimizer(engine)
    for param in _optimizer_tensors(engine):
        slot = optimizer.state.get(param)
        if not slot or "exp_avg" not in slot:
            optimizer.state[param] = {
                "step": torch.zeros((), dtype=torch.float32),
                "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format)}
    link = getattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:
        link()


def set_adam_steps(engine, step_count: int) -> None:
    """Adam's step (bias correction) of every state the basic optimizer holds."""
    import torch

    optimizer = _basic_optimizer(engine)
    for slot in optimizer.state.values():
        old = slot.get("step")
        if isinstance(old, torch.Tensor):
            slot["step"] = torch.full_like(old, float(step_count))
        else:
            slot["step"] = step_count
    for group in optimizer.param_groups:
        if "step" in group:
            group["step"] = step_count


def adam_step_count(engine) -> int:
    """Adam's step count (the optimizer steps taken)."""
    optimizer = _basic_optimizer(engine)
    for slot in optimizer.state.values():
        step = slot.get("step")
        if step is not None:
            return int(step.item() if hasattr(step, "item") else step)
    return 0


# ---------------------------------------------------------------------------------------------
# writing (every rank, collective) and reading (any layout)

def save_canonical(run, tag_dir: Path, step: int, tp_rank: int, tp_size: int) -> list[str]:
    """Every rank calls it (ZeRO's accessors are collective over data-parallel ranks); replica 0 of
    each (stage, TP rank) writes. Returns the files written."""
    import torch

    from llmlaunch.atomic import write_atomic

    written = []
    for name, param in owned_parameters(run.engine.module):
        state = get_state(run.engine, param)
        if run.dp_rank != 0:
            continue
        path = tensor_file(tag_dir, name, tp_rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda f: torch.save(state, f))
        written.append(str(path.relative_to(tag_dir)))
    return written


def write_meta(tag_dir: Path, *, spec, layout: dict, engine: str, step: int, adam_steps: int,
               names: list[str], tp: int) -> None:
    """canonical/meta.json (rank 0, after every rank wrote its tensors)."""
    from llmlaunch.atomic import write_text_atomic

    files = [f"{CANONICAL_DIR}/{n}/tp{r}.pt" for n in names for r in range(tp)]
    meta = {"format": FORMAT, "step": step, "adam_steps": adam_steps, "engine": engine,
            "layout": layout, "model": spec.to_dict(), "tensors": sorted(names), "tp": tp,
            "files": files}
    write_text_atomic(tag_dir / CANONICAL_DIR / META_FILE, json.dumps(meta, indent=1) + "\n")


def read_meta(tag_dir: Path) -> dict:
    path = Path(tag_dir) / CANONICAL_DIR / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{tag_dir} has no {CANONICAL_DIR}/{META_FILE}: it was written "
                                "before llmlaunch kept layout-free state, or its save did not finish")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown format {meta.get('format')!r}")
    return meta


def missing_files(tag_dir: Path, meta: dict) -> list[str]:
    return [f for f in meta["files"] if not (Path(tag_dir) / f).is_file()]


class CanonicalReader:
    """Full canonical tensors of a checkpoint, one at a time (memory: about one tensor's state)."""

    def __init__(self, tag_dir: Path):
        from llmlaunch.topology.model_spec import ModelSpec

        self.tag_dir = Path(tag_dir)
        self.meta = read_meta(self.tag_dir)
        missing = missing_files(self.tag_dir, self.meta)
        if missing:
            raise FileNotFoundError(f"{self.tag_dir} is incomplete: {len(missing)} canonical "
                                    f"file(s) missing, first {missing[0]}")
        self.spec = ModelSpec(**{k: v for k, v in self.meta["model"].items()})
        self.tp = self.meta["tp"]

    def slice_for(self, name: str, tp_rank: int, tp: int) -> dict:
        """{param, exp_avg, exp_avg_sq} of `name` for TP rank `tp_rank` of `tp`: its own file when
        the checkpoint has that TP degree, else re-sliced from the source slices one state at a
        time (memory: the source slices, memory-mapped, one full fp32 tensor and the result)."""
        import torch

        from llmlaunch.model.sharding import merge_shards, shard_tensor, tp_split

        if tp == self.tp:
            return torch.load(tensor_file(self.tag_dir, name, tp_rank), map_location="cpu",
                              weights_only=True)
        split = tp_split(self.spec, name)
        slices = self._mapped_slices(name)
        out = {}
        for key in STATE_KEYS:
            full = merge_shards([s[key] for s in slices], split)
            out[key] = shard_tensor(full, split, tp_rank, tp).clone()
            del full
        return out

    def full(self, name: str) -> dict:
        """{param, exp_avg, exp_avg_sq}: the full, unpadded fp32 tensors of `name`."""
        from llmlaunch.model.sharding import merge_shards, tp_split

        slices = self._mapped_slices(name)
        split = tp_split(self.spec, name)
        return {key: merge_shards([s[key] for s in slices], split) for key in STATE_KEYS}

    def _mapped_slices(self, name: str) -> list[dict]:
        """The source TP slices of `name`, memory-mapped: pages are read as they are used."""
        import torch

        return [torch.load(tensor_file(self.tag_dir, name, r), map_location="cpu",
                           weights_only=True, mmap=True) for r in range(self.tp)]


def load_canonical_into(run, tag_dir: Path) -> dict:
    """Set this rank's parameters and optimizer state from a checkpoint's canonical state written
    under any layout of the same model (each rank reads only the tensors it holds). Returns the
    meta record."""
    reader = CanonicalReader(tag_dir)
    spec = run.spec
    if reader.spec.to_dict() != spec.to_dict():
        diffs = [k for k in spec.to_dict() if reader.spec.to_dict().get(k) != spec.to_dict()[k]]
        raise ValueError(f"{tag_dir} holds another model ({', '.join(diffs)} differ): a checkpoint "
                         "moves between layouts, not between model shapes")
    tp = run.layout.tp
    module = run.engine.module
    tp_rank = module.tp_group.rank
    ensure_optimizer_state(run.engine)
    for name, param in all_parameters(module):
        set_state(run.engine, param, reader.slice_for(name, tp_rank, tp), run.dp_rank)
    set_adam_steps(run.engine, reader.meta["adam_steps"])
    return reader.meta


def directory_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += (Path(root) / f).stat().st_size
            except OSError:
                pass
    return total
