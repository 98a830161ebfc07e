"""The guard on a rank (the pure parts are guard.py): the check installed in front of the engine's
optimizer update, the agreed verdict, and what follows a step (skip, rollback, stop).

Where the check runs: inside the optimizer's step, after the gradients are reduced and before any
weight, moment or schedule changes, on every rank once per optimizer step. The ranks agree with one
all-reduce over the world of (the loss summed over the ranks that hold it, how many hold it, a
non-finite-gradient flag): every rank then judges the same numbers with the same history, so every
rank takes the same verdict without a second message. A skipped step goes through DeepSpeed's own
overflow path, so DeepSpeed itself clears the gradients, leaves the optimizer and its step count
alone, does not step the learning-rate schedule and counts the step in `skipped_steps`:
- ZeRO 1-2 (DeepSpeedZeroOptimizer): its overflow check is made to report an overflow;
- the bf16 optimizer: the norm it checks is made infinite (not exercised on CPU: no test runs bf16);
- ZeRO-0 fp32 (torch's optimizer under the engine): the update is not called and the optimizer
  reports `overflow`, which DeepSpeed's engine reads the same way.
DeepSpeed's own overflow skips (a non-finite norm under ZeRO or bf16) are seen after the step
(`was_step_applied`) and counted and reported the same way.

Tests inject faults through LLMLAUNCH_GUARD_INJECT (comma-separated):
  nan-grad@STEP:RANK           the gradient of one parameter of RANK is NaN at STEP (a tensor hook)
  spike@FIRST-LAST:FACTOR      the loss the guard sees is multiplied by FACTOR over those steps
"""
from __future__ import annotations

import logging
import math
import os
import shutil

from .guard import OK, ROLLBACK, SKIP, STOP, SkipRecord, conclude, judge

log = logging.getLogger("llmlaunch.rank")
INJECT_ENV = "LLMLAUNCH_GUARD_INJECT"


class GuardStop(RuntimeError):
    """The guard stopped training (its message is the one line the job ends with)."""


def parse_injection(text: str) -> dict:
    """{"nan-grad": (step, rank), "spike": (first, last, factor)} from LLMLAUNCH_GUARD_INJECT."""
    out: dict = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        kind, _, rest = item.partition("@")
        where, _, arg = rest.partition(":")
        if kind == "nan-grad":
            out[kind] = (int(where), int(arg))
        elif kind == "spike":
            first, _, last = where.partition("-")
            out[kind] = (int(first), int(last or first), float(arg))
        else:
            raise ValueError(f"{INJECT_ENV}: unknown fault {item!r} (nan-grad@STEP:RANK, "
                             "spike@FIRST-LAST:FACTOR)")
    return out


class StepGuard:
    """One rank's guard over a built engine (`run`, engine.py's RunEngine)."""

    def __init__(self, config, run_dir, run, rank: int, record: SkipRecord):
        self.settings, self.vocab = config.train.guard, config.model_spec().vocab
        self.run_dir, self.run, self.rank, self.record = run_dir, run, rank, record
        self.history: list[float] = []
        self.streak, self.bad_from, self.step = 0, 0, 0
        self.reason: str | None = None
        self.loss: float | None = None
        self.force_skip = False
        self.inject = parse_injection(os.environ.get(INJECT_ENV, ""))
        self._hook = None
        install(self, run.engine.optimizer)

    # ------------------------------------------------------------------------------------------
    # before the update (inside the optimizer's step)

    def local_loss(self) -> float | None:
        """This rank's loss of the step, or None when it holds none (a pipeline's inner stage)."""
        run = self.run
        if run.kind == "pipeline":
            engine = run.engine
            if not engine.is_last_stage() or engine.total_loss is None:
                return None
            loss = float(engine.total_loss) / engine.gradient_accumulation_steps()
        else:
            losses = getattr(run, "micro_losses", None)
            if not losses:
                return None
            loss = float(sum(float(x) for x in losses) / len(losses))
        spike = self.inject.get("spike")
        if spike and spike[0] <= self.step <= spike[1]:
            loss *= spike[2]
        return loss

    def check(self, nonfinite_grad: bool = False) -> bool:
        """Every rank, once per optimizer step: agree on the step's loss and gradient health and
        judge them; True when the update must be skipped."""
        import torch
        import torch.distributed as dist

        loss = self.local_loss()
        held = torch.tensor([loss if loss is not None else 0.0, 1.0 if loss is not None else 0.0,
                             1.0 if nonfinite_grad else 0.0], dtype=torch.float64,
                            device=self.run.device)   # NCCL reduces device tensors only
        dist.all_reduce(held, op=dist.ReduceOp.SUM)
        total, holders, bad_grad = held.tolist()
        self.loss = total / holders if holders else float("nan")
        self.reason = None
        if self.settings.enabled:
            self.reason = judge(self.loss, math.inf if bad_grad else None, self.history,
                                self.settings, self.vocab)
        return self.reason is not None

    # ------------------------------------------------------------------------------------------
    # around the step (the trainer's loop)

    def before_step(self, step: int) -> None:
        """`step` is the step about to run (1-based); arms an injected fault for it."""
        self.step, self.reason = step, None
        nan_grad = self.inject.get("nan-grad")
        if nan_grad and nan_grad == (step, self.rank):
            param = next(p for p in self.run.engine.module.parameters() if p.requires_grad)
            self._hook = param.register_hook(lambda grad: grad * float("nan"))

    def after_step(self, step: int, store) -> tuple[str, dict | None]:
        """After the engine's step: (action, the metrics field or None). OK and SKIP go on; after
        ROLLBACK the engine holds the rolled-back state; STOP raises GuardStop on every rank."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        reason = self.reason
        if reason is None and not self.run.engine.was_step_applied():
            reason = "DeepSpeed skipped the update: the gradient norm is not finite (its overflow check)"
        if reason is None:
            self.streak = 0
            if self.loss is not None and math.isfinite(self.loss):
                self.history = (self.history + [self.loss])[-self.settings.window:]
            return OK, None
        self.streak += 1
        if self.streak == 1:
            self.bad_from = step
        tag = None
        if self.streak >= self.settings.bad_steps:
            tag = rollback_tag(store, self.bad_from, self.record.rollback_targets())
        decision = conclude(self.streak, self.bad_from, reason, self.settings.bad_steps,
                            tag is not None, self.settings.rollbacks - self.record.rollbacks)
        line = decision.line(step, tag[0].name if tag else None)
        field = {"action": decision.action, "reason": reason}
        if decision.action == STOP:
            log.error("%s", line)
            raise GuardStop(line)
        log.warning("%s", line)   # every rank's log (rank 0's console too): all took it
        if decision.action == SKIP:
            self.record.add(step, step, SKIP, reason)
        elif decision.action == ROLLBACK:
            tag_dir, manifest = tag
            self.record.add(manifest.step + 1, step, ROLLBACK, reason, to=manifest.step)
            self.record.rollbacks += 1
            roll_back(store, self.run, tag_dir, manifest, self.record, step)
            self.streak = 0
            field["to"] = manifest.step
        if self.rank == 0:
            self.record.write(self.run_dir)
        return decision.action, field


def install(guard: StepGuard, optimizer) -> None:
    """Put guard.check in front of `optimizer`'s update (module docstring: how each skips)."""
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    step = optimizer.step
    if isinstance(optimizer, DeepSpeedZeroOptimizer):
        check_overflow, checks = optimizer.check_overflow, optimizer.check_grad_overflow

        def forced_overflow(*args, **kwargs):
            if guard.force_skip:
                optimizer.overflow = True
                return None
            return check_overflow(*args, **kwargs)

        def zero_step(*args, **kwargs):
            guard.force_skip = guard.check()
            optimizer.check_grad_overflow = checks or guard.force_skip
            try:
                return step(*args, **kwargs)
            finally:
                optimizer.check_grad_overflow, guard.force_skip = checks, False

        optimizer.check_overflow = forced_overflow
        optimizer.step = zero_step
    elif hasattr(optimizer, "get_grads_for_norm"):   # DeepSpeed's BF16_Optimizer
        grads_for_norm = optimizer.get_grads_for_norm

        def infinite_norm(*args, **kwargs):
            if guard.force_skip:
                import torch

                return [torch.full((1,), math.inf, device=guard.run.device)], []
            return grads_for_norm(*args, **kwargs)

        def bf16_step(*args, **kwargs):
            guard.force_skip = guard.check()
            try:
                return step(*args, **kwargs)
            finally:
                guard.force_skip = False

        optimizer.get_grads_for_norm = infinite_norm
        optimizer.step = bf16_step
    else:   # torch's optimizer, ZeRO-0: DeepSpeed's engine reads `overflow` after the step
        def torch_step(*args, **kwargs):
            optimizer.overflow = guard.check(nonfinite_grad=not grads_finite(optimizer))
            return None if optimizer.overflow else step(*args, **kwargs)

        optimizer.overflow = False
        optimizer.step = torch_step


def grads_finite(optimizer) -> bool:
    import torch

    grads = [p.grad for group in optimizer.param_groups for p in group["params"]
             if p.grad is not None]
    return all(bool(torch.isfinite(g).all()) for g in grads)


def rollback_tag(store, before_step: int, used: frozenset = frozenset()):
    """Collective: (tag_dir, manifest) of the newest verified tag before `before_step` that no
    earlier rollback returned to, or None. A tag the run went bad again from is suspect itself (a
    checkpoint that verifies can still hold a NaN it was saved with): the next rollback goes to an
    older one."""
    from .checkpoints.comm import Comm
    from .checkpoints.tags import step_of, tag_dirs
    from .checkpoints.verify import verify_tag

    comm = Comm()
    for tag_dir in reversed(comm.from_first(lambda: tag_dirs(store.ckpt_dir))):
        if step_of(tag_dir.name) >= before_step or step_of(tag_dir.name) in used:
            continue
        manifest, problem = verify_tag(tag_dir, comm)
        if problem is None and manifest.kind != "deepspeed":
            return tag_dir, manifest
    return None


def roll_back(store, run, tag_dir, manifest, record: SkipRecord, step: int) -> None:
    """Every rank: load the tag into the engine, the schedule at the applied step count, and
    (rank 0) delete the tags after it: they hold the abandoned branch, and resuming from one of
    them would disagree with the skip record."""
    from .checkpoints.canonical import load_canonical_into
    from .checkpoints.comm import Comm
    from .checkpoints.store import set_schedule_position
    from .checkpoints.tags import LATEST, TRUSTED, read_pointer, step_of, tag_dirs, write_pointer
    from .checkpoints.trust import Trust

    store.wait()
    load_canonical_into(run, tag_dir, manifest)
    set_schedule_position(run.engine, record.applied_steps(step), manifest.global_batch)
    comm = Comm()
    if comm.rank == 0:
        trusted, _ = read_pointer(store.ckpt_dir, TRUSTED)
        if trusted is not None and step_of(trusted) > manifest.step:   # trusts nothing until
            (store.ckpt_dir / TRUSTED).unlink(missing_ok=True)          # healthy steps follow
        for newer in tag_dirs(store.ckpt_dir):
            if step_of(newer.name) > manifest.step:
                shutil.rmtree(newer, ignore_errors=True)
        write_pointer(store.ckpt_dir, LATEST, tag_dir.name)
        if store.trust is not None:
            store.trust = Trust(store.ckpt_dir, store.config.checkpoint.healthy_steps, manifest.step)
    comm.barrier()
