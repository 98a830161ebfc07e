"""Arguments and defaults that several commands share (plan's model and cluster groups; cost's
GPU and price defaults)."""
from __future__ import annotations

import argparse

from llmlaunch.topology.hardware import gpu_names
from llmlaunch.topology.model_spec import ARCHS
from llmlaunch.topology.shapes import preset_names

DEFAULTS = {"gpus": 1024, "gpus_per_node": 8, "gpu": "a100-80gb", "model": "gpt3-175b",
            "usd_per_gpu_hour": 2.0}


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (one of --params, --model, --layers/--hidden/--heads, --hf-config; "
                             f"default --model {DEFAULTS['model']})")
    g.add_argument("--params", type=float, help="parameter count, e.g. 175e9 (a shape is derived)")
    g.add_argument("--model", help=f"preset: {', '.join(preset_names())}")
    g.add_argument("--hf-config", help="a local Hugging Face config.json (or its directory)")
    g.add_argument("--arch", choices=ARCHS, help="model family: gpt2, llama, mistral, qwen2, qwen3 "
                   "(run by llmlaunch's model) or a planned-only one (presets and --hf-config set "
                   "it; default gpt2)")
    g.add_argument("--layers", type=int)
    g.add_argument("--hidden", type=int)
    g.add_argument("--heads", type=int)
    g.add_argument("--kv-heads", type=int, help="key/value heads for GQA (llama)")
    g.add_argument("--ffn-hidden", type=int)
    g.add_argument("--vocab", type=int)
    g.add_argument("--seq-len", type=int, help="sequence length (default: the model's)")
    b = p.add_mutually_exclusive_group()
    b.add_argument("--global-batch", type=int, help="sequences per optimizer step")
    b.add_argument("--global-batch-tokens", type=float, help="tokens per optimizer step")


def add_cluster_arguments(p: argparse.ArgumentParser, default_gpus: int | None = DEFAULTS["gpus"]) -> None:
    g = p.add_argument_group("cluster")
    g.add_argument("--gpus", type=int, default=default_gpus, help=f"accelerators (default {default_gpus})")
    g.add_argument("--gpus-per-node", type=int, default=DEFAULTS["gpus_per_node"],
                   help=f"default {DEFAULTS['gpus_per_node']}")
    g.add_argument("--gpu", default=DEFAULTS["gpu"], help=f"{', '.join(gpu_names())} "
                   f"(default {DEFAULTS['gpu']})")
    g.add_argument("--gpu-memory-gib", type=float, help="override the catalog's memory")
    g.add_argument("--peak-tflops", type=float, help="override dense peak TFLOP/s")
    g.add_argument("--matmul-efficiency", type=float, help="override achievable fraction of peak")
    g.add_argument("--hbm-gb-per-s", type=float, help="override memory bandwidth")
    g.add_argument("--intra-node-gb-per-s", type=float, help="override NVLink all-reduce bandwidth")
    g.add_argument("--inter-node-gb-per-s", type=float, help="override per-GPU network bandwidth")
    g.add_argument("--op-overhead-us", type=float,
                   help="override host time per framework op (what validate's device_figures report)")
    g.add_argument("--collective-latency-us", type=float,
                   help="override the fixed cost per collective step or send")
