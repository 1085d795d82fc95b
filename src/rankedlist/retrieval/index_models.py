"""The model that embeds images for an index: a run's checkpoint (PyTorch) or an exported file
(ONNX with onnxruntime, a ``torch.export`` ``.pt2``, TorchScript), each with the test-time
transform the model expects.

:func:`open_index_model` opens either; :func:`model_for_index` picks the one to embed queries or
new images of an existing index with: the one given, else the one the index records (its
``meta["checkpoint"]`` or ``meta["model_file"]``). An index records the fingerprint of its
model's weights (:mod:`rankedlist.models.fingerprint`; an export carries its checkpoint's):
a model with other weights (another training run of the same architecture, a checkpoint file
overwritten since) is refused with one line, since its similarities to the index's embeddings
would mean nothing, unless ``allow_other_model`` (``--allow-other-model``) forces it, with a
warning. An index from before fingerprints is compared by the models' paths, with a warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["IndexModel", "check_index_model", "model_for_index", "open_index_model"]


@dataclass
class IndexModel:
    """A model ready to embed images for an index.

    ``model`` has ``embed`` (an ``EmbeddingModel``, ``OnnxEmbeddingModel`` or
    ``TorchEmbeddingModel``), ``transform`` is its test-time transform, ``meta`` what an index
    built with it records about it, and ``option`` / ``source`` the command-line option and
    path that name it.
    """

    model: Any
    transform: Callable
    image_size: int
    source: Path
    option: str
    meta: dict[str, Any] = field(default_factory=dict)
    #: The index :func:`model_for_index` checked this model against (not checked again).
    checked_for: Any = field(default=None, repr=False, compare=False)


def open_index_model(
    checkpoint: str | os.PathLike | None = None,
    model_file: str | os.PathLike | None = None,
    device: str = "auto",
) -> IndexModel:
    """Open a run's checkpoint (``.pt`` or run folder) or an exported model file.

    Exactly one of ``checkpoint`` and ``model_file`` is given; an exported file passed as
    ``checkpoint`` is opened as one. The one entry point for a model of any format
    (:func:`rankedlist.export.model_files.open_model_file`): ``.onnx`` runs on the CPU with
    onnxruntime (the ``export`` extra), ``.pt2`` with ``torch.export.load`` and ``.ts`` (or a
    TorchScript ``.pt``) with ``torch.jit.load``, on ``device`` when an index embeds with it;
    each is prepared by its input contract's transform and carries the fingerprint of the
    checkpoint it was exported from.
    """
    from rankedlist.data import build_transform
    from rankedlist.export.model_files import is_exported_model_file

    if (checkpoint is None) == (model_file is None):
        raise ValueError("pass either a checkpoint (--checkpoint) or an exported model (--model)")
    if checkpoint is not None and is_exported_model_file(checkpoint):
        checkpoint, model_file = None, checkpoint  # an export passed where a run may be
    if checkpoint is not None:
        from rankedlist.models.fingerprint import model_fingerprint
        from rankedlist.training.checkpoint_model import load_model_from_checkpoint

        loaded = load_model_from_checkpoint(checkpoint, device)
        meta = {
            "checkpoint": str(loaded.checkpoint.resolve()),
            "model_fingerprint": model_fingerprint(loaded.model),
            "iteration": loaded.iteration,
            "model_spec": dict(getattr(loaded.model, "spec", {})),
            "input_style": loaded.model.input_style,
            "image_size": loaded.image_size,
            "config": loaded.config,
        }
        return IndexModel(
            loaded.model,
            loaded.transform,
            loaded.image_size,
            loaded.checkpoint,
            "--checkpoint",
            meta,
        )
    from rankedlist.export.model_files import open_model_file

    path = Path(model_file)
    exported = open_model_file(path)
    contract = exported.contract
    size = int(contract["image_size"])
    meta = {
        "model_file": str(path.resolve()),
        "model_fingerprint": exported.fingerprint,
        "input_style": contract["transform_style"],
        "image_size": size,
        "input_contract": contract,
    }
    exported_from = (contract.get("model") or {}).get("checkpoint")
    if exported_from:
        meta["exported_from"] = exported_from
    # The contract's recorded normalisation (a contract from before it followed the model
    # records ImageNet's, what that model was fed), so the file's consumers all agree.
    transform = build_transform(
        contract["transform_style"], False, size, mean=contract["mean"], std=contract["std"]
    )
    return IndexModel(exported, transform, size, path, "--model", meta)


def model_for_index(
    index: Any,
    checkpoint: str | os.PathLike | None = None,
    model_file: str | os.PathLike | None = None,
    device: str = "auto",
    index_name: str | os.PathLike | None = None,
    allow_other_model: bool = False,
) -> IndexModel:
    """The model that embeds queries or new images for ``index``.

    The given ``checkpoint`` or ``model_file``, else the one the index was built with. Raises
    when the index records none or it is gone (saying which option to pass), and when the model
    is not the index's (see :func:`check_index_model`).
    """
    name = index_name or "the index"
    given = checkpoint is not None or model_file is not None
    if not given:
        recorded_file, recorded_ckpt = index.meta.get("model_file"), index.meta.get("checkpoint")
        if recorded_file is not None:
            model_file, option, recorded = recorded_file, "--model", recorded_file
        elif recorded_ckpt is not None:
            checkpoint, option, recorded = recorded_ckpt, "--checkpoint", recorded_ckpt
        else:
            raise ValueError(
                f"{name} does not record the model it was built with: pass --checkpoint or --model"
            )
        if not Path(recorded).exists():
            raise FileNotFoundError(
                f"the model {recorded} that built {name} is gone: pass {option} with the same "
                "model (or its export), or rebuild the index"
            )
    opened = open_index_model(checkpoint, model_file, device)
    paths = (opened.source, opened.meta.get("exported_from"))
    check_index_model(
        index, opened.meta.get("model_fingerprint"), paths, opened.option, name, given,
        allow_other_model,
    )  # fmt: skip
    opened.checked_for = index
    return opened


def check_index_model(
    index: Any,
    fingerprint: str | None,
    paths: tuple[str | os.PathLike | None, ...],
    option: str = "--checkpoint",
    index_name: str | os.PathLike | None = None,
    given: bool = True,
    allow_other_model: bool = False,
) -> None:
    """Refuse a model whose weights are not those that built ``index``.

    ``fingerprint`` is the model's (:func:`rankedlist.models.fingerprint.model_fingerprint`, or
    an ONNX file's), ``paths`` the files it comes from (the first one names it), ``option`` the
    command-line option that passes it, ``given`` whether the user passed it (else it is the
    model the index records, which may have changed on disk since).

    Two fingerprints of weights, or two of files, are compared: a difference raises ValueError
    (one line: the model, the index, the fix), or with ``allow_other_model`` warns. A weights
    fingerprint against a file one (an index built from an ONNX file exported before
    fingerprints), or an index from before fingerprints, cannot be compared: the models' paths
    are, and a given model at another path warns as before.
    """
    name = index_name or "the index"
    source = paths[0]
    recorded = index.meta.get("model_fingerprint")
    built_with = index.meta.get("model_file") or index.meta.get("checkpoint")
    if _comparable(recorded, fingerprint):
        if recorded == fingerprint:
            return
        if allow_other_model:
            warnings.warn(
                f"{name} was built with {built_with or 'another model'} (model fingerprint "
                f"{recorded}) but these images are embedded with {source} ({fingerprint}); "
                "similarities are only meaningful with the same model",
                stacklevel=3,
            )
            return
        force = "pass --allow-other-model (allow_other_model=True in Python) to use it anyway"
        if not given:
            raise ValueError(
                f"the model {source} that built {name} has changed since (model fingerprint "
                f"{fingerprint}, the index records {recorded}), so its embeddings do not match "
                f"the index's; pass {option} with the model that built the index, rebuild the "
                f"index with `rankedlist index build`, or {force}"
            )
        raise ValueError(
            f"{source} is not the model that built {name} ({built_with or 'unrecorded'}): its "
            f"model fingerprint is {fingerprint}, the index's {recorded}, so the similarities "
            f"between them would mean nothing; leave out {option} to use the index's own model, "
            f"rebuild the index with this one (`rankedlist index build`), or {force}"
        )
    if not given:
        return
    ours = _identities(index.meta.get("model_file"), index.meta.get("checkpoint"))
    ours |= _identities(index.meta.get("exported_from"))
    if built_with is not None and not ours & _identities(*paths):
        warnings.warn(
            f"{name} was built with {built_with} but these images are embedded with "
            f"{source}; similarities are only meaningful with the same model",
            stacklevel=3,
        )


def _comparable(a: Any, b: Any) -> bool:
    """Both are fingerprints of the same kind (of weights, or of files)."""
    from rankedlist.models.fingerprint import FILE_FINGERPRINT_PREFIX as FILE

    return isinstance(a, str) and isinstance(b, str) and a.startswith(FILE) == b.startswith(FILE)


def _identities(*paths: str | os.PathLike | None) -> set[str]:
    """The resolved paths that name one model (a checkpoint, or an ONNX file and the checkpoint
    it was exported from)."""
    return {str(Path(p).resolve()) for p in paths if p}
