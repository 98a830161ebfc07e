"""Host time DeepSpeed's ZeRO-2 and ZeRO-3 add per parameter tensor and micro-batch (plain engine).

One rank (gloo, CPU), DeepSpeed's plain engine over a stack of N Linear(320, 320) layers (a weight
of 102,400 elements, above ZeRO-3's persistence threshold of 1e5, so it is gathered and released,
and a bias under it), micro-batch 1 of one row (the device work is nil), M micro-batches a step
(engine.backward / engine.step). The same stack under ZeRO-0 is the baseline. The slope of the step
time over N, ZeRO-k's minus ZeRO-0's, over 2 tensors a layer and M micro-batches, is the host time
per parameter tensor per micro-batch: gradient hooks copying into the reduce bucket and the
bucket's reduction (ZeRO-2); the gathers, releases and re-partitioning around every module's
forward and backward (ZeRO-3). At world size 1 the collectives move nothing: communication is
priced separately (topology/step_time.py).

Run: python benchmarks/zero_overhead.py [--n1 8 --n2 48 --micro-batches 4 --repeats 15]
"""
import argparse
import os
import time

WIDTH = 320


def fastest_seconds(fn, repeats: int) -> float:
    """The fastest of `repeats` timed runs after two warm-ups: on a shared host other processes only
    ever add time, so the minimum is the engine's own cost."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def step_seconds(layers: int, zero: int, micro_batches: int, repeats: int) -> float:
    import deepspeed
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(WIDTH, WIDTH) for _ in range(layers)])
    config = {"train_batch_size": micro_batches, "train_micro_batch_size_per_gpu": 1,
              "gradient_accumulation_steps": micro_batches,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
              "zero_optimization": {"stage": zero}, "steps_per_print": 10 ** 9}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                      config=config)
    x = torch.randn(1, WIDTH)

    def step():
        for _ in range(micro_batches):
            loss = engine(x).square().mean()
            engine.backward(loss)
            engine.step()

    seconds = fastest_seconds(step, repeats)
    engine.destroy()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n1", type=int, default=8)
    parser.add_argument("--n2", type=int, default=48)
    parser.add_argument("--micro-batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29641"), ("RANK", "0"),
                       ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        os.environ.setdefault(key, value)
    import deepspeed

    deepspeed.init_distributed("gloo")
    m = args.micro_batches
    slope = {}
    for zero in (0, 2, 3):
        t1 = step_seconds(args.n1, zero, m, args.repeats)
        t2 = step_seconds(args.n2, zero, m, args.repeats)
        slope[zero] = (t2 - t1) / ((args.n2 - args.n1) * 2 * m)
        print(f"ZeRO-{zero}: step {t1 * 1e3:.1f} ms at {args.n1} layers, {t2 * 1e3:.1f} ms at "
              f"{args.n2}; {slope[zero] * 1e6:.1f} us per tensor per micro-batch", flush=True)
    for zero in (2, 3):
        print(f"ZeRO-{zero} beyond ZeRO-0: {(slope[zero] - slope[0]) * 1e6:.1f} us per parameter "
              "tensor per micro-batch")


if __name__ == "__main__":
    main()
