"""Host time DeepSpeed's PipelineEngine adds per pipeline instruction and per step.

One rank (gloo, CPU), a PipelineModule of two 8 x 8 linear layers at micro-batch 1 (so the device
work is nil), trained with `engine.train_batch` at M1 and M2 micro-batches a step; the same layers
run by a plain loop (forward, backward per micro-batch, one Adam step) at the same counts. The
engine's extra time per micro-batch over the loop's, divided by the 3 instructions a single-stage
schedule runs per micro-batch (LoadMicroBatch, ForwardPass, BackwardPass), is the per-instruction
time; what is left at M1 is the per-step time. topology/engines.py takes the medians of six runs
(2026-12-01, this project's 2-core VM under a load of 3 to 6, DeepSpeed 0.19.8, torch 2.13 CPU):
96 us (72 to 146) and 1.2 ms (0.7 to 2.6).

Run: python benchmarks/pipe_overhead.py [--m1 4 --m2 32 --repeats 20]
"""
import argparse
import os
import statistics
import time


def median_seconds(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--m1", type=int, default=4)
    parser.add_argument("--m2", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29631"), ("RANK", "0"),
                       ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        os.environ.setdefault(key, value)
    import deepspeed
    import torch
    import torch.distributed as dist
    from deepspeed.pipe import PipelineModule

    dist.init_process_group("gloo")
    deepspeed.init_distributed("gloo")
    layers = [torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)]
    x, y = torch.randn(1, 8), torch.randn(1, 8)

    def loss_fn(out, target):
        return (out - target).pow(2).mean()

    def batches():
        while True:
            yield x, y

    engine_s, plain_s = {}, {}
    for m in (args.m1, args.m2):
        module = PipelineModule(layers, num_stages=1, loss_fn=loss_fn, partition_method="uniform")
        config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": m,
                  "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "torch_adam": True}},
                  "steps_per_print": 10 ** 9, "zero_optimization": {"stage": 0}}
        engine, *_ = deepspeed.initialize(model=module, model_parameters=module.parameters(),
                                          config=config)
        data = batches()
        engine_s[m] = median_seconds(lambda: engine.train_batch(data_iter=data), args.repeats)
        optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)

        def plain_step():
            for _ in range(m):
                h = x
                for layer in layers:
                    h = layer(h)
                loss_fn(h, y).backward()
            optimizer.step()
            optimizer.zero_grad()

        plain_s[m] = median_seconds(plain_step, args.repeats)
    extra = {m: engine_s[m] - plain_s[m] for m in engine_s}
    per_micro_batch = (extra[args.m2] - extra[args.m1]) / (args.m2 - args.m1)
    per_step = extra[args.m1] - args.m1 * per_micro_batch
    print(f"engine {engine_s}, plain loop {plain_s} (seconds a step)")
    print(f"per instruction: {per_micro_batch / 3 * 1e6:.0f} us; per step: {per_step * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
