"""The actions of ``rankedlist index``: build, add, search (their parser and error handling are
in :mod:`rankedlist.cli.index`). Each takes the command line's values as keyword arguments (the
option ``--x-y`` is ``x_y``), prints its result and returns 0, or raises an error whose message
is one line for the user, in the command line's words."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

from rankedlist.retrieval.milvus_actions import (
    check_backend_options,
    milvus_add_command,
    milvus_build_command,
    open_milvus_for_search,
)

__all__ = ["index_add", "index_build", "index_search", "os_reason"]

# The build options of each approximate method (the CLI spelling).
_METHOD_OPTIONS = {"nlist": "ivf", "nprobe": "ivf", "ef": "hnsw"}
# An ivf index whose items outnumber those its centroids were trained on by this factor should
# be rebuilt: the lists grow unevenly and a fixed nprobe scans a growing share of the index.
_REBUILD_GROWTH = 4


def os_reason(err: OSError) -> str:
    """``strerror: file`` of an errno error (the file may be a temporary one), else the text."""
    if err.strerror and err.filename is not None:
        return f"{err.strerror}: {err.filename}"
    return err.strerror or str(err)


def _describe_method(index: Any) -> str:
    p = index.method_params
    if index.method == "ivf":
        return (
            f"ivf: {p['nlist']} lists, nprobe {p['nprobe']}, centroids trained on "
            f"{p['training_sample']} of {p['trained_on_items']} items"
        )
    if index.method == "hnsw":
        return f"hnsw: M {p['M']}, ef_construction {p['ef_construction']}, ef {p['ef']}"
    return "exact"


def _method_params(method: str, options: dict[str, int | None]) -> dict[str, int]:
    """The method options given on the command line, checked against ``--method`` before any
    image is embedded."""
    from rankedlist.retrieval.index_methods import resolve_method

    resolve_method(method, 0)  # an unknown --method fails here, before any embedding
    given = {o: options[o] for o in _METHOD_OPTIONS if options[o] is not None}
    for option in given:
        owner = _METHOD_OPTIONS[option]
        if method != owner:
            chosen = "the default method auto" if method == "auto" else f"--method {method}"
            raise ValueError(
                f"--{option} is a setting of the {owner} method but the index is built with "
                f"{chosen}; pass --method {owner} with it, or leave --{option} out"
            )
        if given[option] < 1:
            raise ValueError(f"--{option} must be at least 1, got {given[option]}")
    return given


def _check_search_setting(
    index: Any, name: str, nprobe: int | None, ef: int | None
) -> dict[str, int]:
    """``--nprobe`` / ``--ef`` checked against the index's method (one line naming the index)."""
    given = {"nprobe": nprobe, "ef": ef}
    for option, value in given.items():
        if value is None:
            continue
        owner = _METHOD_OPTIONS[option]
        if index.method != owner:
            takes = {"ivf": " (it takes --nprobe)", "hnsw": " (it takes --ef)"}.get(
                index.method, ""
            )
            raise ValueError(
                f"--{option} applies to an {owner} index, but {name} is an "
                f"{index.method} index{takes}; leave --{option} out, or rebuild the index with "
                f"`rankedlist index build --method {owner}`"
            )
    try:
        return index.search_setting(given["nprobe"], given["ef"])
    except ValueError as err:
        raise ValueError(f"{err} ({name})") from err


def index_build(
    images: str,
    out: str | None = None,
    *,
    backend: str = "faiss",
    uri: str | None = None,
    collection: str | None = None,
    checkpoint: str | None = None,
    model: str | None = None,
    labels_from_folders: bool = False,
    method: str = "auto",
    nlist: int | None = None,
    nprobe: int | None = None,
    ef: int | None = None,
    skip_corrupt: bool = False,
    device: str = "auto",
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
) -> int:
    """``rankedlist index build``: embed ``images`` with ``checkpoint`` or ``model`` (an ONNX
    file), save to the folder ``out`` (``backend="faiss"``) or to ``collection`` at ``uri``
    (``backend="milvus"``) with ``method``.

    ``--out`` (or the Milvus address and collection) and the method options are checked first,
    so a bad destination or option fails at once rather than after every image is embedded.
    """
    from rankedlist.retrieval import images_to_index
    from rankedlist.retrieval.index_files import check_index_destination
    from rankedlist.retrieval.index_swap import index_lock

    check_backend_options(backend, out, "--out", uri, collection)
    params = _method_params(method, {"nlist": nlist, "nprobe": nprobe, "ef": ef})
    if backend == "milvus":
        return milvus_build_command(
            images, uri, collection, method, params, checkpoint=checkpoint, model_file=model,
            labels_from_folders=labels_from_folders, skip_corrupt=skip_corrupt, device=device,
            batch_size=batch_size, num_workers=num_workers, progress=progress,
        )  # fmt: skip
    try:
        check_index_destination(out)
    except OSError as err:
        raise type(err)(f"--out: {err}") from err
    # One writer per index: a second build or add of --out is refused at once, naming us.
    with index_lock(out, "index build"):
        index = images_to_index.build_index(
            images,
            checkpoint=checkpoint,
            model_file=model,
            batch_size=batch_size,
            device=device,
            num_workers=num_workers,
            progress=progress,
            skip_corrupt=skip_corrupt,
            labels_from_folders=labels_from_folders,
            method=method,
            **params,
        )
        saved = _save(index, out)
    used = index.meta.get("model_file") or index.meta["checkpoint"]
    print(
        f"indexed {len(index)} images ({index.dim}-d) from {images} with {used} into "
        f"{saved} ({_describe_method(index)})"
    )
    _print_self_retrieval(index)
    return 0


def _save(index: Any, out: str) -> Path:
    try:
        return index.save(out)
    except (FileExistsError, NotADirectoryError):
        raise  # the folder changed since the check: the message says what to do
    except OSError as err:
        raise OSError(
            f"could not write the index to {out} ({os_reason(err)}); free disk space or "
            "choose another --out (a previous index there is unchanged)"
        ) from err


def _print_self_retrieval(index: Any) -> None:
    if index.labels is not None and len(index) > 1:
        metrics = index.evaluate()
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "lone_queries")
        how = "" if index.method == "exact" else f", through the {index.method} index"
        print(f"self-retrieval ({len(index.meta.get('classes', []))} classes{how}): {shown}")


def index_add(
    index: str | None,
    images: str,
    *,
    backend: str = "faiss",
    uri: str | None = None,
    collection: str | None = None,
    checkpoint: str | None = None,
    model: str | None = None,
    allow_other_model: bool = False,
    skip_corrupt: bool = False,
    device: str = "auto",
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
) -> int:
    """``rankedlist index add``: embed ``images`` with the index's model (or ``checkpoint`` /
    ``model``) and append them to the index folder ``index`` (an approximate index keeps its
    structure: nothing is retrained).

    The index's lock is held from the read to the save, so two adds at once cannot both read
    the old index and each save it with only their own images: the second is refused with one
    line naming the index and the process that is adding to it. With ``backend="milvus"`` the
    images go into ``collection`` at ``uri``, all at once or not at all
    (:meth:`~rankedlist.retrieval.milvus_index.MilvusIndex.add`).
    """
    from rankedlist.retrieval import images_to_index
    from rankedlist.retrieval.embedding_index import EmbeddingIndex
    from rankedlist.retrieval.index_files import index_not_found
    from rankedlist.retrieval.index_swap import index_lock, settle_index_folder

    check_backend_options(backend, index, "--index", uri, collection)
    if backend == "milvus":
        return milvus_add_command(
            images, uri, collection, checkpoint=checkpoint, model=model,
            allow_other_model=allow_other_model, skip_corrupt=skip_corrupt, device=device,
            batch_size=batch_size, num_workers=num_workers, progress=progress,
        )  # fmt: skip
    folder = Path(index)
    settle_index_folder(folder)  # an index a killed save left hidden is put back first
    if not folder.is_dir():  # no lock file is made beside a mistyped path
        raise index_not_found(folder)
    with index_lock(folder, "index add"):
        loaded = EmbeddingIndex.load(folder)
        before = len(loaded)
        added = images_to_index.add_images(
            loaded,
            images,
            checkpoint=checkpoint,
            model_file=model,
            batch_size=batch_size,
            device=device,
            num_workers=num_workers,
            progress=progress,
            skip_corrupt=skip_corrupt,
            index_name=index,
            allow_other_model=allow_other_model,
        )
        out = _save(loaded, index)
    print(
        f"added {added} images from {images} to {out}: {before} -> {len(loaded)} items "
        f"({_describe_method(loaded)})"
    )
    trained_on = loaded.method_params.get("trained_on_items")
    if trained_on and len(loaded) > _REBUILD_GROWTH * trained_on:
        warnings.warn(
            f"{out} now holds {len(loaded) / trained_on:.1f} times the items its ivf lists were "
            "trained on; rebuild it with `rankedlist index build` to keep its recall and speed",
            stacklevel=2,
        )
    return 0


def _query_files(queries: list[str]) -> list[Path]:
    from rankedlist.retrieval.embed_images import list_images

    files: list[Path] = []
    for q in queries:
        path = Path(q)
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise ValueError(f"query folder {path} holds no image files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"query image {path} not found")
    return files


def _query_labels(files: list[Path], classes: list[str] | None) -> list[int | None] | None:
    """A query's label is known when its parent folder is one of the index's class names."""
    if not classes:
        return None
    lookup = {c: i for i, c in enumerate(classes)}
    labels = [lookup.get(f.parent.name) for f in files]
    return labels if any(label is not None for label in labels) else None


def index_search(
    index: str | None,
    queries: list[str],
    *,
    backend: str = "faiss",
    uri: str | None = None,
    collection: str | None = None,
    k: int = 10,
    checkpoint: str | None = None,
    model: str | None = None,
    nprobe: int | None = None,
    ef: int | None = None,
    picture: str | None = None,
    json_out: str | None = None,
    allow_other_model: bool = False,
    skip_corrupt: bool = False,
    device: str = "auto",
    batch_size: int = 64,
    progress: bool = True,
) -> int:
    """``rankedlist index search``: print each query's nearest items in the index folder
    ``index`` (and draw them into ``picture``, write them to ``json_out``); a query is an image
    file or a folder of them. With ``backend="milvus"`` the index is ``collection`` at
    ``uri``."""
    from rankedlist.retrieval.embedding_index import EmbeddingIndex
    from rankedlist.retrieval.images_to_index import search_images
    from rankedlist.retrieval.index_models import model_for_index

    check_backend_options(backend, index, "--index", uri, collection)
    if isinstance(k, bool) or k < 1:
        raise ValueError(f"--k must be at least 1, got {k}")
    if backend == "milvus":
        loaded, index = open_milvus_for_search(uri, collection)
    else:
        loaded = EmbeddingIndex.load(index)
    setting = _check_search_setting(loaded, index, nprobe, ef)
    embedder = model_for_index(loaded, checkpoint, model, device, index, allow_other_model)
    files = _query_files(queries)
    results = search_images(
        loaded,
        embedder,
        files,
        k,
        batch_size=batch_size,
        device=device,
        progress=progress,
        skip_corrupt=skip_corrupt,
        **setting,
    )
    # With --skip-corrupt an unreadable query has no results (and had its warning).
    found = [(q, hits) for q, hits in zip(files, results, strict=True) if hits]
    files, results = [q for q, _ in found], [hits for _, hits in found]
    for qpath, hits in zip(files, results, strict=True):
        print(f"{qpath}")
        for rank, m in enumerate(hits, 1):
            label = "" if m.label is None else f"  [{_class_name(loaded, m.label)}]"
            print(f"  {rank:>3}  {m.similarity:.4f}  {m.item}{label}")
    if json_out:
        _write_json(json_out, files, results, loaded.meta.get("classes"))
    if picture and files:
        from rankedlist.retrieval.search_picture import save_search_picture

        try:
            drawn = save_search_picture(
                files,
                results,
                picture,
                k,
                query_labels=_query_labels(files, loaded.meta.get("classes")),
                class_names=loaded.meta.get("classes"),
            )
        except OSError as err:
            raise OSError(
                f"could not write --picture {picture} ({os_reason(err)}); free disk space "
                "or choose another path"
            ) from err
        print(f"picture: {drawn}", file=sys.stderr)
    return 0


def _write_json(
    path: str, files: list[Path], results: list[list[Any]], classes: list[str] | None
) -> None:
    """Each query and its hits; a hit's ``label`` is its class name (``null`` without one) and
    ``label_id`` the number ``labels.npy`` stores."""
    payload = [
        {
            "query": str(q),
            "results": [
                {
                    "rank": r,
                    "item": m.item,
                    "path": str(m.path),
                    "similarity": m.similarity,
                    "label": _label_name(classes, m.label),
                    "label_id": m.label,
                }  # fmt: skip
                for r, m in enumerate(hits, 1)
            ],
        }
        for q, hits in zip(files, results, strict=True)
    ]
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    except OSError as err:
        raise OSError(
            f"could not write --json {path} ({os_reason(err)}); free disk space or choose "
            "another path"
        ) from err


def _label_name(classes: list[str] | None, label: int | None) -> str | None:
    if label is None or not classes or not 0 <= label < len(classes):
        return None
    return str(classes[label])


def _class_name(index: Any, label: int) -> str:
    classes = index.meta.get("classes")
    return str(classes[label]) if classes and 0 <= label < len(classes) else f"label {label}"
