"""Cross-batch memory in training: the factory, the config keys, one step, and exact resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rankedlist.losses import MemoryRankedListLoss, PMLCrossBatchMemory
from rankedlist.training import train as train_module
from rankedlist.training.checkpoint import load_checkpoint
from rankedlist.training.config import config_from_dict
from rankedlist.training.distributed import DistributedContext
from rankedlist.training.loss_factory import LOSS_NAMES, build_loss
from rankedlist.training.optim import build_optimizer
from rankedlist.training.step import train_one_step

MEMORY = ("rll", "contrastive", "multi_similarity")


@pytest.mark.parametrize("name", MEMORY)
def test_factory_wraps_the_loss_in_a_memory(name):
    loss_fn = build_loss(name, {}, num_classes=4, embedding_dim=8, memory_size=32, memory_start=3)
    inner = MemoryRankedListLoss if name == "rll" else PMLCrossBatchMemory
    assert isinstance(loss_fn.loss, inner)
    assert loss_fn.takes_indices and loss_fn.needs_indices == (name == "rll")
    memory_keys = [k for k in loss_fn.state_dict() if "memory" in k or k.endswith("step")]
    assert memory_keys, "the memory must be in the state_dict (checkpointed with the run)"
    x, y = torch.randn(12, 8, requires_grad=True), torch.arange(12) % 4
    args = (torch.arange(12),) if name == "rll" else ()
    loss_fn(x, y, *args).backward()
    assert loss_fn.last_stats["memory_fill"] == 0  # warm-up: 3 iterations
    assert build_loss(name, {}, num_classes=4, embedding_dim=8).needs_indices is False


def _gallery_rows(loss_fn, steps: int, batch: int = 8, seed: int = 0) -> list[int]:
    """Rows each query is ranked against (its own included) at each training step: the
    reference set the innermost loss receives (RLL's ranked list, PML's paired memory)."""
    rows: list[int] = []

    def record(emb, ref):
        rows.append((emb if ref is None else ref).shape[0])

    inner = loss_fn.loss
    if isinstance(inner, MemoryRankedListLoss):  # RLL ranks through _loss_and_stats
        rll, original = inner.loss, inner.loss.loss_and_stats

        def spy(emb, labels, ref_emb, *args, **kwargs):
            record(emb, ref_emb)
            return original(emb, labels, ref_emb, *args, **kwargs)

        rll.loss_and_stats = spy
    else:  # PML: loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        inner.xbm.loss.register_forward_pre_hook(
            lambda _, args, kwargs: record(args[0], args[3] if len(args) > 3 else None),
            with_kwargs=True,
        )
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        x = torch.randn(batch, 8, generator=gen, requires_grad=True)
        loss_fn(x, torch.arange(batch) % 4, torch.arange(batch) + batch * step).backward()
    assert len(rows) == steps
    return rows


@pytest.mark.parametrize(("size", "start"), [(16, 0), (24, 2), (20, 1)])
def test_memory_size_means_the_same_gallery_for_rll_and_the_pml_baselines(size, start):
    """memory_size counts the current batch (XBM's and PML's meaning): at every step a query is
    ranked against min(memory_size, rows seen since the warm-up) rows, for RLL as for the PML
    baselines. (RLL used to add memory_size earlier rows to the batch: 8, 16, 24, 24 at batch 8
    and memory 16 against contrastive's 8, 16, 16, 16.)"""
    steps, batch = 6, 8
    seen = [batch * (s - start + 1) if s >= start else batch for s in range(steps)]
    want = [min(size, n) for n in seen]
    for name in MEMORY:
        loss_fn = build_loss(
            name, {}, num_classes=4, embedding_dim=8, memory_size=size, memory_start=start
        )
        assert _gallery_rows(loss_fn, steps, batch) == want, name


@pytest.mark.parametrize("name", [n for n in LOSS_NAMES if n not in MEMORY])
def test_a_loss_that_cannot_take_a_memory_is_refused(name):
    with pytest.raises(ValueError, match=f"loss '{name}' cannot rank against a cross-batch"):
        build_loss(name, {}, num_classes=4, embedding_dim=8, memory_size=64)


def test_factory_rejects_bad_memory_values():
    for kwargs, key in (({"memory_size": -1}, "memory_size"), ({"memory_start": -5}, "start")):
        with pytest.raises(ValueError, match=key):
            build_loss("rll", {}, num_classes=4, embedding_dim=8, **kwargs)


def test_config_keys_are_validated():
    assert config_from_dict({}).loss.memory_size == 0  # off by default
    ok = config_from_dict({"loss": {"memory_size": 4096, "memory_start": 100}})
    assert (ok.loss.memory_size, ok.loss.memory_start) == (4096, 100)
    bad = [
        ({"memory_size": -1}, "loss.memory_size = -1 is invalid"),
        ({"memory_start": -1}, "loss.memory_start = -1 is invalid"),
        ({"name": "proxy_anchor", "memory_size": 4096}, "'proxy_anchor' cannot rank against"),
        ({"memory_size": 100}, "at least the global batch data.p . data.k = 128"),
    ]
    for loss, match in bad:
        with pytest.raises(ValueError, match=match):
            config_from_dict({"loss": loss})


class Linear(nn.Module):
    head_names = ("high",)

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 8)

    def forward(self, x):
        return {"high": self.fc(x)}


def test_train_one_step_passes_the_indices_to_a_memory_loss():
    torch.manual_seed(0)
    model = Linear()
    config = config_from_dict({"optim": {"name": "sgd", "lr": 0.1}})
    losses = {"high": build_loss("rll", {}, num_classes=4, embedding_dim=8, memory_size=64)}
    optimizer = build_optimizer(model, config.optim)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    x, y = torch.randn(16, 5), torch.arange(16) % 4
    args = (model, losses, x, y, optimizer, scaler, config, DistributedContext())
    with pytest.raises(ValueError, match="dataset indices"):
        train_one_step(*args)
    for step in range(2):
        values, _ = train_one_step(*args, indices=torch.arange(16) + 16 * step)
        assert values["memory_fill"] == 16 * (step + 1)
        assert values["active_neg"] > 0


# The tiny run for 12 iterations: 16 rows a batch, the memory starts after 2 iterations and wraps
# at the 5th.
MEMORY_RUN = ["train.iterations=12", "loss.memory_size=48", "loss.memory_start=2"]


@pytest.mark.slow
@pytest.mark.parametrize("stop", [7, 1], ids=["after the warm-up", "inside the warm-up"])
def test_resume_with_memory_equals_an_uninterrupted_run(tmp_path, stop, tiny_run):
    """Stopped at iteration 7 (the memory full and wrapped) or 1 (inside the warm-up: the memory
    not started, its step count 1 of memory_start 2), then resumed: bit for bit the uninterrupted
    run, in every logged value, the weights and the memory."""

    def config(name, *extra):
        return tiny_run.config(tmp_path / name, *MEMORY_RUN, *extra)

    whole = train_module.main(config("whole"), test=False)
    parts = config("parts", "train.checkpoint_every=4")
    assert train_module.main(parts, stop_after=stop, test=False).iteration == stop
    stopped = load_checkpoint(tmp_path / "parts" / "last.pt")
    steps = [v for k, v in stopped["losses"].items() if k.endswith("memory.step")]
    assert [int(v) for v in steps] == [stop]
    assert train_module.main(parts, resume=tmp_path / "parts", test=False).iteration == 12
    assert whole.status == "completed"

    expected, got = tiny_run.records(tmp_path / "whole"), tiny_run.records(tmp_path / "parts")
    assert [r["step"] for r in got] == list(range(1, 13))
    for key in ("loss", "memory_fill", "active_pos", "active_neg"):
        assert [r[key] for r in got] == [r[key] for r in expected], key  # exact, not approx
    assert [r["memory_fill"] for r in got] == [0, 0, 16, 32, 48, 48, 48, 48, 48, 48, 48, 48]
    a = load_checkpoint(tmp_path / "whole" / "last.pt")
    b = load_checkpoint(tmp_path / "parts" / "last.pt")
    for part in ("model", "losses"):
        assert set(a[part]) == set(b[part]) and a[part], part
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}: {key}"
    assert any(".memory." in k for k in a["losses"])
