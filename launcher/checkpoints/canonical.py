"""Layout-free training state: what a checkpoint tag holds, and what lets a run resume on any
layout.

For every canonical parameter (model/sharding.py names, e.g. blocks.3.attn.qkv.weight) and every
tensor-parallel slice of it, the fp32 master weight and the optimizer's state (AdamW's exp_avg and
exp_avg_sq, Lion's exp_avg, Adafactor's factored moments: optimizer_state.py), one file per
(name, TP rank): `canonical/NAME/tpR.pt`. The tag's manifest (manifest.py) says the model, the
layout they were written under, Adam's step count and every file with its checksum. These files
are the only copy of the training state: DeepSpeed's own checkpoint files are not written (they
would hold the same state again, in a layout-bound form; docs/checkpoints.md has the measured cost).

Read and written through DeepSpeed's public accessors of the full fp32 state
(deepspeed.utils.safe_get_full_fp32_param / safe_get_full_optimizer_state, for ZeRO 1-3 and the bf16
optimizer; the torch optimizer's own state without ZeRO). Written by every rank: the replicas of one
(stage, TP rank) - DeepSpeed's data-parallel group, dp x cp under context parallelism, whose ranks
hold the same weights - take turns, parameter i by replica i mod (dp x cp), so the writes spread
over the whole job. Nothing in the state depends on cp or sequence parallelism. Read, on any layout, by merging the source TP slices of one tensor at a time and
slicing them for this rank (model/sharding.py), then setting them through the matching accessors.
Nothing here reads DeepSpeed's checkpoint files, so their format may change under us; the accessors
are pinned by tests/ranks/test_reshard.py. docs/checkpoints.md says why this rather than
DeepSpeed's universal checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from .manifest import Manifest, TagProblem, tensor_path
from .optimizer_state import new_optimizer_state, optimizer_state_keys, state_split


def tensor_file(root: Path, name: str, tp_rank: int) -> Path:
    return Path(root) / tensor_path(name, tp_rank)


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
    """{param, the optimizer's state (optimizer_state.py)} of one parameter, full (this TP slice),
    fp32, on CPU. Collective over the data-parallel group for ZeRO parameters."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    keys = optimizer_state_keys(_basic_optimizer(engine), param)
    if _wrapped(param):
        out = {"param": safe_get_full_fp32_param(param)}
        for key in keys:
            out[key] = safe_get_full_optimizer_state(param, key)
    else:
        state = _basic_optimizer(engine).state.get(param, {})
        out = {"param": param.detach()}
        for key in keys:
            out[key] = state.get(key)
    for key, value in out.items():
        if value is None:
            raise RuntimeError(f"no {key} for a parameter of shape {tuple(param.shape)}: the "
                               "optimizer state is not initialised")
    return {key: _own_fp32_cpu_copy(value) for key, value in out.items()}


def _own_fp32_cpu_copy(value):
    """An fp32 CPU tensor that shares no memory with `value` (training goes on while it is
    written): a GPU or bf16 tensor is copied once by the conversion, an fp32 CPU one by clone."""
    out = value.detach().float().cpu()
    return out.clone() if out.data_ptr() == value.data_ptr() else out


def set_state(engine, param, state: dict, dp_rank: int) -> None:
    """Set one parameter's fp32 master, its model copy, and the optimizer's state from full fp32
    tensors (this TP slice). Collective-free; every data-parallel rank sets its own partitions
    (`dp_rank`: the rank's index in DeepSpeed's data-parallel group, ZeRO's partition index). A
    tag written by another optimizer raises ValueError naming what it holds."""
    import torch
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    keys = optimizer_state_keys(_basic_optimizer(engine), param)
    missing = [key for key in keys if key not in state]
    if missing:
        raise ValueError(f"the checkpoint holds {', '.join(sorted(set(state) - {'param'}))} for a "
                         f"parameter, the optimizer needs {', '.join(keys)}: it was written under "
                         "another train.optimizer")
    value = state["param"].to(device=param.device)
    if _wrapped(param):
        safe_set_full_fp32_param(param, value)
        for key in keys:
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
        for key in keys:
            slot[key] = state[key].to(device=param.device, dtype=torch.float32).clone()
        if "step" not in slot:
            slot["step"] = new_optimizer_state(optimizer, param)["step"]
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
    """Create the optimizer's state before the first step, as the optimizer would (zero moments,
    step 0), and let a ZeRO / bf16 wrapper link its parameters to it (DeepSpeed links them lazily,
    after the first step): a moved checkpoint is loaded before any step is taken."""
    optimizer = _basic_optimizer(engine)
    for param in _optimizer_tensors(engine):
        slot = optimizer.state.get(param)
        if not slot or optimizer_state_keys(optimizer, param)[0] not in slot:
            optimizer.state[param] = new_optimizer_state(optimizer, param)
    link = getattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:
        link()


def relink_optimizer_state(engine) -> None:
    """Point every ZeRO 1/2 parameter at its Adam state again. DeepSpeed links them once, after the
    optimizer step of the first parameter group (stage_1_and_2.py _optimizer_step), when a later
    group's state does not exist yet: with more than one group (an MoE model's experts are a group
    of their own) the later groups' parameters stay unlinked and their state unreadable."""
    if getattr(engine.optimizer, "_hp_optimizer_states_linked", None):
        engine.optimizer._hp_optimizer_states_linked = False
        engine.optimizer._lazy_init_hp_params_optimizer_state()


def set_adam_steps(engine, step_count: int) -> None:
    """The optimizer's step count (Adam's bias correction, Adafactor's decay) in every state the
    basic optimizer holds."""
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
    """The optimizer's step count (the optimizer steps taken)."""
    optimizer = _basic_optimizer(engine)
    for slot in optimizer.state.values():
        step = slot.get("step")
        if step is not None:
            return int(step.item() if hasattr(step, "item") else step)
    return 0


# ---------------------------------------------------------------------------------------------
# writing (every rank, collective) and reading (any layout)

def snapshot(run) -> list[tuple[str, dict]]:
    """This rank's share of a tag: [(path in the tag, {param, optimizer state})], fp32 copies
    on CPU that training may run on from. Every rank calls it (ZeRO's accessors gather over the
    data-parallel group, one parameter at a time; an expert's over its expert-data-parallel group);
    parameter i of a (stage, TP rank) is this rank's to write when i mod (dp x cp) is its index in
    DeepSpeed's data-parallel group, an expert's when i mod (dp/ep) is its rank in the
    expert-data-parallel group (MoE runs at cp = 1: topology/layout.py)."""
    module = run.engine.module
    tp_rank, replicas, replica = module.tp_group.rank, run.replicas, run.replica_rank
    # an expert's parameters are held by the dp/ep replicas of one expert-data-parallel group
    # (model/expert_groups.py: dp rank = edp rank x ep + ep rank): they take turns among themselves
    edp, edp_rank = run.layout.dp // run.layout.ep, run.dp_rank // run.layout.ep
    relink_optimizer_state(run.engine)
    share = []
    for index, (name, param) in enumerate(owned_parameters(module)):
        if getattr(param, "is_expert", False):
            mine = index % edp == edp_rank
        else:
            mine = index % replicas == replica
        if mine or _wrapped(param):          # a ZeRO parameter's gather needs every replica
            state = get_state(run.engine, param)
            if mine:
                share.append((tensor_path(name, tp_rank), state))
    return share


class CanonicalReader:
    """Full canonical tensors of a checkpoint tag, one at a time (memory: about one tensor's
    state). A file that does not load raises TagProblem naming it."""

    def __init__(self, tag_dir: Path, manifest: Manifest):
        from llmlaunch.topology.model_spec import ModelSpec

        if manifest.tensors is None:
            raise TagProblem(manifest.tag, None, "written by llmlaunch 0.1: it holds DeepSpeed's "
                             "files only, no layout-free state")
        self.tag_dir = Path(tag_dir)
        self.manifest = manifest
        self.spec = ModelSpec(**manifest.model)
        self.tp = manifest.tp
        self.tensors = list(manifest.tensors)

    def _load(self, name: str, tp_rank: int, mmap: bool = False) -> dict:
        import torch

        path = tensor_path(name, tp_rank)
        try:
            return torch.load(self.tag_dir / path, map_location="cpu", weights_only=True, mmap=mmap)
        except FileNotFoundError:
            raise TagProblem(self.manifest.tag, path, "missing") from None
        except (RuntimeError, OSError, EOFError, ValueError) as exc:
            cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TagProblem(self.manifest.tag, path, f"does not load (truncated or corrupt: "
                             f"{cause})") from None

    def slice_for(self, name: str, tp_rank: int, tp: int) -> dict:
        """{param, optimizer state} of `name` for TP rank `tp_rank` of `tp`: its own file when
        the checkpoint has that TP degree, else re-sliced from the source slices one state at a
        time (memory: the source slices, memory-mapped, one full fp32 tensor and the result; each
        state cut as optimizer_state.state_split says)."""
        from llmlaunch.model.sharding import merge_shards, shard_tensor, tp_split

        if tp == self.tp:
            return self._load(name, tp_rank)
        split = tp_split(self.spec, name)
        slices = self._mapped_slices(name)
        out = {}
        for key in slices[0]:
            cut = state_split(split, key, slices[0]["param"].dim())
            full = merge_shards([s[key] for s in slices], cut)
            out[key] = shard_tensor(full, cut, tp_rank, tp).clone()
            del full
        return out

    def full(self, name: str) -> dict:
        """{param, optimizer state}: the full, unpadded fp32 tensors of `name`."""
        from llmlaunch.model.sharding import merge_shards, tp_split

        slices = self._mapped_slices(name)
        split = tp_split(self.spec, name)
        return {key: merge_shards([s[key] for s in slices],
                                  state_split(split, key, slices[0]["param"].dim()))
                for key in slices[0]}

    def _mapped_slices(self, name: str) -> list[dict]:
        """The source TP slices of `name`, memory-mapped: pages are read as they are used."""
        return [self._load(name, r, mmap=True) for r in range(self.tp)]


def load_canonical_into(run, tag_dir: Path, manifest: Manifest) -> None:
    """Set this rank's parameters and optimizer state from a tag's canonical state written under
    any layout of the same model (each rank reads only the tensors it holds)."""
    reader = CanonicalReader(tag_dir, manifest)
    module = run.engine.module
    tp_rank = module.tp_group.rank
    ensure_optimizer_state(run.engine)
    for name, param in all_parameters(module):
        set_state(run.engine, param, reader.slice_for(name, tp_rank, run.layout.tp),
                  run.replica_rank)
    set_adam_steps(run.engine, manifest.adam_steps)
