"""The Ranked List Loss (Wang et al., CVPR 2019; extended in TPAMI 2021), as the paper defines it.

For query i with label y_i, distances d_ij = ||f_i - f_j|| between L2-normalised embeddings and
b = alpha - margin:

* non-trivial positives P*_i = {j != i : y_j = y_i, d_ij > b}, weights v_ij = exp(Tp (d_ij - b));
* non-trivial negatives N*_i = {j : y_j != y_i, d_ij < alpha}, weights w_ij = exp(Tn (alpha - d));
* L_P(i) = sum v (d - b) / sum v, L_N(i) = sum w (alpha - d) / sum w (an empty set gives 0);
* L(i) = L_P(i) + lam L_N(i), and the batch loss is the mean over all N queries.

Example::

    loss_fn = RankedListLoss(margin=0.4, Tn=10.0)
    loss = loss_fn(embeddings, labels)  # embeddings (N, D) any float dtype, labels (N,) integers
    loss.backward()
    loss_fn.last_stats  # {"active_pos": ..., "active_neg": ..., "nonzero_frac": ...}

The options and the numerics are described in the package README and ``docs/ARCHITECTURE.md``.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from rankedlist.losses._autograd_rows import autograd_rows
from rankedlist.losses._excluded_pairs import Pairs, pairs_in_rows
from rankedlist.losses._inputs import (
    HyperParameters,
    RankedLists,
    check_embeddings,
    check_options,
    check_ranked_lists,
    excluded_copies,
    float_labels,
)
from rankedlist.losses._kernels import (
    PaperRankedList,
    autocast_disabled,
    official_weights,
)

__all__ = ["RankedListLoss", "ranked_list_loss"]

# What the per-query functions return: loss, n_pos, n_neg, log S+, log S- (each length N).
PerQuery = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def compute_ranked_list_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    hp: HyperParameters,
    ref_emb: torch.Tensor | None = None,
    ref_labels: torch.Tensor | None = None,
    self_index: torch.Tensor | None = None,
    *,
    indices: torch.Tensor | None = None,
    ref_indices: torch.Tensor | None = None,
    excluded: Pairs | None = None,
    memory_gallery: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss and its statistics; the options ``hp`` are already validated.

    ``indices``/``ref_indices``: the dataset indices of the queries and of the reference rows
    (default: ``indices`` when the reference set is the batch); the pairs of one sample are
    excluded, as the self pair is. ``excluded``: further ``(query rows, reference rows)`` pairs
    left out of the ranked lists, rows sorted (a memory bank's copies of the queries); long
    tensors on the device; not together with the indices.
    ``memory_gallery``: ``ref_emb`` is a batch + memory gallery; with ``gradient="paper"`` its
    rows are already checked and normalised as the loss uses them, and most of them are trivial,
    so each chunk of queries is ranked against its candidate columns only.
    """
    x = check_embeddings("embeddings", embeddings, hp.normalize)
    # Immune to an enclosing autocast: it would run the distance and gradient products in
    # float16/bfloat16, and the boundaries alpha, alpha - m and the weights exp(Tn (alpha - d))
    # need the float32 distances. (Checkpointed chunks recompute under the same, disabled state.)
    with autocast_disabled(x.device):
        ready = memory_gallery and hp.gradient == "paper"
        lists = check_ranked_lists(x, labels, ref_emb, ref_labels, self_index, hp.normalize, ready)
        if indices is not None or ref_indices is not None:
            excluded = excluded_copies(indices, ref_indices, lists, x.shape[0], x.device)
        # float16/bfloat16 are computed in float32 (exp(Tn alpha) alone exceeds float16's
        # range); the cast is part of the graph, so gradients come back in the input dtype.
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        yq, yg = float_labels(lists.query_labels, lists.reference_labels, dtype)
        lists = replace(lists, query_labels=yq, reference_labels=yg, excluded=excluded)
        per_query_losses = _paper_per_query if hp.gradient == "paper" else _autograd_per_query
        per_query, n_pos, n_neg, log_s_pos, log_s_neg = per_query_losses(x.to(dtype), lists, hp)
        loss = _reduced(per_query, log_s_pos, log_s_neg, hp)
        return loss, _stats(per_query, n_pos, n_neg)


def _paper_per_query(x: torch.Tensor, lists: RankedLists, hp: HyperParameters) -> PerQuery:
    """The per-query losses and statistics with the paper's gradient (the chunked kernel)."""
    g = lists.reference
    if g is not None:
        with torch.no_grad():  # the gallery is detached in the paper's semantics
            g = g.detach().to(x.dtype)
            normalize = hp.normalize and not lists.memory_gallery
            g = (F.normalize(g, dim=1) if normalize else g).contiguous()
    return PaperRankedList.apply(x, replace(lists, reference=g), hp)


def _autograd_per_query(x: torch.Tensor, lists: RankedLists, hp: HyperParameters) -> PerQuery:
    """The per-query losses and statistics with every quantity differentiated."""
    n, chunk_size = x.shape[0], hp.chunk_size
    xq = F.normalize(x, dim=1) if hp.normalize else x
    self_cols, excluded = lists.self_cols, lists.excluded
    yq, yg = lists.query_labels, lists.reference_labels
    if lists.reference is None:
        g = xq
        if self_cols is None:
            self_cols = torch.arange(n, device=x.device)
    else:
        g = lists.reference.to(x.dtype)
        g = F.normalize(g, dim=1) if hp.normalize else g
    if chunk_size is None or chunk_size >= n:
        parts = autograd_rows(xq, g, yq, yg, self_cols, hp, excluded)
    else:
        # Recompute each chunk in the backward pass: only per-query vectors stay alive.
        chunks = []
        for start in range(0, n, chunk_size):
            sl = slice(start, min(start + chunk_size, n))
            cols = None if self_cols is None else self_cols[sl]
            pairs = pairs_in_rows(excluded, sl.start, sl.stop)
            chunks.append(
                checkpoint(
                    autograd_rows, xq[sl], g, yq[sl], yg, cols, hp, pairs, use_reentrant=False
                )
            )
        parts = tuple(torch.cat(p) for p in zip(*chunks, strict=True))
    loss_pos, loss_neg, n_pos, n_neg, log_s_pos, log_s_neg = parts
    return hp.kP * loss_pos + hp.kN * loss_neg, n_pos, n_neg, log_s_pos, log_s_neg


def _reduced(
    per_query: torch.Tensor, log_s_pos: torch.Tensor, log_s_neg: torch.Tensor, hp: HyperParameters
) -> torch.Tensor:
    """The per-query losses reduced as ``hp.reduction`` says."""
    if hp.reduction == "none":
        return per_query
    if hp.reduction == "mean":
        # Mean over the local queries, so that averaging gradients across processes gives the
        # single-process gradient.
        return per_query.mean()
    q = official_weights(log_s_pos, log_s_neg)
    if hp.gradient == "paper":
        q = q.detach()
    return (q * per_query).sum()


def _stats(per_query: torch.Tensor, n_pos: torch.Tensor, n_neg: torch.Tensor) -> dict[str, float]:
    """``last_stats``: mean active positives and negatives per query, share of non-zero losses."""
    with torch.no_grad():
        stats = torch.stack(
            [n_pos.mean(), n_neg.mean(), (per_query.detach() > 0).to(n_pos.dtype).mean()]
        ).tolist()
    return {"active_pos": stats[0], "active_neg": stats[1], "nonzero_frac": stats[2]}


def ranked_list_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    ref_emb: torch.Tensor | None = None,
    ref_labels: torch.Tensor | None = None,
    *,
    self_index: torch.Tensor | None = None,
    indices: torch.Tensor | None = None,
    ref_indices: torch.Tensor | None = None,
    margin: float = 0.4,
    alpha: float | None = None,
    Tn: float = 10.0,
    Tp: float = 0.0,
    lam: float = 1.0,
    normalize: bool = True,
    gradient: str = "paper",
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Functional form of :class:`RankedListLoss`; see the class for every argument."""
    hp = check_options(margin, alpha, Tn, Tp, lam, normalize, gradient, reduction, chunk_size)
    loss, _ = compute_ranked_list_loss(
        embeddings, labels, hp, ref_emb, ref_labels, self_index,
        indices=indices, ref_indices=ref_indices,
    )  # fmt: skip
    return loss


class _Validated:
    """An option of :class:`RankedListLoss` as an attribute: reading it gives the value in use,
    setting it validates the options with the new value (a bad one raises and changes nothing).

    A plain attribute would skip the checks, and would keep the constructor's ``1 + margin / 2``
    for an ``alpha`` given as ``None`` after a change of ``margin``.
    """

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, loss: RankedListLoss | None, owner: type | None = None) -> object:
        if loss is None:
            return self
        return getattr(loss._hp, self.name)

    def __set__(self, loss: RankedListLoss, value: object) -> None:
        loss._configure(**{self.name: value})


class RankedListLoss(nn.Module):
    """Ranked List Loss (Wang et al., CVPR 2019; TPAMI 2021) with the paper's semantics.

    Args:
        margin: m >= 0; positives must lie within ``alpha - m`` of the query.
        alpha: > 0, the negative boundary; ``None`` means ``1 + margin / 2``, following later
            changes of ``margin``.
        Tn: >= 0, temperature of the negative weights ``exp(Tn (alpha - d))``.
        Tp: >= 0, temperature of the positive weights ``exp(Tp (d - (alpha - m)))`` (0: plain mean).
        lam: >= 0, weight of the negative term: ``L = L_P + lam L_N``.
        normalize: L2-normalise the embeddings (and the reference set) first.
        gradient: ``"paper"``: weights are constants and the gallery (reference set) is detached,
            each query receives the gradient of its own ranked list (fast, chunked, the default);
            ``"autograd"``: every quantity is differentiated, gallery and weights included.
        reduction: ``"mean"`` over all N queries (paper), ``"none"`` (per-query vector of
            ``L_P + lam L_N``) or ``"official"`` (the released code:
            ``sum_i q_i (0.5 L_P + 0.5 lam L_N)`` with
            ``q_i = (S+_i + S-_i) / sum_k (S+_k + S-_k)``, S the raw weight sums; in paper mode
            the q_i are constants).
        chunk_size: query rows processed at once. ``None``: automatic for ``"paper"`` (about 16 MB
            work buffers), no chunking for ``"autograd"``; with ``"autograd"`` a chunk size turns on
            gradient checkpointing per chunk.

    ``forward(embeddings, labels, ref_emb=None, ref_labels=None, self_index=None, indices=None,
    ref_indices=None)``: queries are the rows of ``embeddings`` (N x D, any float dtype;
    float16/bfloat16 are computed in float32), ranked against ``ref_emb`` (M x D) or against the
    batch itself. The self pair is excluded by index: the diagonal when ``ref_emb`` is None or is
    ``embeddings``, else the rows given by ``self_index`` (LongTensor of length N, -1 for none;
    distributed training passes ``start + arange(n_local)``, ``start`` being the number of rows
    gathered from the lower ranks, whose batches may differ in size). The returned loss is float32
    (float64 for float64 input), whatever the enclosing autocast region: the loss turns autocast
    off for itself. After each call ``last_stats`` holds the mean numbers of active positives and
    negatives per query and the fraction of queries with a non-zero loss
    (:meth:`loss_and_stats` returns them instead).

    ``indices`` (LongTensor of length N, the samples' dataset indices) and ``ref_indices`` (one
    per reference row; default ``indices`` when the batch is its own reference set): an image is
    never its own positive, so the pairs of two copies of one sample (the P x K sampler repeats
    the images of a class smaller than K, each copy augmented differently) are excluded like the
    self pair. Without them every other row is a candidate.

    Every argument is also an attribute that may be changed later (``loss_fn.margin = 0.2``); a new
    value is validated like the constructor's, and a bad one raises and changes nothing.
    """

    takes_indices = True  # forward accepts the samples' dataset indices (``indices=``)

    def __init__(
        self,
        margin: float = 0.4,
        alpha: float | None = None,
        Tn: float = 10.0,
        Tp: float = 0.0,
        lam: float = 1.0,
        normalize: bool = True,
        gradient: str = "paper",
        reduction: str = "mean",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self._options: dict[str, object] = {}  # as given: an alpha of None stays None
        self._hp: HyperParameters
        self._configure(
            margin=margin, alpha=alpha, Tn=Tn, Tp=Tp, lam=lam, normalize=normalize,
            gradient=gradient, reduction=reduction, chunk_size=chunk_size,
        )  # fmt: skip
        self.last_stats: dict[str, float] = {}

    def _configure(self, **changes: object) -> None:
        """Validate the options with ``changes`` applied, then store them (none on error)."""
        options = {**self._options, **changes}
        hp = check_options(**options)
        # An alpha given as None stays None, so that it keeps following the margin.
        options.update(margin=hp.margin, Tn=hp.Tn, Tp=hp.Tp, lam=hp.lam)
        if options["alpha"] is not None:
            options["alpha"] = hp.alpha
        self._options, self._hp = options, hp

    # The options: validated on every change (see _Validated).
    margin = _Validated("m >= 0: positives must lie within ``alpha - margin`` of the query.")
    alpha = _Validated(
        "The negative boundary in use: the given value, or ``1 + margin / 2`` if it was None."
    )
    Tn = _Validated("Temperature of the negative weights.")
    Tp = _Validated("Temperature of the positive weights.")
    lam = _Validated("Weight of the negative term.")
    normalize = _Validated(
        "Whether the embeddings (and the reference set) are L2-normalised first."
    )
    gradient = _Validated('``"paper"`` or ``"autograd"``.')
    reduction = _Validated('``"mean"``, ``"none"`` or ``"official"``.')
    chunk_size = _Validated("Query rows processed at once (``None``: automatic).")

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_emb: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
        self_index: torch.Tensor | None = None,
        indices: torch.Tensor | None = None,
        ref_indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss of ``embeddings`` ranked against ``ref_emb`` (default: the batch itself)."""
        loss, self.last_stats = self.loss_and_stats(
            embeddings, labels, ref_emb, ref_labels, self_index,
            indices=indices, ref_indices=ref_indices,
        )  # fmt: skip
        return loss

    def loss_and_stats(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_emb: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
        self_index: torch.Tensor | None = None,
        *,
        indices: torch.Tensor | None = None,
        ref_indices: torch.Tensor | None = None,
        excluded: Pairs | None = None,
        memory_gallery: bool = False,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``forward``'s loss and the statistics it stores in ``last_stats``, returned instead of
        stored: for a loss built on this one (a memory bank's), which keeps statistics of its own.

        Besides ``forward``'s arguments: ``excluded``, further ``(query rows, reference rows)``
        pairs left out of the ranked lists (long tensors on the device, sorted by query row; not
        together with ``indices``), and ``memory_gallery``: ``ref_emb`` is a batch + memory
        gallery whose rows are kept as the loss uses them (L2-normalised when it normalises),
        most of them trivial for any query; with ``gradient="paper"`` they are not checked or
        normalised again, and each chunk of queries is ranked against its candidate rows only.
        """
        return compute_ranked_list_loss(
            embeddings, labels, self._hp, ref_emb, ref_labels, self_index,
            indices=indices, ref_indices=ref_indices, excluded=excluded,
            memory_gallery=memory_gallery,
        )  # fmt: skip

    def extra_repr(self) -> str:
        alpha = f"{self.alpha} (1 + margin/2)" if self._options["alpha"] is None else self.alpha
        return (
            f"margin={self.margin}, alpha={alpha}, Tn={self.Tn}, Tp={self.Tp}, "
            f"lam={self.lam}, normalize={self.normalize}, gradient={self.gradient!r}, "
            f"reduction={self.reduction!r}, chunk_size={self.chunk_size}"
        )
