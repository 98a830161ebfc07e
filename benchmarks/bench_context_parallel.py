"""Saved activations of one transformer block per context-parallel rank, against the planner.

A tiny llama block (GQA, RoPE; hidden 64, 4 heads over 2 KV heads, fp32) runs one forward on each
rank's s/cp tokens of a sequence of 2K..32K tokens, for cp 1, 2 and 4 (gloo processes on this host,
each holding its two chunks; the all-gather form, and at cp 2 the all-to-all form too). What the
forward saves for backward is counted as `llmlaunch validate` counts it (every distinct storage
handed to autograd's saved-tensor hook, parameters excluded: launcher/memory_probe.py). Printed per
(cp, form, sequence): the measured bytes of rank 0, the planner's figure
(topology/activations.activation_bytes_per_layer with cp), and the slope in bytes per token of the
whole sequence between the shortest and the longest sequence, measured and planned.

The planner's slope is (per-token terms) / cp: context parallelism divides every activation term by
cp, the block holding s/cp tokens; what a rank gathers transiently (K and V of the whole sequence in
the all-gather form, under a checkpoint) is not saved, and is not in the figure.

Run: flock /tmp/llmlaunch-heavy.lock python benchmarks/bench_context_parallel.py
     [--seqs 2048 4096 8192 16384 32768] [--cps 1 2 4]
"""
import argparse
import os
import socket
from queue import Empty

SPEC = dict(name="bench", arch="llama", layers=1, hidden=64, heads=4, kv_heads=2, vocab=256,
            seq_len=2048)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure_rank(rank: int, cp: int, kind: str, seqs: list[int], port: int, out) -> None:
    import dataclasses

    import torch
    import torch.distributed as dist

    from llmlaunch.launcher.memory_probe import StorageCounter, storage_ptrs
    from llmlaunch.model.context_parallel import ContextParallelGroup
    from llmlaunch.model.layers import TransformerBlock
    from llmlaunch.model.tp import TensorParallelGroup
    from llmlaunch.topology.model_spec import ModelSpec

    import deepspeed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(cp))
    deepspeed.init_distributed(dist_backend="gloo")     # the all-to-all form calls deepspeed.comm
    torch.set_num_threads(1)
    results = {}
    for seq in seqs:
        spec = ModelSpec(**dict(SPEC, seq_len=seq))
        group = ContextParallelGroup(rank, cp, kind)
        group.attach(dist.new_group(list(range(cp))) if cp > 1 else None)
        torch.manual_seed(0)
        block = TransformerBlock(spec, TensorParallelGroup(), 0, "none", group)
        for param in block.parameters():
            torch.nn.init.normal_(param, std=0.02)
        x = torch.randn(1, seq // cp, spec.hidden, requires_grad=True)
        params = storage_ptrs(block.parameters())
        counter = StorageCounter()

        def pack(tensor):
            if tensor.untyped_storage().data_ptr() not in params:
                counter.add(tensor)
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            y = block(x)
        del y
        results[seq] = counter.bytes
        dist.barrier()
    if rank == 0:
        out.put(results)
    dist.destroy_process_group()


def measured(cp: int, kind: str, seqs: list[int]) -> dict:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=measure_rank, args=(r, cp, kind, seqs, port, queue))
             for r in range(cp)]
    for proc in procs:
        proc.start()
    result = None
    try:
        while result is None:        # a dead rank ends the run at once, never a hang
            try:
                result = queue.get(timeout=1)
            except Empty:
                dead = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
                if dead:
                    raise SystemExit(f"cp={cp} ({kind}): rank {dead[0][0]} exited with "
                                     f"{dead[0][1]}")
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
    return result


def planned(cp: int, seq: int) -> float:
    from llmlaunch.topology.activations import activation_bytes_per_layer
    from llmlaunch.topology.model_spec import ModelSpec

    spec = ModelSpec(**dict(SPEC, seq_len=seq))
    return activation_bytes_per_layer(spec, micro_batch=1, tp=1, recompute="none", act_bytes=4,
                                      seq_len=seq, cp=cp, norm_bytes=4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", type=int, nargs="+", default=[2048, 4096, 8192, 16384, 32768])
    parser.add_argument("--cps", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    runs = [(cp, "allgather") for cp in args.cps] + ([(2, "alltoall")] if 2 in args.cps else [])
    lo, hi = min(args.seqs), max(args.seqs)
    print(f"one llama block (h {SPEC['hidden']}, {SPEC['heads']} heads / {SPEC['kv_heads']} KV), "
          "fp32, saved activations per rank")
    print(f"{'cp':>3} {'form':>9} {'seq':>6} {'measured B':>12} {'planned B':>12} {'ratio':>6}")
    for cp, kind in runs:
        got = measured(cp, kind, sorted(args.seqs))
        for seq in sorted(args.seqs):
            plan = planned(cp, seq)
            print(f"{cp:>3} {kind:>9} {seq:>6} {got[seq]:>12} {plan:>12.0f} {got[seq] / plan:>6.3f}")
        slope = (got[hi] - got[lo]) / (hi - lo)
        plan_slope = (planned(cp, hi) - planned(cp, lo)) / (hi - lo)
        print(f"{cp:>3} {kind:>9} slope {slope:.2f} B/token measured, {plan_slope:.2f} planned "
              f"({slope / plan_slope:.3f})")


if __name__ == "__main__":
    main()
