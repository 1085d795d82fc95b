"""rankedlist's index methods as Milvus index types, with the same parameters and defaults as
the faiss ones (:mod:`rankedlist.retrieval.index_methods`), all by inner product on
L2-normalised embeddings (the cosine similarity):

* ``exact`` -> ``FLAT`` (every vector compared);
* ``ivf`` -> ``IVF_FLAT`` with ``nlist`` at build and ``nprobe`` at search;
* ``hnsw`` -> ``HNSW`` with ``M`` and ``efConstruction`` at build and ``ef`` at search.

A Milvus server builds one such index per sealed segment, as Milvus Lite does (segments of at
most 100,000 rows there), so an ivf collection has ``nlist`` lists per segment and a search
probes ``nprobe`` of each segment's lists.
"""

from __future__ import annotations

from typing import Any

from rankedlist.retrieval.index_methods import (
    HNSW_EF_CONSTRUCTION,
    HNSW_EF_SEARCH,
    HNSW_M,
    default_nlist,
    default_nprobe,
    resolve_method,
)

__all__ = [
    "MILVUS_INDEX_TYPE",
    "MILVUS_MAX_TOPK",
    "describe_milvus_method",
    "milvus_index_params",
    "milvus_method_params",
    "milvus_search_params",
    "search_setting",
]

MILVUS_INDEX_TYPE = {"exact": "FLAT", "ivf": "IVF_FLAT", "hnsw": "HNSW"}
#: The largest ``limit`` a Milvus server takes in one search.
MILVUS_MAX_TOPK = 16384
_METHOD_OPTIONS = {"ivf": ("nlist", "nprobe"), "hnsw": ("M", "ef_construction", "ef")}


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
    return int(value)


def milvus_method_params(method: str, num_rows: int, **given: int | None) -> dict[str, Any]:
    """The method (``auto`` resolved by ``num_rows``) and its parameters, as the collection
    records them: ``method``, ``milvus_index``, and ivf's ``nlist``/``nprobe`` or hnsw's
    ``M``/``ef_construction``/``ef`` (the given ones, else the faiss backend's defaults)."""
    name = resolve_method(method, num_rows)
    allowed = _METHOD_OPTIONS.get(name, ())
    for option, value in given.items():
        if value is not None and option not in allowed:
            raise ValueError(
                f"--{option.replace('_', '-')} does not apply to the {name} method; leave it "
                "out or choose the method it belongs to"
            )
    params: dict[str, Any] = {"method": name, "milvus_index": MILVUS_INDEX_TYPE[name]}
    if name == "ivf":
        nlist = given.get("nlist")
        nlist = default_nlist(num_rows) if nlist is None else _positive("nlist", nlist)
        if nlist > 65536:
            raise ValueError(f"--nlist {nlist}: Milvus takes at most 65536 lists")
        nprobe = given.get("nprobe")
        nprobe = default_nprobe(nlist) if nprobe is None else _positive("nprobe", nprobe)
        if nprobe > nlist:
            raise ValueError(f"--nprobe {nprobe} is more than the {nlist} lists; lower it")
        params.update(nlist=nlist, nprobe=nprobe)
    elif name == "hnsw":
        m, efc, ef = given.get("M"), given.get("ef_construction"), given.get("ef")
        params.update(
            M=HNSW_M if m is None else _positive("M", m),
            ef_construction=HNSW_EF_CONSTRUCTION
            if efc is None
            else _positive("ef_construction", efc),
            ef=HNSW_EF_SEARCH if ef is None else _positive("ef", ef),
        )
    return params


def milvus_index_params(params: dict[str, Any]) -> dict[str, Any]:
    """``add_index`` keyword arguments of the vector field for a method's ``params``."""
    build: dict[str, int] = {}
    if params["method"] == "ivf":
        build = {"nlist": params["nlist"]}
    elif params["method"] == "hnsw":
        build = {"M": params["M"], "efConstruction": params["ef_construction"]}
    return {"index_type": params["milvus_index"], "metric_type": "IP", "params": build}


def milvus_search_params(params: dict[str, Any], setting: dict[str, int], k: int) -> dict:
    """``search_params`` for one search: inner product, and ivf's ``nprobe`` or hnsw's ``ef``
    (at least ``k``: Milvus refuses a smaller one)."""
    search: dict[str, int] = {}
    if params["method"] == "ivf":
        search = {"nprobe": setting["nprobe"]}
    elif params["method"] == "hnsw":
        search = {"ef": max(setting["ef"], k)}
    return {"metric_type": "IP", "params": search}


def search_setting(params: dict[str, Any], nprobe: int | None, ef: int | None) -> dict[str, int]:
    """The search parameter to use (the given one, checked, else the collection's default):
    ``{"nprobe": n}``, ``{"ef": n}`` or ``{}``."""
    method = params["method"]
    for option, value, owner in (("nprobe", nprobe, "ivf"), ("ef", ef, "hnsw")):
        if value is not None and method != owner:
            raise ValueError(
                f"--{option} applies to an {owner} collection, but this one searches with the "
                f"{method} method; leave --{option} out"
            )
    if method == "ivf":
        value = params["nprobe"] if nprobe is None else _positive("nprobe", nprobe)
        if value > params["nlist"]:
            raise ValueError(
                f"--nprobe {value} is more than the collection's {params['nlist']} lists; "
                f"pass at most {params['nlist']}"
            )
        return {"nprobe": value}
    if method == "hnsw":
        return {"ef": params["ef"] if ef is None else _positive("ef", ef)}
    return {}


def describe_milvus_method(params: dict[str, Any]) -> str:
    """One phrase: ``exact (Milvus FLAT)``, ``ivf (Milvus IVF_FLAT): 1024 lists, nprobe 16``."""
    head = f"{params['method']} (Milvus {params['milvus_index']})"
    if params["method"] == "ivf":
        return f"{head}: {params['nlist']} lists, nprobe {params['nprobe']}"
    if params["method"] == "hnsw":
        return f"{head}: M {params['M']}, efConstruction {params['ef_construction']}, ef " + str(
            params["ef"]
        )
    return head
