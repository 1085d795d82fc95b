"""The loss factory: Ranked List Loss and the pytorch-metric-learning baselines by name.

``build_loss(name, params, num_classes=..., embedding_dim=..., ctx=...)`` returns an
``nn.Module`` whose ``forward(embeddings, labels)`` gives a scalar loss on the global batch (see
:mod:`rankedlist.training.global_batch_loss` for how a distributed run gathers it) and whose
``last_stats`` holds RLL's statistics (``{}`` for baselines).

Each loss is one :class:`LossRecord` in :data:`LOSSES` (its class, its miner, whether it takes a
cross-batch memory and the samples' indices); adding a loss is adding its record. Names and what
they build (baselines come from pytorch-metric-learning, not rewritten, so the comparison is
against the reference implementations):

================== =========================================================================
``rll``            :class:`rankedlist.losses.RankedListLoss`; params: its constructor
                   (``margin``, ``alpha``, ``Tn``, ``Tp``, ``lam``, ``normalize``, ``gradient``,
                   ``reduction`` = ``"mean"`` or ``"official"``, ``chunk_size``)
``contrastive``    PML ``ContrastiveLoss`` (``pos_margin``, ``neg_margin``)
``triplet``        PML ``TripletMarginLoss`` (``margin``, ``swap``, ``smooth_loss``,
                   ``triplets_per_anchor``) mined by ``TripletMarginMiner`` with
                   ``type_of_triplets="semihard"``; the miner's margin defaults to the loss's
``multi_similarity`` PML ``MultiSimilarityLoss`` (``alpha``, ``beta``, ``base``) mined by
                   ``MultiSimilarityMiner`` (``epsilon``)
``npair``          PML ``NPairsLoss`` (no parameters)
``lifted``         PML ``GeneralizedLiftedStructureLoss`` (``neg_margin``, ``pos_margin``), the
                   smooth batch-wise form that PML and "A Metric Learning Reality Check" use
``proxy_anchor``   PML ``ProxyAnchorLoss`` (``margin``, ``alpha``) with one proxy per class
================== =========================================================================

Parameter naming: keys of ``params`` are the loss constructor's argument names; the miner's are
the miner constructor's names prefixed with ``miner_`` (``miner_margin``,
``miner_type_of_triplets``, ``miner_epsilon``). An unknown key is a ValueError listing the valid
ones (:func:`valid_params`). Defaults are PML's, except the triplet miner's type and margin above.

Cross-batch memory (XBM): ``memory_size > 0`` ranks each batch against the newest
``memory_size`` embeddings, the current batch included (the XBM paper's and PML's memory size: a
batch of B rows meets the newest ``memory_size - B`` rows of earlier batches once the memory is
full), from iteration ``memory_start`` on. ``rll`` becomes
:class:`rankedlist.losses.MemoryRankedListLoss` (batch + memory as one ranked list); ``contrastive``
and ``multi_similarity`` use PML's ``CrossBatchMemory`` (the XBM paper's pairings) through
:class:`rankedlist.losses.PMLCrossBatchMemory`; at equal ``memory_size`` both rank a query against
the same number of rows at every step. Any other loss raises a ValueError. The memory is made of
buffers: it is saved and restored with the loss module's ``state_dict``.

Copies of one sample: ``forward(embeddings, labels, indices)`` with the samples' dataset indices
leaves the pairs of one sample out (the P x K sampler repeats the images of a class smaller than
K; an image is never its own positive): RLL by index like the self pair, pair- and triplet-based
baselines by dropping those pairs from their miner's tuples, a memory for its older copies too.
RLL's memory requires the indices; ``proxy_anchor`` ignores them (no pairs of samples).

Proxy-based losses have trainable parameters (ProxyAnchor's ``loss.loss.proxies``, shape
``(num_classes, embedding_dim)``): they are ordinary parameters of the returned module, so the
trainer must give ``loss_module.parameters()`` to its optimiser (the Proxy-Anchor paper uses a
100x learning rate for them); ``has_parameters(module)`` says whether there are any.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from rankedlist.losses import (
    MemoryBank,
    MemoryRankedListLoss,
    PMLCrossBatchMemory,
    RankedListLoss,
)
from rankedlist.training.distributed import DistributedContext

__all__ = [
    "LOSSES",
    "LOSS_NAMES",
    "LossBuilder",
    "LossRecord",
    "build_loss",
    "has_parameters",
    "valid_params",
]


#: ``builder(record, loss_kwargs, embedding_dim, memory_size, memory_start) -> loss module``.
LossBuilder = Callable[..., nn.Module]


@dataclass(frozen=True)
class LossRecord:
    """One loss the factory builds by name: what it is made of and what it can take.

    Attributes:
        name: the recipe's ``loss.name``.
        loss_class: the class, or for a pytorch-metric-learning loss its name in
            ``pytorch_metric_learning.losses`` (PML is an optional extra, imported when used).
        builder: builds the module when the constructor alone does not (RLL: its reduction check
            and its own memory); None for the PML losses, built with their miner and, given a
            memory, PML's CrossBatchMemory.
        miner_class: the ``pytorch_metric_learning.miners`` class that picks the loss's tuples,
            or None (the loss uses every pair of the batch).
        miner_defaults: the miner's arguments where the factory's default is not PML's.
        takes_memory: can rank each batch against a cross-batch memory (``memory_size > 0``).
        takes_indices: given the samples' dataset indices, leaves the pairs of one sample out.
        proxies: learns one proxy per class: the factory passes ``num_classes`` and
            ``embedding_size`` to the class, and labels must lie in ``[0, num_classes)``.
    """

    name: str
    loss_class: type | str
    builder: LossBuilder | None = None
    miner_class: str | None = None
    miner_defaults: Mapping[str, Any] = field(default_factory=dict)
    takes_memory: bool = False
    takes_indices: bool = True
    proxies: bool = False


def _build_rll(
    record: LossRecord,
    loss_kwargs: dict[str, Any],
    embedding_dim: int,
    memory_size: int,
    memory_start: int,
) -> nn.Module:
    """RLL, ranked against its own memory when ``memory_size`` > 0."""
    if loss_kwargs.get("reduction", "mean") == "none":
        raise ValueError(
            "loss 'rll' with reduction='none' returns one value per query; training needs a "
            "scalar: use reduction='mean' (the paper) or 'official'"
        )
    loss = _construct(record.name, RankedListLoss, loss_kwargs)
    if memory_size:
        memory = MemoryBank(memory_size, embedding_dim, start=memory_start)
        loss = MemoryRankedListLoss(loss, memory)
    return loss


#: Every loss, in the order listed to users.
LOSSES: dict[str, LossRecord] = {
    r.name: r
    for r in (
        LossRecord("rll", RankedListLoss, builder=_build_rll, takes_memory=True),
        LossRecord("contrastive", "ContrastiveLoss", takes_memory=True),
        LossRecord(
            "triplet",
            "TripletMarginLoss",
            miner_class="TripletMarginMiner",
            miner_defaults={"type_of_triplets": "semihard"},
        ),
        LossRecord(
            "multi_similarity",
            "MultiSimilarityLoss",
            miner_class="MultiSimilarityMiner",
            takes_memory=True,
        ),
        LossRecord("npair", "NPairsLoss"),
        LossRecord("lifted", "GeneralizedLiftedStructureLoss"),
        # Proxies pair no samples, so there is no pair of one sample to leave out.
        LossRecord("proxy_anchor", "ProxyAnchorLoss", takes_indices=False, proxies=True),
    )
}
LOSS_NAMES: tuple[str, ...] = tuple(LOSSES)

# Filled in by the factory from its keyword arguments, so not user parameters.
_FACTORY_FILLED = {"num_classes", "embedding_size"}
_MINER_PREFIX = "miner_"
_TRIPLET_TYPES = ("semihard", "hard", "all", "easy")


def _constructor_params(cls: type) -> list[str]:
    sig = inspect.signature(cls.__init__)
    return [
        p.name
        for p in sig.parameters.values()
        if p.name != "self"
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name not in _FACTORY_FILLED
    ]


def _classes(record: LossRecord) -> tuple[type, type | None]:
    """The loss class and the miner class (None: no miner) of ``record``."""
    if isinstance(record.loss_class, type):
        return record.loss_class, None
    from rankedlist.extras import require

    feature = f"loss.name={record.name} (a pytorch-metric-learning baseline)"
    losses = require("pytorch_metric_learning.losses", "baselines", feature)
    miners = require("pytorch_metric_learning.miners", "baselines", feature)
    miner = getattr(miners, record.miner_class) if record.miner_class else None
    return getattr(losses, record.loss_class), miner


def _record(name: str) -> LossRecord:
    if not isinstance(name, str) or name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(LOSS_NAMES)}")
    return LOSSES[name]


def valid_params(name: str) -> list[str]:
    """The parameter keys ``build_loss(name, params)`` accepts (miner keys prefixed ``miner_``)."""
    loss_cls, miner_cls = _classes(_record(name))
    keys = _constructor_params(loss_cls)
    if miner_cls is not None:
        keys += [_MINER_PREFIX + k for k in _constructor_params(miner_cls)]
    return keys


def has_parameters(module: nn.Module) -> bool:
    """True when the loss module has trainable parameters (proxies) to give the optimiser."""
    return any(p.requires_grad for p in module.parameters())


def build_loss(
    name: str,
    params: Mapping[str, Any] | None,
    *,
    num_classes: int,
    embedding_dim: int,
    ctx: DistributedContext | None = None,
    memory_size: int = 0,
    memory_start: int = 0,
) -> nn.Module:
    """Build the training loss ``name`` with hyper-parameters ``params``.

    Args:
        name: one of :data:`LOSS_NAMES`.
        params: hyper-parameters (see the module docstring for the keys); ``None`` means defaults.
        num_classes: number of training classes (labels must lie in ``[0, num_classes)`` for
            ``proxy_anchor``; ignored by the others).
        embedding_dim: embedding size (the proxies' size for ``proxy_anchor``).
        ctx: the distributed context; with more than one process the loss is computed on the
            global batch gathered from all ranks. Build it on every rank, in the same order
            (construction may run collectives).
        memory_size: rows of a cross-batch memory, the current batch included (0: none); see
            the module docstring.
        memory_start: iterations (training calls) before the memory is filled and used.

    Returns:
        A :class:`~rankedlist.training.global_batch_loss.GlobalBatchLoss`:
        ``forward(embeddings, labels) -> scalar``, ``last_stats`` dict, and for
        ``proxy_anchor`` the proxies as parameters (give ``module.parameters()`` to the
        optimiser). ``takes_indices`` (every loss but ``proxy_anchor``): call it as
        ``loss(embeddings, labels, indices)`` with the samples' dataset indices to leave the
        pairs of one sample out; ``needs_indices`` (``rll`` with a memory): it must be called so.

    Raises:
        ValueError: unknown name, unknown parameter key (the message lists the valid ones), a
            value the loss rejects, ``reduction="none"`` (training needs a scalar), or a memory
            for a loss that cannot take one.
        TypeError: ``params`` is not a mapping.
    """
    from rankedlist.training.global_batch_loss import GlobalBatchLoss

    record = _record(name)
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise TypeError(f"params of loss {name!r} must be a mapping, got {type(params).__name__}")
    _check_memory(record, memory_size, memory_start, embedding_dim)
    loss_kwargs, miner_kwargs = _split_params(record, params)
    if record.builder is not None:
        loss = record.builder(record, loss_kwargs, embedding_dim, memory_size, memory_start)
        return GlobalBatchLoss(loss, name, ctx=ctx)
    loss, miner = _build_pml(
        record, loss_kwargs, miner_kwargs, num_classes, embedding_dim, memory_size, memory_start
    )
    return GlobalBatchLoss(
        loss,
        name,
        miner=miner,
        ctx=ctx,
        num_classes=num_classes if record.proxies else None,
        drop_copies=record.takes_indices,
    )


def _split_params(
    record: LossRecord, params: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``params`` checked against :func:`valid_params`, as (loss kwargs, miner kwargs)."""
    valid = valid_params(record.name)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for loss {record.name!r}; valid parameters: "
            f"{', '.join(valid) if valid else '(none)'}"
        )
    loss_kwargs = {k: v for k, v in params.items() if not k.startswith(_MINER_PREFIX)}
    miner_kwargs = {
        k[len(_MINER_PREFIX) :]: v for k, v in params.items() if k.startswith(_MINER_PREFIX)
    }
    return loss_kwargs, miner_kwargs


def _with_proxy_sizes(
    record: LossRecord, loss_kwargs: dict[str, Any], num_classes: Any, embedding_dim: Any
) -> dict[str, Any]:
    """The loss arguments with the proxies' count and size, which the factory fills in."""
    for key, value in (("num_classes", num_classes), ("embedding_dim", embedding_dim)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"loss {record.name!r} needs a positive int {key}, got {value!r}")
    return {"num_classes": num_classes, "embedding_size": embedding_dim, **loss_kwargs}


def _build_pml(
    record: LossRecord,
    loss_kwargs: dict[str, Any],
    miner_kwargs: dict[str, Any],
    num_classes: Any,
    embedding_dim: Any,
    memory_size: int,
    memory_start: int,
) -> tuple[nn.Module, nn.Module | None]:
    """A PML loss and its miner (None: no miner, or the miner went into the memory)."""
    if record.proxies:
        loss_kwargs = _with_proxy_sizes(record, loss_kwargs, num_classes, embedding_dim)
    loss_cls, miner_cls = _classes(record)
    loss = _construct(record.name, loss_cls, loss_kwargs)
    miner = _build_miner(record, miner_cls, miner_kwargs, loss)
    if not memory_size:
        return loss, miner
    from pytorch_metric_learning.losses import CrossBatchMemory

    # The miner goes inside: PML's memory mines the batch against the memory.
    memory = PMLCrossBatchMemory(
        CrossBatchMemory, loss, miner, embedding_dim, memory_size, memory_start
    )
    return memory, None


def _build_miner(
    record: LossRecord, miner_cls: type | None, miner_kwargs: dict[str, Any], loss: nn.Module
) -> nn.Module | None:
    """The miner of ``record`` (None when it has none), the factory's defaults under
    ``miner_kwargs``."""
    kind = miner_kwargs.get("type_of_triplets", "semihard")
    if record.name == "triplet" and kind not in _TRIPLET_TYPES:
        # PML does not check it and silently mines "all" for an unknown value.
        raise ValueError(
            f"miner_type_of_triplets={kind!r} for loss 'triplet'; "
            f"valid: {', '.join(_TRIPLET_TYPES)}"
        )
    if miner_cls is None:
        return None
    defaults = dict(record.miner_defaults)
    if record.name == "triplet" and "margin" not in miner_kwargs:
        # Semi-hard mining selects the triplets inside the loss's own margin.
        defaults["margin"] = loss.margin
    return _construct(record.name, miner_cls, {**defaults, **miner_kwargs}, what="miner")


def check_takes_memory(name: str, memory_size: int) -> None:
    """Raise ``ValueError`` when loss ``name`` cannot rank against a memory of ``memory_size``
    rows: the one check of it, for a recipe on loading and for :func:`build_loss`. An unknown
    name passes (its own error comes from the loss check)."""
    record = LOSSES.get(name)
    if memory_size and record is not None and not record.takes_memory:
        able = [r.name for r in LOSSES.values() if r.takes_memory]
        raise ValueError(
            f"loss {name!r} cannot rank against a cross-batch memory (memory_size="
            f"{memory_size}); use one of {', '.join(able)} or memory_size=0"
        )


def _check_memory(
    record: LossRecord, memory_size: Any, memory_start: Any, embedding_dim: Any
) -> None:
    for key, value in (("memory_size", memory_size), ("memory_start", memory_start)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{key} must be an integer >= 0, got {value!r}")
    if not memory_size:
        return
    check_takes_memory(record.name, memory_size)
    if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < 1:
        raise ValueError(f"a memory needs a positive int embedding_dim, got {embedding_dim!r}")


def _construct(name: str, cls: type, kwargs: dict[str, Any], what: str = "loss") -> nn.Module:
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        raise ValueError(
            f"invalid parameters {kwargs} for the {what} of loss {name!r} ({cls.__name__}): {err}"
        ) from err
