"""The few collectives the distributed evaluation needs, on torch.distributed's default group."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class Comm:
    """This process's rank and the world size of the default process group, and gathers."""

    def __init__(self) -> None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "distributed=True needs an initialised torch.distributed process group "
                "(torchrun, or torch.distributed.init_process_group): every process calls "
                "this with the same embeddings"
            )
        self.dist = dist
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        # NCCL moves CUDA tensors only; gloo (and others) CPU tensors.
        if dist.get_backend() == "nccl":
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")

    def all_gather_arrays(self, arrays: list[np.ndarray]) -> list[list[np.ndarray]]:
        """Every process's ``arrays`` (1-D numpy arrays, lengths may differ), by rank."""
        sizes = torch.tensor([a.shape[0] for a in arrays], dtype=torch.int64, device=self.device)
        all_sizes = [torch.empty_like(sizes) for _ in range(self.world)]
        self.dist.all_gather(all_sizes, sizes)
        per_rank = [s.cpu().tolist() for s in all_sizes]
        out: list[list[np.ndarray]] = [[] for _ in range(self.world)]
        for i, a in enumerate(arrays):
            longest = max(per_rank[r][i] for r in range(self.world))
            a = np.ascontiguousarray(a)
            padded = torch.zeros(longest, dtype=torch.from_numpy(a[:0]).dtype, device=self.device)
            padded[: a.shape[0]] = torch.from_numpy(a).to(self.device)
            got = [torch.empty_like(padded) for _ in range(self.world)]
            self.dist.all_gather(got, padded)
            for r in range(self.world):
                out[r].append(got[r][: per_rank[r][i]].cpu().numpy())
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``obj`` of process ``src``, on every process."""
        box = [obj if self.rank == src else None]
        self.dist.broadcast_object_list(box, src=src)
        return box[0]


def share(n: int, rank: int, world: int, unit: int = 1) -> slice:
    """The ``rank``-th of ``world`` contiguous, near-equal shares of ``range(n)``, made of whole
    blocks of ``unit`` items (the blocks of ``range(0, n, unit)``; the last may be short)."""
    blocks = -(-n // unit)
    return slice(min(n, blocks * rank // world * unit), min(n, blocks * (rank + 1) // world * unit))
