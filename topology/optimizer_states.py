"""The optimizers llmlaunch runs (`train.optimizer`, `plan --optimizer`) and the state each keeps,
counted as launcher/optimizers.py (and torch's AdamW) allocate it. docs/optimizers.md.

- adamw: exp_avg and exp_avg_sq, one fp32 element each per parameter (Loshchilov & Hutter 2019);
  torch's AdamW adds a 0-d `step` tensor per parameter tensor, which the planner leaves out.
- lion: exp_avg only, one fp32 element per parameter (Chen et al. 2023, "Symbolic Discovery of
  Optimization Algorithms", Algorithm 2): half of AdamW's states.
- adafactor: no first moment (beta1 = None, transformers' and the paper's default), the second
  moment of an [R, C] matrix factored into a row vector [R] and a column vector [C] (Shazeer &
  Stern 2018, Algorithm 4), a full second moment for a vector; the step count a Python int.
  Per TP rank the factors are those of its slice's rows and columns: a column-parallel [R/t, C]
  slice keeps R/t + C, a row-parallel [R, C/t] one R + C/t (the factors hold the full matrix's
  statistics, launcher/optimizers.py all-reduces them over the TP group).

Adafactor is refused under ZeRO >= 1 (and so in bf16, which DeepSpeed runs through ZeRO-1): ZeRO
hands the optimizer one flat 1-D partition, on which the second moment is not factored at all.
"""
from __future__ import annotations

from .model_spec import ModelSpec
from .params import padded_vocab

OPTIMIZERS = ("adamw", "lion", "adafactor")
FP32_BYTES = 4

# fp32 elements of state per parameter of the elementwise optimizers
ELEMENTWISE_STATES = {"adamw": 2, "lion": 1}


def optimizer_refusal(optimizer: str, zero_stage: int, precision: str, spec: ModelSpec,
                      offload: str = "none") -> str | None:
    """Why run.yaml's optimizer cannot run with this layout and precision (None: it can)."""
    if optimizer not in OPTIMIZERS:
        return f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}"
    if optimizer != "adamw" and offload != "none":
        return (f"train.optimizer {optimizer} with layout.offload {offload}: ZeRO-Offload on a GPU "
                "runs DeepSpeed's own CPU optimizers only; use layout.offload=none or adamw")
    if optimizer != "adamw" and spec.moe:
        return (f"train.optimizer {optimizer} runs dense models for now: an MoE model's experts "
                "need optimizer groups of their own (DeepSpeed's MoE groups), wired for adamw only")
    if optimizer != "adafactor":
        return None
    if zero_stage != 0:
        return ("train.optimizer adafactor needs layout.zero_stage=0: ZeRO hands the optimizer a "
                "flat partition, whose second moment cannot be factored")
    if precision in ("bf16", "fp8"):
        return ("train.optimizer adafactor runs in fp32 (train.precision=fp32): bf16 needs ZeRO-1 "
                "(DeepSpeed's BF16_Optimizer), which flattens the parameters")
    if spec.mla:
        return "train.optimizer adafactor runs standard attention models (not MLA) for now"
    return None


def state_bytes_per_parameter(optimizer: str) -> int:
    """fp32 bytes of optimizer state per parameter of an elementwise optimizer (adamw 8, lion 4)."""
    return ELEMENTWISE_STATES[optimizer] * FP32_BYTES


def factored_elements(shape: tuple[int, ...]) -> int:
    """Adafactor's second-moment elements for a tensor of `shape`: rows + columns of a matrix
    (Shazeer & Stern 2018, Section 3), the whole tensor for a vector."""
    if len(shape) >= 2:
        rows = 1
        for dim in shape[:-1]:
            rows *= dim
        lead = rows // shape[-2]
        return rows + lead * shape[-1]
    return shape[0]


def local_block_shapes(spec: ModelSpec, tp: int) -> list[tuple[int, ...]]:
    """The shapes of one block's parameters on one TP rank (model/sharding.py's block shapes,
    cut as model/tp.py's layers cut them)."""
    h, f, q, kv = spec.hidden, spec.ffn_hidden, spec.q_width, spec.kv_hidden
    layernorm = spec.norm == "layernorm"
    norm = [(h,), (h,)] if layernorm else [(h,)]
    shapes = list(norm) + [((q + 2 * kv) // tp, h)]
    if spec.qkv_bias:
        shapes.append(((q + 2 * kv) // tp,))
    if spec.qk_norm:
        shapes += [(spec.head_dim,), (spec.head_dim,)]
    shapes.append((h, q // tp))
    if spec.biases:
        shapes.append((h,))
    shapes += norm
    if spec.gated_mlp:
        shapes += [(2 * f // tp, h), (h, f // tp)]
    else:
        shapes += [(f // tp, h), (f // tp,), (h, f // tp), (h,)]
    return shapes


def adafactor_stage_elements(spec: ModelSpec, *, tp: int, blocks: int, first: bool, last: bool,
                             pp: int) -> int:
    """Adafactor's state elements on one rank of a stage with `blocks` blocks (the embedding on the
    first stage; final norm and head on the last, a tied table's own copy when pp > 1)."""
    table = (padded_vocab(spec.vocab, tp) // tp, spec.hidden)
    block = sum(factored_elements(shape) for shape in local_block_shapes(spec, tp))
    total = blocks * block
    if first:
        total += factored_elements(table)
        if spec.learned_positions:
            total += factored_elements((spec.seq_len, spec.hidden))
    if last:
        total += spec.hidden * (2 if spec.norm == "layernorm" else 1)
        if not spec.tied_embeddings or pp > 1:
            total += factored_elements(table)
    return total
