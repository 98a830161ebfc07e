"""The checkpoint store: one object owns a run's checkpoints (torchtitan's CheckpointManager is the
anchor). A training rank uses it in this order:

    store = CheckpointStore.of_run(config, run_dir, ctx)
    store.choose()                      # collective: the newest verified tag, checked against the run
    run = build_engine(config, ctx, kind=store.engine_for(ctx.layout), schedule=store.schedule())
    step = store.resume(run)            # its state loaded (moved, when the layout differs)
    ... store.save(run, step)           # the copy in the loop, the write beside it (save.py)
    ... store.after_step(step, loss, grad_norm)   # a finished save recorded; trust; pruning
    store.wait()                        # the last save written before the rank leaves

and offline (`llmlaunch checkpoint inspect|convert`, `export-hf`): `CheckpointStore(dir).inspect()`,
`.convert(...)` (tools.py). docs/checkpoints.md describes the manifest, verification, the fallback
and the pruning rule.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from .checks import (CheckpointError, batch_refusal, describe_state, layout_state_of,
                     model_refusal, same_state_layout, state_layout)
from .comm import Comm
from .manifest import Manifest, read_manifest
from .tags import tag_dirs, tag_for_step
from .trust import Trust, prune_plan
from .verify import Choice, choose

log = logging.getLogger("llmlaunch.rank")


class CheckpointStore:
    def __init__(self, ckpt_dir: str | Path, config=None, ctx=None):
        self.ckpt_dir = Path(ckpt_dir)
        self.config, self.ctx = config, ctx
        self.choice: Choice | None = None
        self.pending = None
        self.trust: Trust | None = None
        self.start_step, self.start_consumed = 0, 0

    @classmethod
    def of_run(cls, config, run_dir: Path, ctx) -> "CheckpointStore":
        """The store of a run: checkpoint.dir, relative paths under the run directory."""
        ckpt_dir = Path(config.checkpoint.dir)
        return cls(ckpt_dir if ckpt_dir.is_absolute() else Path(run_dir) / ckpt_dir, config, ctx)

    @property
    def first(self) -> bool:
        return self.ctx is None or self.ctx.rank == 0

    def _say(self, line: str, warning: bool = False) -> None:
        if self.first:
            (log.warning if warning else log.info)("%s", line)

    # ------------------------------------------------------------------------------------------
    # resume

    def choose(self) -> Choice | None:
        """Collective: the newest tag that verifies (verify.py), the lines saying what was passed
        over, and the checks against this run (checks.py); CheckpointError on every rank when
        the run cannot resume from it as configured."""
        self.choice = choose(self.ckpt_dir, Comm())
        if self.choice is None:
            return None
        for line in self.choice.lines():
            self._say(line, warning=True)
        manifest, layout = self.choice.manifest, self.ctx.layout
        refusal = model_refusal(manifest, self.config.model_spec()) or batch_refusal(manifest, layout)
        if refusal:
            raise CheckpointError(refusal)
        saved = state_layout(manifest)
        here = layout_state_of(layout, self.engine_for(layout))
        if not same_state_layout(saved, here) and self.config.checkpoint.reshard == "never":
            raise CheckpointError(f"checkpoint {manifest.tag} was written with "
                                  f"{describe_state(saved)} but the run uses {describe_state(here)}"
                                  ", and checkpoint.reshard is never: set it to auto to move the "
                                  "checkpoint, or restore the original layout")
        if manifest.kind == "deepspeed" and not same_state_layout(saved, here):
            raise CheckpointError(f"checkpoint {manifest.tag} was written by llmlaunch 0.1 with "
                                  f"{describe_state(saved)} and holds no layout-free state: it "
                                  f"resumes only on that layout, not {describe_state(here)}")
        return self.choice

    def engine_for(self, layout) -> str:
        """The engine to build: the layout's, except that a pp = 1 run resuming a tag of llmlaunch
        0.1 (DeepSpeed's pipeline files only) at this very layout keeps the pipeline engine, the
        one that can load them."""
        manifest = self.choice.manifest if self.choice else None
        if manifest is not None and manifest.kind == "deepspeed":
            if same_state_layout(state_layout(manifest), layout_state_of(layout, "pipeline")):
                return "pipeline"
        return layout.engine

    def schedule(self):
        """The learning-rate schedule this run follows: run.yaml's, continued from the chosen
        tag's without a jump when they differ (lr_schedule.continued), said in one line."""
        from llmlaunch.launcher.lr_schedule import Schedule, continued, schedule_of

        wanted = schedule_of(self.config.train)
        manifest = self.choice.manifest if self.choice else None
        if manifest is None or manifest.schedule is None:
            return wanted
        schedule, line = continued(Schedule(**manifest.schedule), wanted, manifest.step)
        if line:
            self._say(line)
        return schedule

    def resume(self, run) -> int:
        """Load the chosen tag into `run` (every rank); returns the step it finished (0: none).
        Its layout-free state loads on any layout: as it is when the layout matches (bit-exact),
        moved otherwise; a tag of llmlaunch 0.1 loads through DeepSpeed's own files."""
        resumed = None
        if self.choice is not None:
            manifest = self.choice.manifest
            started = time.perf_counter()
            self._load(run, manifest)
            saved, here = state_layout(manifest), layout_state_of(run.layout, run.kind)
            where = self.choice.tag_dir
            if same_state_layout(saved, here):
                self._say(f"resumed from {where} (step {manifest.step})")
            else:
                self._say(f"resharded {where} (step {manifest.step}) from {describe_state(saved)} "
                          f"to {describe_state(here)} in {time.perf_counter() - started:.2f} s")
            self.start_step, self.start_consumed = manifest.step, manifest.consumed_samples
            resumed = manifest.step
        if self.first:
            self.trust = Trust(self.ckpt_dir, self.config.checkpoint.healthy_steps, resumed)
        return self.start_step

    def _load(self, run, manifest: Manifest) -> None:
        from .canonical import load_canonical_into

        tag_dir = self.choice.tag_dir
        if manifest.kind == "deepspeed":
            try:
                run.engine.load_checkpoint(str(self.ckpt_dir), tag=manifest.tag)
            except (RuntimeError, AssertionError, OSError, KeyError) as exc:
                cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise CheckpointError(f"checkpoint {manifest.tag} (llmlaunch 0.1, DeepSpeed's "
                                      f"files) does not load: {cause}") from None
            return
        load_canonical_into(run, tag_dir, manifest)
        set_schedule_position(run.engine, manifest.step, manifest.global_batch)

    def consumed_samples(self, step: int) -> int:
        """The data position after `step`: sequences trained on (the chosen tag's, plus a
        global batch per step since)."""
        return self.start_consumed + (step - self.start_step) * self.ctx.layout.global_batch

    # ------------------------------------------------------------------------------------------
    # save

    def save(self, run, step: int) -> None:
        """Every rank: copy this rank's share of the state (the loop's stall) and write it on a
        background thread (checkpoint.async_save; save.py). At most one save is in flight."""
        from llmlaunch.model.sharding import canonical_shapes

        from .canonical import adam_step_count, snapshot
        from .save import PendingSave, ShareWriter

        self.wait()
        comm = Comm()
        tag = tag_for_step(step)
        comm.from_first(lambda: shutil.rmtree(self.ckpt_dir / tag, ignore_errors=True))
        started = time.perf_counter()
        share = snapshot(run)
        layout = run.layout
        draft = Manifest(tag=tag, step=step, layout=layout.to_dict(), engine=run.kind,
                         model=run.spec.to_dict(), global_batch=layout.global_batch,
                         consumed_samples=self.consumed_samples(step),
                         adam_steps=adam_step_count(run.engine), tp=layout.tp,
                         tensors=sorted(canonical_shapes(run.spec)), schedule=run.schedule.to_dict(),
                         files=None)
        writer = ShareWriter(self.ckpt_dir / tag, share, background=self.config.checkpoint.async_save)
        del share
        self.pending = PendingSave(self.ckpt_dir, draft, writer, time.perf_counter() - started,
                                   spec=run.spec)

    def after_step(self, step: int, loss, grad_norm, healthy: bool = True) -> None:
        """Every rank, after each optimizer step: a save whose writes all finished gets its
        manifest; rank 0 counts healthy steps, moves the trusted pointer and prunes. healthy=False:
        the guard judged the step unhealthy (launcher/guard.py) however finite its numbers."""
        if self.pending is not None:
            self._settle(wait=False)
        if self.trust is not None:
            warning, moved = self.trust.observe(step, loss, grad_norm, healthy)
            if warning:
                self._say(warning, warning=True)
            if moved:
                self.prune()

    def wait(self) -> None:
        """Every rank: the save in flight, if any, finished and recorded."""
        if self.pending is not None:
            self._settle(wait=True)

    def _settle(self, wait: bool) -> None:
        pending = self.pending
        try:
            manifest = pending.settle(Comm(), wait=wait)
        except CheckpointError:
            self.pending = None
            raise
        if manifest is None:
            return
        self.pending = None
        if not self.first:
            return
        from .save import size_summary

        self._say(f"checkpoint {pending.tag_dir} saved ({size_summary(manifest)}; the loop stalled "
                  f"{pending.stall_s:.2f} s, the write took {pending.writer.seconds:.2f} s "
                  f"{'beside it' if self.config.checkpoint.async_save else 'in it'})")
        if self.trust is not None:
            self.trust.committed(manifest.step)
        self.prune()

    def prune(self) -> list[str]:
        """Rank 0: delete what the pruning rule allows (trust.py); returns the deleted tags."""
        complete, incomplete = [], []
        writing = self.pending.draft.step if self.pending is not None else None
        for tag_dir in tag_dirs(self.ckpt_dir):
            step = int(tag_dir.name[4:])
            if step == writing:
                continue
            try:
                read_manifest(tag_dir)
                complete.append(step)
            except ValueError:
                incomplete.append(step)
        floor = self.trust.floor() if self.trust is not None else None
        keep = self.config.checkpoint.keep if self.config is not None else 0
        doomed = [tag_for_step(s) for s in prune_plan(complete, incomplete, keep, floor)]
        for tag in doomed:
            shutil.rmtree(self.ckpt_dir / tag, ignore_errors=True)
        return doomed

    # ------------------------------------------------------------------------------------------
    # offline

    def inspect(self, verify: bool = False) -> dict:
        """Every tag with its step, layout, engine, size, and (verify) verified or why not."""
        from .tools import inspect

        return inspect(self.ckpt_dir, verify=verify)

    def convert(self, layout: dict, dst: str | Path, force: bool = False) -> Path:
        """This directory's newest verified tag (or the tag it is) re-sliced for `layout`."""
        from .tools import convert

        return convert(self.ckpt_dir, layout, dst, force=force)


def set_schedule_position(engine, step: int, global_batch: int) -> None:
    """After a tag's layout-free state is loaded: the LR schedule and the engine's counters at
    `step` (DeepSpeed's own load would restore these from its files)."""
    scheduler = engine.lr_scheduler
    if scheduler is not None:
        scheduler.last_epoch = step - 1
        scheduler.step()            # sets every group's lr for step `step` + 1
    engine.global_steps = step
    engine.global_samples = step * global_batch
