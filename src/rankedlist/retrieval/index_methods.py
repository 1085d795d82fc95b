"""How an index searches: exact, or approximate with faiss (an inverted file or an HNSW graph).

Three methods, all by inner product on L2-normalised rows (= cosine similarity):

* ``exact``: every row is compared (faiss ``IndexFlatIP`` through
  :func:`rankedlist.evaluation.nearest_neighbors`, ties broken by the lower row), so the index
  answers exactly what the evaluation measured. Nothing beyond ``embeddings.npy`` is stored.
* ``ivf``: ``IndexIVFFlat``. k-means splits the rows into ``nlist`` lists; a query scans the
  ``nprobe`` lists whose centroids are most similar. ``nlist`` is the power of two at or above
  sqrt(N), which balances the two costs of a query (nlist centroid comparisons, about
  nprobe * N / nlist row comparisons), lowered while a list would get fewer than 39 training
  points (faiss's minimum for k-means). The centroids are trained on ``training_sample`` =
  min(N, 64 * nlist) rows drawn with a fixed seed, in 10 k-means iterations. Rows are stored
  uncompressed, so found similarities are exact; only rows in unprobed lists are missed.
  Default ``nprobe``: max(8, nlist / 64), at most nlist.
* ``hnsw``: ``IndexHNSWFlat``, a navigable small-world graph with ``M`` = 32 links per node
  (2M = 64 on the bottom level), built with ``ef_construction`` = 100 (see
  :data:`HNSW_EF_CONSTRUCTION`); a query explores ``ef`` candidates (default 64, never fewer
  than k).

``auto`` means exact below :data:`AUTO_EXACT_BELOW` rows and ivf from there (see that constant
for why). :class:`SearchMethod` holds the method, its parameters (what ``meta.json`` records
under ``search_method``) and the faiss index; :meth:`SearchMethod.search` returns exactly ``k``
neighbours per query (rows an approximate search left unfilled are completed exactly).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "AUTO_EXACT_BELOW",
    "METHODS",
    "SearchMethod",
    "default_nlist",
    "default_nprobe",
    "resolve_method",
]

METHODS = ("exact", "ivf", "hnsw")
#: ``auto`` builds an exact index below this many rows. An exact query scans every row: 6.5 ms
#: at SOP's 60,502 x 512 on 2 cores (benchmarks/index_speed.py), so about 25 ms at 250,000, quick
#: enough for interactive search with no training, no build step and no loss of recall. Below
#: that size the approximate methods also gain less (ivf's default 8x at SOP's size); from there
#: the gain grows with N (ivf's default: 9-40x at 500,000 rows with recall@10 of 1.0).
AUTO_EXACT_BELOW = 250_000
IVF_MIN_POINTS_PER_LIST = 39  # faiss warns below this many training points per centroid
IVF_TRAIN_POINTS_PER_LIST = 64
IVF_KMEANS_ITERATIONS = 10
HNSW_M = 32
#: Candidates kept while inserting a node; its links are chosen among them, so a value below
#: 2 * M (faiss's default 40) cannot fill a new node's 2M bottom-level links. On clustered data
#: (benchmarks/index_speed.py, ef 64) 40 gave recall@10 of 0.79-0.92 (500k x 512, 500k x 128,
#: 200k x 128) and 0.957 at SOP's size; 100 gives 0.974-0.9998 on the same sets, for about twice
#: the build time (500k x 512: 128 s instead of 60 s on 2 cores). Memory depends on M alone.
HNSW_EF_CONSTRUCTION = 100
HNSW_EF_SEARCH = 64
_FAISS_CLASS = {"exact": "IndexFlatIP", "ivf": "IndexIVFFlat", "hnsw": "IndexHNSWFlat"}
# The build parameters each method accepts, and its search parameter.
_BUILD_PARAMS = {
    "exact": (),
    "ivf": ("nlist", "nprobe", "training_sample", "seed"),
    "hnsw": ("M", "ef_construction", "ef"),
}
SEARCH_PARAM = {"ivf": "nprobe", "hnsw": "ef"}


def resolve_method(method: str, num_rows: int) -> str:
    """``method`` checked; ``"auto"`` becomes exact below :data:`AUTO_EXACT_BELOW` rows, else
    ivf."""
    if method == "auto":
        return "exact" if num_rows < AUTO_EXACT_BELOW else "ivf"
    if method not in METHODS:
        raise ValueError(
            f"unknown index method {method!r}: choose exact, ivf, hnsw or auto (exact below "
            f"{AUTO_EXACT_BELOW:,} items, ivf from there)"
        )
    return method


def default_nlist(num_rows: int) -> int:
    """The power of two at or above sqrt(N), lowered until each list has 39 training points."""
    nlist = 2 ** math.ceil(math.log2(max(math.sqrt(num_rows), 1.0)))
    while nlist > 1 and num_rows < IVF_MIN_POINTS_PER_LIST * nlist:
        nlist //= 2
    return nlist


def default_nprobe(nlist: int) -> int:
    """Lists scanned per query by default: nlist / 64, at least 8, at most nlist."""
    return min(nlist, max(8, nlist // 64))


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_params(method: str, params: dict[str, Any]) -> None:
    wrong = [p for p in params if params[p] is not None and p not in _BUILD_PARAMS[method]]
    if wrong:
        allowed = ", ".join(_BUILD_PARAMS[method]) or "none"
        raise ValueError(
            f"{wrong[0]} does not apply to the {method} index method (its parameters: "
            f"{allowed}); leave it out or choose the method it belongs to "
            f"({_owner(wrong[0])})"
        )


def _owner(param: str) -> str:
    owners = [m for m, names in _BUILD_PARAMS.items() if param in names]
    return " or ".join(owners) if owners else "no method takes it"


class SearchMethod:
    """One index method, its parameters and (for ivf and hnsw) its faiss index.

    Build one with :meth:`build`, read one with :meth:`read`. ``params`` is what ``meta.json``
    records: the method, the faiss class, the build parameters and the default search setting.
    """

    def __init__(self, name: str, params: dict[str, Any], index: Any = None) -> None:
        self.name = name
        self.params = dict(params)
        self.index = index

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.params.items() if k not in ("method", "faiss_index")}
        return f"SearchMethod({self.name!r}, {shown})"

    @property
    def approximate(self) -> bool:
        return self.name != "exact"

    # ------------------------------------------------------------------ build

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        method: str = "auto",
        *,
        nlist: int | None = None,
        nprobe: int | None = None,
        training_sample: int | None = None,
        seed: int | None = None,
        M: int | None = None,  # noqa: N803 - faiss's and the HNSW paper's name
        ef_construction: int | None = None,
        ef: int | None = None,
    ) -> SearchMethod:
        """Build ``method`` over ``embeddings`` (N x D, float32, L2-normalised rows)."""
        n, d = embeddings.shape
        name = resolve_method(method, n)
        given = dict(
            nlist=nlist,
            nprobe=nprobe,
            training_sample=training_sample,
            seed=seed,
            M=M,
            ef_construction=ef_construction,
            ef=ef,
        )
        _check_params(name, given)
        params: dict[str, Any] = {"method": name, "faiss_index": _FAISS_CLASS[name]}
        if name == "exact":
            return cls(name, params)
        import faiss

        params["faiss_version"] = faiss.__version__
        if name == "ivf":
            index = cls._build_ivf(embeddings, params, nlist, nprobe, training_sample, seed)
        else:
            m = HNSW_M if M is None else _positive_int("M", M)
            efc = (
                HNSW_EF_CONSTRUCTION
                if ef_construction is None
                else _positive_int("ef_construction", ef_construction)
            )
            params.update(
                M=m,
                ef_construction=efc,
                ef=HNSW_EF_SEARCH if ef is None else _positive_int("ef", ef),
            )
            index = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = efc
            index.hnsw.efSearch = params["ef"]
            index.add(embeddings)
        return cls(name, params, index)

    @staticmethod
    def _build_ivf(
        embeddings: np.ndarray,
        params: dict[str, Any],
        nlist: int | None,
        nprobe: int | None,
        training_sample: int | None,
        seed: int | None,
    ) -> Any:
        import faiss

        n, d = embeddings.shape
        nlist = default_nlist(n) if nlist is None else _positive_int("nlist", nlist)
        if nlist > n:
            raise ValueError(f"nlist {nlist} is more than the {n} items to index; lower it")
        sample = (
            min(n, IVF_TRAIN_POINTS_PER_LIST * nlist)
            if training_sample is None
            else min(n, _positive_int("training_sample", training_sample))
        )
        if sample < min(n, IVF_MIN_POINTS_PER_LIST * nlist):
            raise ValueError(
                f"training_sample {sample} is too small for {nlist} lists: k-means needs at "
                f"least {IVF_MIN_POINTS_PER_LIST} points per list "
                f"({IVF_MIN_POINTS_PER_LIST * nlist}); raise it or lower nlist"
            )
        nprobe = default_nprobe(nlist) if nprobe is None else _positive_int("nprobe", nprobe)
        if nprobe > nlist:
            raise ValueError(f"nprobe {nprobe} is more than the index's {nlist} lists; lower it")
        seed = 0 if seed is None else int(seed)
        params.update(
            nlist=nlist,
            nprobe=nprobe,
            training_sample=sample,
            seed=seed,
            kmeans_iterations=IVF_KMEANS_ITERATIONS,
            trained_on_items=n,
        )
        rows = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = IVF_KMEANS_ITERATIONS
        index.cp.seed = seed
        index.cp.max_points_per_centroid = max(256, -(-sample // nlist))  # no re-subsampling
        index.cp.min_points_per_centroid = 1  # checked above; faiss would print a warning
        index.train(np.ascontiguousarray(embeddings[rows]))
        index.nprobe = nprobe  # (faiss's Python wrapper keeps the quantizer alive)
        index.add(embeddings)
        return index

    # ------------------------------------------------------------------ use

    def add(self, embeddings: np.ndarray) -> None:
        """Append rows to the faiss index (ivf: into the trained lists; hnsw: into the graph)."""
        if self.index is not None:
            self.index.add(np.ascontiguousarray(embeddings, dtype=np.float32))

    def search_setting(self, nprobe: int | None = None, ef: int | None = None) -> dict[str, int]:
        """The search parameter to use: the given one (checked) or the index's default."""
        for option, value in (("nprobe", nprobe), ("ef", ef)):
            if value is not None and SEARCH_PARAM.get(self.name) != option:
                owner = "ivf" if option == "nprobe" else "hnsw"
                raise ValueError(
                    f"{option} applies to an {owner} index, but this index searches with the "
                    f"{self.name} method; leave {option} out"
                    + (
                        ""
                        if self.name == "exact"
                        else f" (this one takes {SEARCH_PARAM[self.name]})"
                    )
                    + f", or rebuild the index with method {owner}"
                )
        if self.name == "ivf":
            value = self.params["nprobe"] if nprobe is None else _positive_int("nprobe", nprobe)
            if value > self.params["nlist"]:
                raise ValueError(
                    f"nprobe {value} is more than the index's {self.params['nlist']} lists; "
                    f"pass at most {self.params['nlist']} (which scans every list)"
                )
            return {"nprobe": value}
        if self.name == "hnsw":
            return {"ef": self.params["ef"] if ef is None else _positive_int("ef", ef)}
        return {}

    def search_raw(
        self, queries: np.ndarray, k: int, setting: dict[str, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The faiss search: ``(similarities, rows)``, (Q, k); a row is -1 where the approximate
        search found fewer than k rows (too few in the probed lists)."""
        import faiss

        # Set on the index, not passed as search(params=...): importing
        # faiss.contrib.torch_utils (pytorch-metric-learning does) replaces search() with a
        # wrapper that takes no params.
        if self.name == "ivf":
            faiss.extract_index_ivf(self.index).nprobe = setting["nprobe"]
        else:
            self.index.hnsw.efSearch = max(setting["ef"], k)
        sims, rows = self.index.search(np.ascontiguousarray(queries), k)
        return sims, rows

    def neighbors(
        self,
        queries: np.ndarray,
        gallery: np.ndarray,
        k: int,
        setting: dict[str, int],
        self_rows: np.ndarray | None = None,
        complete: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The approximate ``k`` nearest rows of each query, ordered by (similarity descending,
        row ascending).

        Args:
            queries: (Q, D) float32 normalised rows.
            gallery: the indexed rows (for completing unfilled lists exactly).
            k: neighbours per query (at most the searchable rows).
            setting: from :meth:`search_setting`.
            self_rows: ``self_rows[i]`` is left out of query ``i``'s list (the index searched
                with its own rows).
            complete: fill the places the approximate search left empty (row -1, which an ivf
                index with a small nprobe can leave) from an exact search of those queries;
                without it they stay -1 with similarity -inf.
        """
        n = self.index.ntotal
        kk = min(k + (self_rows is not None), n)
        sims, rows = self.search_raw(queries, kk, setting)
        sims = np.where(rows < 0, -np.inf, sims).astype(np.float32)
        if self_rows is not None:
            is_self = rows == self_rows[:, None]
            is_self[~is_self.any(1), -1] = True  # own row not found: drop the last place
            keep = ~is_self
            sims = sims[keep].reshape(len(rows), kk - 1)
            rows = rows[keep].reshape(len(rows), kk - 1)
        sims, rows = sims[:, :k], rows[:, :k]
        order = np.lexsort((np.where(rows < 0, n, rows), -sims), axis=-1)
        sims, rows = np.take_along_axis(sims, order, 1), np.take_along_axis(rows, order, 1)
        missing = np.flatnonzero((rows < 0).any(1))
        if complete and missing.size:
            import torch

            from rankedlist.evaluation.nearest_neighbors import faiss_search

            own = None if self_rows is None else torch.from_numpy(self_rows[missing])
            fs, fr = faiss_search(
                torch.from_numpy(np.ascontiguousarray(queries[missing])),
                torch.from_numpy(np.ascontiguousarray(gallery)),
                k,
                own,
            )
            sims[missing], rows[missing] = fs.numpy(), fr.numpy()
        return sims, rows.astype(np.int64)

    # ------------------------------------------------------------------ files

    def write(self, path: Path) -> None:
        """Write the faiss index with faiss's own writer (and fsync it)."""
        import faiss

        faiss.write_index(self.index, os.fspath(path))
        with open(path, "rb+") as fh:
            os.fsync(fh.fileno())

    @classmethod
    def from_meta(
        cls, params: dict[str, Any] | None, path: Path, num_rows: int, dim: int, fix: str
    ) -> SearchMethod:
        """The method recorded in ``meta.json`` (``None``: an exact index of format 1), with its
        faiss index read from ``path`` and checked against the rest of the index."""
        if params is None:
            return cls("exact", {"method": "exact", "faiss_index": _FAISS_CLASS["exact"]})
        name = params.get("method")
        if name not in METHODS:
            raise ValueError(
                f"{path.parent / 'meta.json'} names an unknown search_method {name!r}: it is "
                f"damaged or from a newer rankedlist; {fix}"
            )
        wanted = {"ivf": ("nlist", "nprobe"), "hnsw": ("M", "ef")}.get(name, ())
        bad = [
            p
            for p in wanted
            if isinstance(params.get(p), bool) or not isinstance(params.get(p), int)
        ]
        if bad:
            raise ValueError(
                f"{path.parent / 'meta.json'} has no valid search_method {bad[0]}: it is damaged "
                f"or was edited by hand; {fix}"
            )
        if name == "exact":
            return cls(name, params)
        if not path.is_file():
            raise FileNotFoundError(
                f"index folder {path.parent} has no {path.name} although its meta.json says it "
                f"searches with the {name} method ({fix})"
            )
        import faiss

        try:
            index = faiss.read_index(os.fspath(path))
        except RuntimeError as err:  # faiss's C++ errors: a truncated or foreign file
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else "unreadable"
            raise ValueError(
                f"{path} is truncated or corrupt (faiss cannot read it: {reason}); {fix}"
            ) from err
        expected = getattr(faiss, _FAISS_CLASS[name])
        problem = None
        if not isinstance(index, expected):
            problem = f"holds a {type(index).__name__}, not the {_FAISS_CLASS[name]} of {name}"
        elif index.metric_type != faiss.METRIC_INNER_PRODUCT:
            problem = "does not search by inner product"
        elif index.d != dim:
            problem = f"holds {index.d}-dimensional vectors, the index {dim}-dimensional ones"
        elif index.ntotal != num_rows:
            problem = f"holds {index.ntotal} vectors but the index has {num_rows} items"
        elif name == "ivf" and index.nlist != params["nlist"]:
            problem = f"has {index.nlist} lists but meta.json says nlist {params['nlist']}"
        if problem:
            raise ValueError(f"{path} {problem}: it is from another index or damaged; {fix}")
        return cls(name, params, index)
