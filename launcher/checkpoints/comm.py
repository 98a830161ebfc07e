"""The few collectives the checkpoint store uses, over the job's world group, or their one-process
equivalents when there is none (offline tools, tests): decide on rank 0 and tell everyone, gather
one object from each rank, agree on a number."""
from __future__ import annotations


class Comm:
    def __init__(self):
        import torch.distributed as dist

        self.dist = dist
        self.on = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1

    def _device(self):
        import torch

        if self.dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def from_first(self, compute):
        """compute() on rank 0, its result on every rank. An exception there is raised on every
        rank (as a RuntimeError with its first line) rather than leaving the others waiting."""
        result, error = None, None
        if self.rank == 0:
            try:
                result = compute()
            except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
                error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                if not self.on:
                    raise
        if self.on:
            box = [(result, error)]
            self.dist.broadcast_object_list(box, src=0)
            result, error = box[0]
        if error is not None:
            raise RuntimeError(f"on rank 0: {error}")
        return result

    def all_gather(self, obj) -> list:
        if not self.on:
            return [obj]
        out = [None] * self.world
        self.dist.all_gather_object(out, obj)
        return out

    def minimum(self, value: int) -> int:
        """The smallest of every rank's `value`."""
        if not self.on:
            return value
        import torch

        tensor = torch.tensor([value], dtype=torch.int64, device=self._device())
        self.dist.all_reduce(tensor, op=self.dist.ReduceOp.MIN)
        return int(tensor.item())

    def barrier(self) -> None:
        if self.on:
            self.dist.barrier()
