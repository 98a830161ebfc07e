"""run.yaml's sections: one dataclass each, a docstring per field (docs/run-yaml.md is the schema a
user reads), and the error a value that does not fit them raises. Loading, `--set` and the
cross-field checks live in config.py and config_checks.py."""
from __future__ import annotations

import typing
from dataclasses import dataclass, field

from llmlaunch import run_files


class ConfigError(ValueError):
    """A run.yaml or --set value that does not fit the schema."""


@dataclass
class ModelSection:
    """The transformer's shape (see llmlaunch.topology.model_spec.ModelSpec), written out or read
    from a Hugging Face config.json (hf_config)."""

    arch: str = "gpt2"
    """gpt2, llama, mistral, qwen2, qwen3, or the Mixture-of-Experts mixtral, qwen2_moe, qwen3_moe
    (the families llmlaunch's model runs)."""
    layers: int = 4
    """Transformer blocks."""
    hidden: int = 128
    """Model width."""
    heads: int = 4
    """Attention heads."""
    kv_heads: int = 0
    """Key/value heads (0: same as heads)."""
    ffn_hidden: int = 0
    """MLP width (0: the architecture's default)."""
    vocab: int = 4096
    """Vocabulary size before padding."""
    seq_len: int = 128
    """Training sequence length."""
    rope_theta: float = 10000.0
    """RoPE base (llama)."""
    norm_eps: float = 1e-5
    """LayerNorm / RMSNorm epsilon."""
    head_dim: int = 0
    """Width of one attention head (0: hidden/heads); Qwen3 sets it."""
    tied_embeddings: typing.Optional[bool] = None
    """The LM head reuses the token table (null: the family's default, tied for gpt2 only)."""
    sliding_window: int = 0
    """mistral, qwen2, qwen3: each query attends to the last N keys, on every layer (0: all)."""
    experts: int = 0
    """Mixture-of-Experts (mixtral, qwen2_moe, qwen3_moe): routed experts per MoE layer (0: dense)."""
    experts_per_token: int = 0
    """MoE: experts each token is routed to (top-k)."""
    expert_ffn_hidden: int = 0
    """MoE: one expert's MLP width (0: ffn_hidden)."""
    shared_expert_ffn_hidden: int = 0
    """MoE: width of a shared expert every token goes through (0: none)."""
    shared_expert_gate: bool = False
    """MoE: a sigmoid gate on the shared expert's output (Qwen2-MoE)."""
    dense_layers: int = 0
    """MoE: the first N layers keep a dense MLP of width ffn_hidden."""
    norm_topk_prob: bool = True
    """MoE: a token's k routing weights renormalised to sum to 1 (Mixtral; Qwen-MoE's flag)."""
    router_aux_loss_coef: float = 0.001
    """MoE: weight of the load-balancing loss (transformers' load_balancing_loss_func); 0: off."""
    router_z_loss_coef: float = 0.0
    """MoE: weight of the router z-loss (ST-MoE); 0: off."""
    capacity_factor: float = 0.0
    """MoE: 0 routes dropless; C >= 1 buffers ceil(C x tokens x k / experts) tokens per expert and
    micro-batch, padded, the overflow dropped."""
    hf_config: str = ""
    """A Hugging Face config.json (or the directory holding one) that sets every key above except
    seq_len (the training length, still this section's); keys given as well must agree with it."""


@dataclass
class LayoutSection:
    """How the world splits (see llmlaunch.topology.layout.Layout)."""

    dp: int = 1
    """Data-parallel degree."""
    pp: int = 1
    """Pipeline stages."""
    tp: int = 1
    """Tensor-parallel degree."""
    micro_batch: int = 1
    """Sequences per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step per replica (pipeline micro-batches)."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0-3: with pp = 1 DeepSpeed's plain engine runs any (3 shards the
    weights too); with a pipeline (pp > 1) its PipelineEngine runs 0 and 1. bf16 needs >= 1."""
    recompute: str = "none"
    """Activation recomputation: none, selective, full."""
    offload: str = "none"
    """ZeRO-Offload to CPU memory (pp = 1): none, optimizer (ZeRO >= 1), optimizer+params (ZeRO-3)."""
    sequence_parallel: bool = False
    """Megatron-LM sequence parallelism: norms and the residual on 1/tp of the sequence, all-gather
    before and reduce-scatter after the tensor-parallel layers (no effect at tp = 1)."""
    cp: int = 1
    """Context-parallel degree: ranks sharing every sequence, each holding 2 of its 2*cp chunks
    (world size dp*pp*tp*cp)."""
    cp_kind: str = "allgather"
    """How the cp ranks' attention sees the whole sequence: allgather (K and V gathered, Llama 3) or
    alltoall (DeepSpeed-Ulysses; cp must divide the KV heads per tp rank)."""
    ep: int = 1
    """Expert-parallel degree of a Mixture-of-Experts model: consecutive data-parallel ranks that
    share out every MoE layer's experts, experts/ep each; divides dp and the experts (1: every rank
    holds every expert). ZeRO 0-2; cp = 1 and no sequence parallelism."""


@dataclass
class GuardSection:
    """train.guard: the check every step before its update (launcher/guard.py, docs/launch.md)."""

    enabled: bool = True
    """Judge every step; false: no check, every step applied (DeepSpeed's own overflow skips are
    still reported)."""
    window: int = 50
    """Healthy losses the spike check looks back on."""
    min_history: int = 10
    """Healthy losses needed before a spike is judged (non-finite values are judged from step 1)."""
    spike_mads: float = 6.0
    """A spike: loss > median + max(spike_mads x 1.4826 x MAD, spike_min_rise x median)."""
    spike_min_rise: float = 0.1
    """The least rise over the median that counts as a spike, as a fraction of the median."""
    max_loss_ratio: float = 2.0
    """A loss above this many times ln(vocab) (a uniform guess's loss) is divergence (0: off)."""
    bad_steps: int = 3
    """Unhealthy steps in a row that are skipped; the next one rolls back (or stops)."""
    rollbacks: int = 2
    """Rollbacks a run may make (counted in RUN_DIR/skipped.json, across requeues) before the
    guard stops it instead."""


@dataclass
class StragglerSection:
    """train.stragglers: ranks compared by their compute time (launcher/stragglers.py)."""

    every: int = 10
    """Steps between comparisons of every rank's forward time (0: never)."""
    margin: float = 0.25
    """A rank slower than the median rank by more than this fraction is named."""


@dataclass
class TrainSection:
    """Optimisation: AdamW, Lion or Adafactor, linear warmup then cosine decay to min_lr."""

    steps: int = 100
    """Optimizer steps."""
    lr: float = 3e-4
    """Peak learning rate."""
    min_lr: float = 3e-5
    """Floor of the cosine decay."""
    warmup_steps: int = 10
    """Linear warmup steps."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0: off)."""
    beta1: float = 0.9
    """AdamW beta1 (Lion's interpolation)."""
    beta2: float = 0.95
    """AdamW beta2 (Lion's moment decay)."""
    optimizer: str = "adamw"
    """adamw, lion (one moment, beta1/beta2 as Lion's) or adafactor (factored second moments,
    fixed lr from the schedule; ZeRO-0 only): docs/optimizers.md."""
    seed: int = 1234
    """Seed of initialisation and data order."""
    precision: str = "auto"
    """bf16, fp32, or auto (bf16 on GPU, fp32 on CPU)."""
    log_every: int = 1
    """Steps between log lines (metrics.jsonl gets every step)."""
    collective_timeout_s: int = 300
    """Seconds a collective may wait before the job fails (a stalled rank ends the job)."""
    eval_every: int = 0
    """Steps between evaluations of the validation data (0: never): eval_loss in metrics.jsonl."""
    eval_batches: int = 4
    """Global batches each evaluation reads (the same ones every time, in order)."""
    monitors: list = field(default_factory=list)
    """Where rank 0 also writes every metrics.jsonl record: tensorboard (RUN_DIR/tensorboard),
    csv (RUN_DIR/metrics.csv), wandb (RUN_DIR/wandb, offline unless wandb_mode: online)."""
    wandb_mode: str = "offline"
    """offline (a run directory `wandb sync` uploads later) or online (needs network and a login)."""
    wandb_project: str = "llmlaunch"
    """The W&B project of the run."""
    guard: GuardSection = field(default_factory=GuardSection)
    """The guard against non-finite values and loss spikes (train.guard.KEY)."""
    stragglers: StragglerSection = field(default_factory=StragglerSection)
    """Slow ranks and hosts named (train.stragglers.KEY)."""


# The keys of one entry of data.sources / data.eval_sources (docs/data.md, data/sources.py).
SOURCE_KEYS = ("path", "weight", "split", "name", "column", "dtype")


@dataclass
class DataSection:
    """Training data."""

    path: str = ""
    """A directory written by `llmlaunch data prepare`, or a flat token file; empty (and no
    sources): the corpus shipped with llmlaunch."""
    dtype: str = ""
    """Token dtype of a flat .bin file: uint16 or uint32 (empty: uint16; a prepared directory and a
    .npy file say their own)."""
    sources: list = field(default_factory=list)
    """A blend: [{path, weight, split?, name?, column?, dtype?}], each path a prepared directory, a
    Megatron PREFIX (.bin + .idx), datatrove .ds output, a .npy/.bin file or .parquet/.arrow token
    columns; samples drawn at the weights (normalised) over any window of the run."""
    eval_sources: list = field(default_factory=list)
    """What train.eval_every evaluates: [{path, weight?, split?, name?, ...}] (empty: the val split
    of every prepared source of the run)."""
    tokenizer: str = ""
    """A Hugging Face tokenizer directory or tokenizer.json (offline): its vocabulary is checked
    against the model before the ranks start, and export-hf writes it beside the weights."""
    eod_token: str = ""
    """The tokenizer's end-of-document token (empty: tokenizer_config.json's eos_token, else
    <|endoftext|>)."""
    allow_toy_corpus: bool = False
    """Let a job on more than one host train on the shipped toy corpus (no path or sources)."""


@dataclass
class CheckpointSection:
    """Checkpoints: the layout-free training state, one verified tag per save (docs/checkpoints.md)."""

    dir: str = run_files.CHECKPOINTS
    """Checkpoint directory (relative paths are under the run directory)."""
    every: int = 50
    """Save every N optimizer steps (0: only at the end and on preemption)."""
    keep: int = 3
    """Keep the last K checkpoints (and, beyond them, the newest trusted one and every newer one)."""
    healthy_steps: int = 5
    """A checkpoint is trusted once this many steps with a finite loss and gradient norm followed
    it; pruning never deletes the newest trusted checkpoint nor a newer one."""
    async_save: bool = True
    """Write checkpoints on a background thread (the loop stalls only to copy the state to CPU
    memory); false: write in the loop."""
    init_hf: str = ""
    """A local Hugging Face model directory of the same architecture to start from (empty: seeded
    initialisation). Ignored when resuming from a checkpoint."""
    reshard: str = "auto"
    """auto: a checkpoint written under another layout (dp, pp, tp, ZeRO stage, offload, engine)
    is moved to this run's on start, through its layout-free state; never: refuse it."""


@dataclass
class ClusterSection:
    """Where the run goes (for the planner's prediction and the Slurm job)."""

    gpu: str = "cpu"
    """Catalog name (llmlaunch.topology data/gpus.yaml)."""
    gpus_per_node: int = 8
    """Accelerators per node (ranks per node on CPU)."""


@dataclass
class SlurmSection:
    """The sbatch job that `plan --emit` writes."""

    job_name: str = "llmlaunch"
    """Slurm job name."""
    time: str = "02:00:00"
    """Time limit (HH:MM:SS or D-HH:MM:SS)."""
    partition: str = ""
    """Partition (empty: the cluster default)."""
    account: str = ""
    """Account (empty: the user default)."""
    signal_seconds: int = 300
    """Seconds before the time limit that Slurm sends USR1 to checkpoint and requeue."""
    container_image: str = ""
    """Run the ranks in this container image (pyxis/enroot: srun --container-image); empty: on the
    host. The supervisor stays on the host (docs/launch.md, "Containers and environments")."""
    container_mounts: list = field(default_factory=list)
    """SRC:DST mounts for the container (srun --container-mounts): the run and data directories."""
    env_setup: str = ""
    """A bash file sourced before the supervisor and before every rank's task (modules, venv,
    conda); empty: none."""
