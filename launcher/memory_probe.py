"""What a running rank holds, measured: the storages of weights, gradients, optimizer states and
saved activations (validate.py compares them with the planner; its docstring says what each counts).

Every storage is counted once (by `untyped_storage().data_ptr()`), at its full `nbytes()`; tensors on
the meta device count nothing.
"""
from __future__ import annotations


class StorageCounter:
    """Bytes of distinct storages: each `untyped_storage()` counted once (by data pointer), at its
    full size; tensors on the meta device and empty storages count nothing."""

    def __init__(self, exclude=()):
        self.seen = set(exclude)
        self.bytes = 0

    def add(self, tensor) -> None:
        import torch

        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr == 0 or ptr in self.seen:
            return
        self.seen.add(ptr)
        self.bytes += storage.nbytes()

    def add_all(self, obj) -> None:
        """Every tensor in obj: a tensor, or lists / tuples / dicts of them (nested)."""
        import torch

        if isinstance(obj, torch.Tensor):
            self.add(obj)
        elif isinstance(obj, dict):
            for value in obj.values():
                self.add_all(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                self.add_all(value)
            flat = getattr(obj, "flat_partition", None)     # ZeRO's GradPartitionBufferGroup
            if flat is not None:
                self.add(flat)


def storage_ptrs(tensors) -> set:
    return {t.untyped_storage().data_ptr() for t in tensors}


def weight_storage_ptrs(params) -> set:
    """The storages weight_bytes counts: the parameters and their ZeRO-3 partitions (ds_tensor, a
    view of the optimizer's flat partition, which an fp32 model's ZeRO-3 also uses as its master)."""
    params = list(params)
    parts = [p.ds_tensor for p in params if getattr(p, "ds_tensor", None) is not None]
    return storage_ptrs(params) | storage_ptrs(parts)


def basic_optimizer(engine):
    """The torch optimizer doing the update (inside ZeRO's or the bf16 wrapper, or the engine's
    own)."""
    outer = engine.optimizer
    inner = getattr(outer, "optimizer", None)
    return inner if inner is not None and inner is not outer else outer


def weight_bytes(engine) -> int:
    counter = StorageCounter()
    for param in engine.module.parameters():
        counter.add(param)
        counter.add(getattr(param, "ds_tensor", None))      # a ZeRO-3 partition
    return counter.bytes


def gradient_bytes(engine) -> int:
    """Gradient storages alive now (see the module docstring)."""
    params = list(engine.module.parameters())
    counter = StorageCounter(exclude=weight_storage_ptrs(params))
    for param in params:
        for attr in ("grad", "grad_accum", "_hp_grad"):
            counter.add(getattr(param, attr, None))
    outer = engine.optimizer
    for attr in ("averaged_gradients", "all_grad_tensors", "fp32_groups_gradients_flat",
                 "grad_partitions_flat_buffer"):
        counter.add_all(getattr(outer, attr, None))
    # the fp32 gradient given to the optimizer: ZeRO-1/2's master partition's, ZeRO-3's sub-groups'
    for attr in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
        for master in getattr(outer, attr, None) or []:
            counter.add(master.grad)
    return counter.bytes


def optimizer_bytes(engine) -> int:
    """Optimizer state and fp32 master storages (see the module docstring)."""
    params = list(engine.module.parameters())
    counter = StorageCounter(exclude=weight_storage_ptrs(params))
    for state in basic_optimizer(engine).state.values():
        counter.add_all(state)
    outer = engine.optimizer
    for attr in ("single_partition_of_fp32_groups", "fp32_groups_flat_partition",
                 "fp32_partitioned_groups_flat"):
        counter.add_all(getattr(outer, attr, None))
    return counter.bytes


class GradientProbe:
    """Records gradient_bytes at the end of the backward passes (before the pipeline's gradient
    reduction), after the reduction, and inside the optimizer update, during one step."""

    def __init__(self, engine):
        self.engine = engine
        self.readings = {}

    def __enter__(self):
        engine = self.engine
        if not hasattr(type(engine), "_INSTRUCTION_MAP"):     # the plain engine (pp = 1)
            return self._enter_plain()
        from deepspeed.runtime.pipe import schedule

        original = type(engine)._INSTRUCTION_MAP
        reduce_grads = original[schedule.ReduceGrads]

        def probed_reduce(eng, *args, **kwargs):
            self.readings["before_reduction"] = gradient_bytes(eng)
            result = reduce_grads(eng, *args, **kwargs)
            self.readings["after_reduction"] = gradient_bytes(eng)
            return result

        # the pipeline engine looks instructions up in self._INSTRUCTION_MAP: an instance copy
        # overrides the class's table for this engine only
        engine._INSTRUCTION_MAP = {**original, schedule.ReduceGrads: probed_reduce}
        self.optimizer = basic_optimizer(engine)
        step = self.optimizer.step

        def probed_step(*args, **kwargs):
            self.readings["in_update"] = gradient_bytes(engine)
            return step(*args, **kwargs)

        self.optimizer.step = probed_step
        return self

    def _probe_update(self):
        self.optimizer = basic_optimizer(self.engine)
        step = self.optimizer.step

        def probed_step(*args, **kwargs):
            self.readings["in_update"] = gradient_bytes(self.engine)
            return step(*args, **kwargs)

        self.optimizer.step = probed_step

    def _enter_plain(self):
        """The plain engine reduces gradients in engine.allreduce_gradients, at the end of the
        accumulation boundary's backward (ZeRO 0 and 1) or, with ZeRO 2 and 3, in buckets during
        every backward, its epilogue there too: the readings bracket that call."""
        engine = self.engine
        reduce = engine.allreduce_gradients

        def probed_reduce(*args, **kwargs):
            self.readings["before_reduction"] = gradient_bytes(engine)
            result = reduce(*args, **kwargs)
            self.readings["after_reduction"] = gradient_bytes(engine)
            return result

        engine.allreduce_gradients = probed_reduce
        self._probe_update()
        return self

    def __exit__(self, *exc):
        if "allreduce_gradients" in vars(self.engine):
            del self.engine.allreduce_gradients
        else:
            del self.engine._INSTRUCTION_MAP
        del self.optimizer.step
        return False

    @property
    def peak(self) -> int:
        return max(self.readings.values(), default=0)


def saved_activation_bytes_measured(engine, spec, micro_batch: int, dtype, generator,
                                    layout=None) -> int:
    """Storages saved for backward by one forward of this stage on one micro-batch (and the loss on
    the last stage), parameters excluded. Every TP (and CP) rank of a stage runs it together (the
    forward's collectives); stages do not communicate. With `layout`, the rank's share of the
    micro-batch: s/cp tokens (context parallelism), a later stage's input [b, s/(cp t), h] under
    sequence parallelism."""
    import torch

    module = engine.module
    device = engine.device
    tokens = spec.seq_len // (layout.cp if layout is not None else 1)
    split = layout.tp if layout is not None and layout.sequence_parallel else 1
    shape = (micro_batch, tokens)
    first = engine.is_first_stage() if hasattr(engine, "is_first_stage") else True
    last = engine.is_last_stage() if hasattr(engine, "is_last_stage") else True
    if first:
        inputs = torch.randint(0, spec.vocab, shape, generator=generator).to(device)
    else:
        # what the engine hands a later stage: the received activation, requiring grad
        inputs = torch.randn(micro_batch, tokens // split, spec.hidden,
                             generator=generator).to(device=device, dtype=dtype)
        inputs.requires_grad_(True)
    labels = torch.randint(0, spec.vocab, shape, generator=generator).to(device)
    params = list(module.parameters())
    counter = StorageCounter()

    def pack(tensor):
        # parameters as they are at the moment of saving: ZeRO-3 gathers a module's parameters into
        # fresh storages for its forward and frees them after, so the addresses parameters had
        # before the forward may hold activations later
        if isinstance(tensor, torch.nn.Parameter) or (
                tensor.untyped_storage().data_ptr() in storage_ptrs(params)):
            return tensor
        counter.add(tensor)
        return tensor

    module.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        outputs = module.logits(inputs) if hasattr(module, "logits") else module(inputs)
        if last:
            outputs = module.loss_fn(outputs, labels)
    del outputs
    return counter.bytes
