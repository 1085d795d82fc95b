"""One rank of the 2-process CPU (gloo) checks in test_distributed.py.

Launched by the test with torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) set by hand, so ``init_distributed`` is exercised exactly as under torchrun. Writes
``rank{r}.pt`` into the folder given as the only argument. The shared helpers (model, batch,
cases) are imported by the test to compute the single-process references.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

IN_DIM, HIDDEN, EMB_DIM = 8, 16, 6
P, K = 4, 4  # global batch: P classes x K examples
NUM_CLASSES = 5

# (case name, loss name, params, rows per rank or None for an equal split)
CASES: list[tuple[str, str, dict, list[int] | None]] = [
    ("rll_paper", "rll", {"gradient": "paper"}, None),
    ("rll_autograd", "rll", {"gradient": "autograd"}, None),
    ("rll_paper_uneven", "rll", {"gradient": "paper", "Tp": 2.0}, [10, 6]),
    ("rll_autograd_uneven", "rll", {"gradient": "autograd", "lam": 0.5}, [6, 10]),
    ("rll_official", "rll", {"gradient": "paper", "reduction": "official"}, None),
    ("contrastive", "contrastive", {"neg_margin": 1.2}, None),
    ("triplet", "triplet", {"margin": 0.2}, None),
    ("multi_similarity", "multi_similarity", {}, None),
    ("npair", "npair", {}, None),
    ("lifted", "lifted", {}, None),
    ("proxy_anchor", "proxy_anchor", {}, None),
]


def make_model(seed: int) -> nn.Module:
    """Linear-ReLU-Linear: no BatchNorm, so the ranks' forward passes cannot differ."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, EMB_DIM))


def make_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A P x K global batch (class-major order, as the P x K sampler makes it), shuffled."""
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(P * K, IN_DIM, generator=g)
    labels = torch.arange(P).repeat_interleave(K)
    perm = torch.randperm(P * K, generator=g)
    return x[perm], labels[perm]


def split_rows(sizes: list[int] | None, world_size: int, rank: int) -> slice:
    n = P * K
    sizes = sizes or [n // world_size] * world_size
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def eval_data(n: int = 11) -> tuple[torch.Tensor, np.ndarray]:
    """Dataset-order evaluation outputs that the ranks shard and gather back."""
    emb = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3) / 7.0
    return emb, np.arange(n, dtype=np.int64) % 4


def main(out_dir: str) -> None:
    from rankedlist.training.distributed import (
        all_reduce_mean,
        barrier,
        broadcast_object,
        cleanup_distributed,
        gather_embeddings,
        gather_eval,
        init_distributed,
        shard_indices,
        wrap_model,
    )
    from rankedlist.training.loss_factory import build_loss

    ctx = init_distributed("cpu")
    result: dict = {
        "ctx": (ctx.rank, ctx.world_size, ctx.local_rank, str(ctx.device), ctx.is_main),
        "is_distributed": ctx.is_distributed,
    }

    # Evaluation sharding: each rank embeds its shard; gather_eval restores dataset order.
    emb, lab = eval_data()
    idx = shard_indices(len(lab), ctx)
    result["shard"] = idx
    e_all, l_all = gather_eval(emb[torch.from_numpy(idx)], lab[idx], ctx)
    d_all, _ = gather_eval({"high": emb[idx] * 2, "low": emb[idx][:, :1]}, lab[idx], ctx)
    result["gather_eval"] = (e_all, l_all, d_all)

    result["broadcast"] = broadcast_object({"run": f"from-rank-{ctx.rank}"}, ctx)
    result["mean_float"] = all_reduce_mean(float(ctx.rank + 1), ctx)
    result["mean_tensor"] = all_reduce_mean(torch.tensor([ctx.rank, 2.0 * ctx.rank]), ctx)

    # Differentiable gather: each rank's x receives the sum over ranks of d(loss_r)/d(its rows).
    n_local = 2 + ctx.rank  # unequal sizes on purpose
    x = torch.full((n_local, 2), float(ctx.rank + 1), requires_grad=True)
    g = gather_embeddings(x, ctx, differentiable=True)
    weights = torch.arange(g.numel(), dtype=torch.float32).reshape(g.shape) * (ctx.rank + 1)
    (g * weights).sum().backward()
    result["gather_value"] = g.detach()
    result["gather_grad"] = x.grad.clone()
    result["gather_plain"] = gather_embeddings(x, ctx, differentiable=False)

    # Gradient equivalence: DDP-averaged gradients of 2 ranks vs one process on the whole batch.
    # Different seeds per rank on purpose: DDP (model) and the factory (proxies) must broadcast
    # rank 0's initial values.
    model = wrap_model(make_model(seed=ctx.rank), ctx)
    xb, yb = make_batch()
    cases = {}
    for case, name, params, sizes in CASES:
        torch.manual_seed(100 + ctx.rank)
        loss_fn = build_loss(name, params, num_classes=NUM_CLASSES, embedding_dim=EMB_DIM, ctx=ctx)
        model.zero_grad(set_to_none=True)
        rows = split_rows(sizes, ctx.world_size, ctx.rank)
        value = loss_fn(model(xb[rows]), yb[rows])
        value.backward()
        grads = {n: p.grad.clone() for n, p in model.module.named_parameters()}
        grads.update({f"loss.{n}": p.grad.clone() for n, p in loss_fn.named_parameters()})
        cases[case] = {
            "loss": float(value.detach()),
            "grads": grads,
            "stats": dict(loss_fn.last_stats),
            "strategy": loss_fn.strategy,
        }
    result["cases"] = cases
    barrier(ctx)
    torch.save(result, Path(out_dir) / f"rank{ctx.rank}.pt")
    cleanup_distributed(ctx)


if __name__ == "__main__":
    main(sys.argv[1])
