"""The model that embeds images for an index: a run's checkpoint (PyTorch) or an exported ONNX
file (onnxruntime), each with the test-time transform the model expects.

:func:`open_index_model` opens either; :func:`model_for_index` picks the one to embed queries or
new images of an existing index with: the one given, else the one the index records (its
``meta["checkpoint"]`` or ``meta["model_file"]``), warning when a given one differs from the
index's.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["IndexModel", "model_for_index", "open_index_model"]


@dataclass
class IndexModel:
    """A model ready to embed images for an index.

    ``model`` has ``embed`` (an ``EmbeddingModel`` or an ``OnnxEmbeddingModel``), ``transform``
    is its test-time transform, ``meta`` what an index built with it records about it, and
    ``option`` / ``source`` the command-line option and path that name it.
    """

    model: Any
    transform: Callable
    image_size: int
    source: Path
    option: str
    meta: dict[str, Any] = field(default_factory=dict)


def open_index_model(
    checkpoint: str | os.PathLike | None = None,
    model_file: str | os.PathLike | None = None,
    device: str = "auto",
) -> IndexModel:
    """Open a run's checkpoint (``.pt`` or run folder) or an exported ``.onnx`` file.

    Exactly one of ``checkpoint`` and ``model_file`` is given. An ONNX file runs on the CPU
    with onnxruntime (the ``export`` extra) and is prepared by its input contract's transform.
    """
    from rankedlist.data import build_transform

    if (checkpoint is None) == (model_file is None):
        raise ValueError("pass either a checkpoint (--checkpoint) or an ONNX file (--model)")
    if checkpoint is not None:
        from rankedlist.training.checkpoint_model import load_model_from_checkpoint

        loaded = load_model_from_checkpoint(checkpoint, device)
        meta = {
            "checkpoint": str(loaded.checkpoint.resolve()),
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
    from rankedlist.export.onnx_model import load_onnx_model

    path = Path(model_file)
    if path.suffix.lower() in (".pt", ".pth") or path.is_dir():
        hint = "pass a run folder or its .pt file with --checkpoint"
        raise ValueError(
            f"--model takes an exported .onnx file; {path} looks like a checkpoint: {hint}"
        )
    onnx_model = load_onnx_model(path)
    contract = onnx_model.contract
    size = int(contract["image_size"])
    meta = {
        "model_file": str(path.resolve()),
        "input_style": contract["transform_style"],
        "image_size": size,
        "input_contract": contract,
    }
    exported_from = (contract.get("model") or {}).get("checkpoint")
    if exported_from:
        meta["exported_from"] = exported_from
    transform = build_transform(contract["transform_style"], False, size)
    return IndexModel(onnx_model, transform, size, path, "--model", meta)


def model_for_index(
    index: Any,
    checkpoint: str | os.PathLike | None = None,
    model_file: str | os.PathLike | None = None,
    device: str = "auto",
    index_name: str | os.PathLike | None = None,
) -> IndexModel:
    """The model that embeds queries or new images for ``index``.

    The given ``checkpoint`` or ``model_file``, else the one the index was built with. Raises
    when the index records none or it is gone (saying which option to pass); warns when the
    given model is not the index's (similarities then mean nothing).
    """
    name = index_name or "the index"
    if checkpoint is None and model_file is None:
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
        return open_index_model(checkpoint, model_file, device)
    opened = open_index_model(checkpoint, model_file, device)
    built_with = index.meta.get("model_file") or index.meta.get("checkpoint")
    ours = _identities(index.meta.get("model_file"), index.meta.get("checkpoint"))
    ours |= _identities(index.meta.get("exported_from"))
    theirs = _identities(opened.source, opened.meta.get("exported_from"))
    if built_with is not None and not ours & theirs:
        warnings.warn(
            f"{name} was built with {built_with} but these images are embedded with "
            f"{opened.source}; similarities are only meaningful with the same model",
            stacklevel=2,
        )
    return opened


def _identities(*paths: str | os.PathLike | None) -> set[str]:
    """The resolved paths that name one model (a checkpoint, or an ONNX file and the checkpoint
    it was exported from)."""
    return {str(Path(p).resolve()) for p in paths if p}
