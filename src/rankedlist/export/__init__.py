"""Export: a trained embedding model as a file other runtimes can load.

* :func:`export_checkpoint`: a run -> ONNX (opset 18, dynamic batch), a ``torch.export``
  program (``.pt2``) or TorchScript, checked against PyTorch before it is written, with the
  input contract and the model fingerprint in the file and beside it.
* :func:`input_contract` / :func:`prepare_image`: the preprocessing an exported model expects,
  as data, and a numpy + PIL reference implementation of it.
* :func:`load_onnx_model`: an exported ONNX model run by onnxruntime, with the ``embed``
  interface the retrieval index uses (``rankedlist index build --model FILE.onnx``).
  :func:`rankedlist.export.model_files.open_model_file` opens any of the three formats
  (``.pt2``: :mod:`rankedlist.export.exported_program`, TorchScript:
  :mod:`rankedlist.export.torchscript_model`) with that interface.
* The command line, ``rankedlist export``, is :mod:`rankedlist.cli.export`.

onnx, onnxruntime and onnxscript are the optional extra ``rankedlist[export]``; they are
imported only when an ONNX file is written or read. Nothing here is imported by the rest of the
package except the retrieval index's ``--model`` path.
"""

from rankedlist.export.checked_export import ExportResult, export_checkpoint, parity
from rankedlist.export.exporters import FORMATS, ONNX_OPSET
from rankedlist.export.input_contract import input_contract, prepare_image
from rankedlist.export.onnx_model import OnnxEmbeddingModel, load_onnx_model

__all__ = [
    "FORMATS",
    "ONNX_OPSET",
    "ExportResult",
    "OnnxEmbeddingModel",
    "export_checkpoint",
    "input_contract",
    "load_onnx_model",
    "parity",
    "prepare_image",
]
