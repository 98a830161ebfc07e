"""The words of a layout's memory table: what the `buffers` column holds for the engine that
runs it (memory.buffer_bytes, memory.fsdp_unsharded_bytes), for the text report and the page."""
from __future__ import annotations

from .engines import Engine, engine as engine_named
from .memory import FRAGMENTATION_FRACTION, Precision, precision_for


def buffers_held(engine: Engine, zero_stage: int, precision: Precision, dp: int, pp: int) -> str:
    """What the `buffers` of a layout's stages hold besides the framework's memory and the
    allocator allowance, for the engine that runs it (buffer_bytes, fsdp_unsharded_bytes): the
    report's memory header; '' when nothing."""
    if engine.zero_accounting == "deepspeed":
        if dp == 1 and zero_stage == 0 or precision.bf16_optimizer and zero_stage <= 1:
            return ""
        return {1: "DeepSpeed's ZeRO-1 reduce and all-gather buckets",
                2: "DeepSpeed's ZeRO-2 all-gather bucket",
                3: "ZeRO-3's gathered parameters"}.get(zero_stage, "")
    if zero_stage == 3 and pp == 1:
        return f"{engine.name}'s gathered bf16 weights (2 blocks and the root unit) and the head's gradient"
    if zero_stage >= 2 and pp > 1 and engine.dp_overlap == "fsdp":
        return (f"{engine.name}'s gathered bf16 weights of the stage, one block's gradient and the "
                f"stage's unsharded fp{8 * precision.grad_bytes} gradient kept across the micro-batches")
    if zero_stage >= 2:
        return f"{engine.name}'s gathered bf16 weights of the stage and one block's gradient"
    return ""


def buffers_legend(engine_name: str, precision_name: str, zero_stage: int, dp: int, pp: int) -> str:
    """'buffers = ...' of a layout's memory table (report/text.py, the report page)."""
    eng = engine_named(engine_name)
    held = buffers_held(eng, zero_stage, precision_for(precision_name, eng), dp, pp)
    return (f"buffers = {held + ' + ' if held else ''}framework + "
            f"{FRAGMENTATION_FRACTION:.0%} allocator fragmentation")
