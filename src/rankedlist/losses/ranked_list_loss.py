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

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from rankedlist.losses._autograd_rows import autograd_rows
from rankedlist.losses._excluded_pairs import copy_pairs, pairs_in_rows
from rankedlist.losses._inputs import (
    _check_embeddings,
    _check_indices,
    _check_labels,
    _check_options,
    _check_self_index,
    _float_labels,
)
from rankedlist.losses._kernels import (
    HyperParameters,
    PaperRankedList,
    auto_chunk_rows,
    autocast_disabled,
    official_weights,
)

__all__ = ["RankedListLoss", "ranked_list_loss"]


def _ranked_list_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    ref_emb: torch.Tensor | None,
    ref_labels: torch.Tensor | None,
    self_index: torch.Tensor | None,
    hp: HyperParameters,
    normalize: bool,
    gradient: str,
    reduction: str,
    chunk_size: int | None,
    excluded: tuple[torch.Tensor, torch.Tensor] | None = None,
    memory_gallery: bool = False,
    indices: torch.Tensor | None = None,
    ref_indices: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss and its statistics; the options are already validated.

    ``excluded``: further ``(query rows, reference rows)`` pairs left out of the ranked lists,
    rows sorted (a memory bank's copies of the queries); long tensors on the device.
    ``indices``/``ref_indices``: the dataset indices of the queries and of the reference rows
    (default: ``indices`` when the reference set is the batch); the pairs of one sample are
    excluded, as the self pair is. Not together with ``excluded``.
    ``memory_gallery``: ``ref_emb`` is a batch + memory gallery; with ``gradient="paper"`` its
    rows are already checked and normalised as the loss uses them, and most of them are trivial,
    so each chunk of queries is ranked against its candidate columns only.
    """
    x = _check_embeddings("embeddings", embeddings, normalize)
    # Immune to an enclosing autocast: it would run the distance and gradient products in
    # float16/bfloat16, and the boundaries alpha, alpha - m and the weights exp(Tn (alpha - d))
    # need the float32 distances. (Checkpointed chunks recompute under the same, disabled state.)
    with autocast_disabled(x.device):
        return _loss_and_stats(
            x, labels, ref_emb, ref_labels, self_index, hp, normalize, gradient, reduction,
            chunk_size, excluded, memory_gallery and gradient == "paper", indices, ref_indices,
        )  # fmt: skip


def _loss_and_stats(
    x: torch.Tensor,
    labels: torch.Tensor,
    ref_emb: torch.Tensor | None,
    ref_labels: torch.Tensor | None,
    self_index: torch.Tensor | None,
    hp: HyperParameters,
    normalize: bool,
    gradient: str,
    reduction: str,
    chunk_size: int | None,
    excluded: tuple[torch.Tensor, torch.Tensor] | None,
    ready: bool,
    indices: torch.Tensor | None = None,
    ref_indices: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """:func:`_ranked_list_loss` once the embeddings ``x`` are checked, with autocast off;
    ``ready``: ``ref_emb`` is a paper-mode memory gallery (checked, normalised, compacted)."""
    n = x.shape[0]
    if n == 0:
        raise ValueError("embeddings must contain at least one row (an empty batch has no loss)")
    device = x.device
    labels = _check_labels("labels", labels, n, "embeddings", device)

    self_ref = ref_emb is None or ref_emb is x
    if ref_emb is None:
        if ref_labels is not None:
            raise ValueError("ref_labels was given without ref_emb; pass both or neither")
        ref_labels = labels
    else:
        if not ready:  # a memory gallery's rows were checked as batch rows already
            _check_embeddings("ref_emb", ref_emb, normalize and not self_ref)
        if ref_emb.device != device:
            raise ValueError(f"ref_emb is on {ref_emb.device} but embeddings on {device}")
        if ref_emb.shape[1] != x.shape[1]:
            raise ValueError(
                f"ref_emb has {ref_emb.shape[1]} features but embeddings {x.shape[1]}; "
                "they must match"
            )
        if ref_labels is None:
            if not self_ref:
                raise ValueError("ref_emb was given without ref_labels; pass both")
            ref_labels = labels
        ref_labels = _check_labels("ref_labels", ref_labels, ref_emb.shape[0], "ref_emb", device)
    m = n if self_ref else ref_emb.shape[0]
    if self_index is not None:
        self_cols = _check_self_index(self_index, n, m, device)
    else:
        self_cols = None  # the diagonal when ranking against the batch itself, else nothing
    if indices is not None or ref_indices is not None:
        excluded = _copies(indices, ref_indices, n, m, self_ref, self_cols, device)

    # float16/bfloat16 are computed in float32 (exp(Tn alpha) alone exceeds float16's range);
    # the cast is part of the graph, so gradients come back in the input dtype.
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    yq, yg = _float_labels(labels, ref_labels, dtype)

    official = reduction == "official"
    kP = 0.5 if official else 1.0
    kN = (0.5 if official else 1.0) * hp.lam

    if gradient == "paper":
        g = None
        if not self_ref:
            with torch.no_grad():  # the gallery is detached in the paper's semantics
                g = ref_emb.detach().to(dtype)
                g = (F.normalize(g, dim=1) if normalize and not ready else g).contiguous()
        if chunk_size is not None:
            rows = chunk_size
        else:
            rows = auto_chunk_rows(n, m, device, dtype if ready else None)
        per_query, n_pos, n_neg, log_s_pos, log_s_neg = PaperRankedList.apply(
            x.to(dtype), g, yq, yg, self_cols, excluded, hp, kP, kN, rows, normalize, ready
        )
    else:
        xq = x.to(dtype)
        xq = F.normalize(xq, dim=1) if normalize else xq
        if self_ref:
            g = xq
            if self_cols is None:
                self_cols = torch.arange(n, device=device)
        else:
            g = ref_emb.to(dtype)
            g = F.normalize(g, dim=1) if normalize else g
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
        per_query = kP * loss_pos + kN * loss_neg

    if reduction == "none":
        loss = per_query
    elif reduction == "mean":
        # Mean over the local queries, so that averaging gradients across processes gives the
        # single-process gradient.
        loss = per_query.mean()
    else:
        q = official_weights(log_s_pos, log_s_neg)
        if gradient == "paper":
            q = q.detach()
        loss = (q * per_query).sum()

    with torch.no_grad():
        stats = torch.stack(
            [n_pos.mean(), n_neg.mean(), (per_query.detach() > 0).to(n_pos.dtype).mean()]
        ).tolist()
    return loss, {"active_pos": stats[0], "active_neg": stats[1], "nonzero_frac": stats[2]}


def _copies(
    indices: torch.Tensor | None,
    ref_indices: torch.Tensor | None,
    n: int,
    m: int,
    self_ref: bool,
    self_cols: torch.Tensor | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (query, reference) pairs of one sample other than the self pairs, or None."""
    if indices is None:
        raise ValueError(
            "ref_indices was given without indices; pass the dataset indices of the queries too"
        )
    ids = _check_indices("indices", indices, n, device)
    if ref_indices is None:
        if not self_ref:
            raise ValueError(
                "indices were given with ref_emb but without ref_indices; pass the dataset index "
                "of every reference row too (ref_indices)"
            )
        ref_ids = ids
    else:
        ref_ids = _check_indices("ref_indices", ref_indices, m, device)
    if self_cols is None and self_ref:
        self_cols = torch.arange(n, device=device)
    return copy_pairs(ids, ref_ids, self_cols)


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
    hp = _check_options(margin, alpha, Tn, Tp, lam, normalize, gradient, reduction, chunk_size)
    loss, _ = _ranked_list_loss(
        embeddings, labels, ref_emb, ref_labels, self_index, hp, normalize, gradient, reduction,
        chunk_size, indices=indices, ref_indices=ref_indices,
    )  # fmt: skip
    return loss


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

    ``forward(embeddings, labels, ref_emb=None, ref_labels=None, self_index=None)``: queries are
    the rows of ``embeddings`` (N x D, any float dtype; float16/bfloat16 are computed in float32),
    ranked against ``ref_emb`` (M x D) or against the batch itself. The self pair is excluded by
    index: the diagonal when ``ref_emb`` is None or is ``embeddings``, else the rows given by
    ``self_index`` (LongTensor of length N, -1 for none; distributed training passes
    ``rank * n_local + arange(n_local)``). The returned loss is float32 (float64 for float64
    input), whatever the enclosing autocast region: the loss turns autocast off for itself. After
    each call ``last_stats`` holds the mean numbers of active positives and negatives per query and
    the fraction of queries with a non-zero loss.

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
        self._options: dict[str, object] = {}
        self._hp: HyperParameters
        self._configure(
            margin=margin, alpha=alpha, Tn=Tn, Tp=Tp, lam=lam, normalize=normalize,
            gradient=gradient, reduction=reduction, chunk_size=chunk_size,
        )  # fmt: skip
        self.last_stats: dict[str, float] = {}

    def _configure(self, **changes: object) -> None:
        """Validate the options with ``changes`` applied, then store them (none on error)."""
        options = {**self._options, **changes}
        hp = _check_options(**options)
        # An alpha given as None stays None, so that it keeps following the margin.
        options.update(margin=hp.margin, Tn=hp.Tn, Tp=hp.Tp, lam=hp.lam)
        if options["alpha"] is not None:
            options["alpha"] = hp.alpha
        self._options, self._hp = options, hp

    # The options are properties so that a change is validated at once and alpha = None keeps
    # meaning 1 + margin / 2 (a plain attribute would keep the constructor's margin).

    @property
    def margin(self) -> float:
        """m >= 0: positives must lie within ``alpha - margin`` of the query."""
        return self._hp.margin

    @margin.setter
    def margin(self, value: float) -> None:
        self._configure(margin=value)

    @property
    def alpha(self) -> float:
        """The negative boundary in use: the given value, or ``1 + margin / 2`` if it was None."""
        return self._hp.alpha

    @alpha.setter
    def alpha(self, value: float | None) -> None:
        self._configure(alpha=value)

    @property
    def Tn(self) -> float:
        """Temperature of the negative weights."""
        return self._hp.Tn

    @Tn.setter
    def Tn(self, value: float) -> None:
        self._configure(Tn=value)

    @property
    def Tp(self) -> float:
        """Temperature of the positive weights."""
        return self._hp.Tp

    @Tp.setter
    def Tp(self, value: float) -> None:
        self._configure(Tp=value)

    @property
    def lam(self) -> float:
        """Weight of the negative term."""
        return self._hp.lam

    @lam.setter
    def lam(self, value: float) -> None:
        self._configure(lam=value)

    @property
    def normalize(self) -> bool:
        """Whether the embeddings (and the reference set) are L2-normalised first."""
        return self._options["normalize"]  # type: ignore[return-value]

    @normalize.setter
    def normalize(self, value: bool) -> None:
        self._configure(normalize=value)

    @property
    def gradient(self) -> str:
        """``"paper"`` or ``"autograd"``."""
        return self._options["gradient"]  # type: ignore[return-value]

    @gradient.setter
    def gradient(self, value: str) -> None:
        self._configure(gradient=value)

    @property
    def reduction(self) -> str:
        """``"mean"``, ``"none"`` or ``"official"``."""
        return self._options["reduction"]  # type: ignore[return-value]

    @reduction.setter
    def reduction(self, value: str) -> None:
        self._configure(reduction=value)

    @property
    def chunk_size(self) -> int | None:
        """Query rows processed at once (``None``: automatic)."""
        return self._options["chunk_size"]  # type: ignore[return-value]

    @chunk_size.setter
    def chunk_size(self, value: int | None) -> None:
        self._configure(chunk_size=value)

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
        loss, self.last_stats = _ranked_list_loss(
            embeddings, labels, ref_emb, ref_labels, self_index, self._hp, self.normalize,
            self.gradient, self.reduction, self.chunk_size,
            indices=indices, ref_indices=ref_indices,
        )  # fmt: skip
        return loss

    def _loss_and_stats(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_emb: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
        self_index: torch.Tensor | None,
        excluded: tuple[torch.Tensor, torch.Tensor] | None,
        memory_gallery: bool = False,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``forward`` with further excluded ``(query, reference)`` pairs, for the memory bank
        (see :func:`_ranked_list_loss` for ``memory_gallery``)."""
        return _ranked_list_loss(
            embeddings, labels, ref_emb, ref_labels, self_index, self._hp, self.normalize,
            self.gradient, self.reduction, self.chunk_size, excluded, memory_gallery,
        )  # fmt: skip

    def extra_repr(self) -> str:
        alpha = f"{self.alpha} (1 + margin/2)" if self._options["alpha"] is None else self.alpha
        return (
            f"margin={self.margin}, alpha={alpha}, Tn={self.Tn}, Tp={self.Tp}, "
            f"lam={self.lam}, normalize={self.normalize}, gradient={self.gradient!r}, "
            f"reduction={self.reduction!r}, chunk_size={self.chunk_size}"
        )
