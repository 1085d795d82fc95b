"""One rank of the 2-process CPU (gloo) cross-batch memory checks in test_memory_distributed.py.

Launched by the test with torchrun's variables set by hand. For every case it runs a tiny model
for a few steps with a memory that fills, wraps around and holds older copies of the batch's
samples, and writes per-step losses, DDP-averaged gradients and the final memory into
``rank{r}.pt`` in the folder given as the only argument. ``run_case`` is imported by the test to
compute the single-process reference on the same global batches.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

IN_DIM, HIDDEN, EMB_DIM = 8, 16, 6
P, K, CLASSES, PER_CLASS = 4, 4, 5, 6  # global batch P x K from a dataset of 30 samples
STEPS, MEMORY_SIZE, MEMORY_START = 5, 40, 1  # the memory starts at step 2 and wraps at step 4

# (case name, loss name, params, rows per rank or None for an equal split)
CASES: list[tuple[str, str, dict, list[int] | None]] = [
    ("rll_paper", "rll", {"gradient": "paper"}, None),
    ("rll_autograd_uneven", "rll", {"gradient": "autograd", "Tp": 1.0}, [10, 6]),
    ("rll_official", "rll", {"reduction": "official"}, None),
    ("contrastive", "contrastive", {"neg_margin": 1.2}, None),
    ("multi_similarity", "multi_similarity", {}, None),
]


def make_model(seed: int) -> nn.Module:
    """Linear-ReLU-Linear: no BatchNorm, so the ranks' forward passes cannot differ."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, EMB_DIM))


def dataset() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(99)
    return torch.randn(CLASSES * PER_CLASS, IN_DIM, generator=g), torch.arange(
        CLASSES * PER_CLASS
    ) // PER_CLASS


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dataset indices of step's P x K batch (P classes, K of their samples), shuffled, and the
    step's input noise (an augmentation): later batches repeat samples, so the memory holds
    older, different copies of them."""
    g = torch.Generator().manual_seed(1000 + step)
    classes = torch.randperm(CLASSES, generator=g)[:P]
    rows = [c * PER_CLASS + torch.randperm(PER_CLASS, generator=g)[:K] for c in classes]
    ids = torch.cat(rows)
    return ids[torch.randperm(ids.numel(), generator=g)], 0.5 * torch.randn(
        P * K, IN_DIM, generator=g
    )


def rows_of(sizes: list[int] | None, world_size: int, rank: int) -> slice:
    n = P * K
    sizes = sizes or [n // world_size] * world_size
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def run_case(name: str, params: dict, ctx, model: nn.Module, rows: slice) -> dict:
    """STEPS steps; per-step loss, gradients of the (unwrapped) model, the final memory.

    The weights stay fixed (no optimiser step): every step then compares the same computation,
    with no drift of the ranks' weights by rounding; the input noise makes each step new."""
    from rankedlist.training.loss_factory import build_loss

    x_all, y_all = dataset()
    loss_fn = build_loss(
        name, params, num_classes=CLASSES, embedding_dim=EMB_DIM, ctx=ctx,
        memory_size=MEMORY_SIZE, memory_start=MEMORY_START,
    )  # fmt: skip
    plain = model.module if hasattr(model, "module") else model
    losses, grads, fills = [], [], []
    for step in range(STEPS):
        ids, noise = global_batch(step)
        ids, noise = ids[rows], noise[rows]
        model.zero_grad(set_to_none=True)
        emb = model(x_all[ids] + noise)
        value = loss_fn(emb, y_all[ids], ids) if loss_fn.takes_indices else loss_fn(emb, y_all[ids])
        value.backward()
        losses.append(float(value.detach()))
        grads.append({n: p.grad.clone() for n, p in plain.named_parameters()})
        fills.append(loss_fn.last_stats["memory_fill"])
    memory = {  # PML's queue position is a dict (the module's extra state)
        k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in loss_fn.state_dict().items()
    }
    return {"losses": losses, "grads": grads, "fills": fills, "memory": memory}


def main(out_dir: str) -> None:
    from rankedlist.training.distributed import (
        barrier,
        cleanup_distributed,
        init_distributed,
        wrap_model,
    )

    ctx = init_distributed("cpu")
    result = {}
    for case, name, params, sizes in CASES:
        # Different seeds per rank on purpose: DDP must broadcast rank 0's initial weights.
        model = wrap_model(make_model(seed=ctx.rank), ctx)
        result[case] = run_case(name, params, ctx, model, rows_of(sizes, ctx.world_size, ctx.rank))
    barrier(ctx)
    torch.save(result, Path(out_dir) / f"rank{ctx.rank}.pt")
    cleanup_distributed(ctx)


if __name__ == "__main__":
    main(sys.argv[1])
