"""``rankedlist export``: a run's embedding model as an ONNX, ``torch.export`` (``.pt2``) or
TorchScript file.

Exit code 0, or 2 after one ``error:`` line (what is wrong, the file, the fix) for a bad input,
a missing optional dependency, a model that cannot be exported or an export that does not match
PyTorch; ``--debug`` raises the error instead, with its traceback.
"""

from __future__ import annotations

import argparse
from typing import Any

from rankedlist.cli.errors import report_errors

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``export`` to ``parser.add_subparsers()``; returns its parser."""
    from rankedlist.export.exporters import FORMATS, ONNX_EXPORTER, ONNX_OPSET

    export = subparsers.add_parser(
        "export",
        help="export a run's embedding model to ONNX, torch.export (.pt2) or TorchScript, with "
        "its input contract",
        description="Export the model a run's test numbers came from (model.embed: every head "
        "fused and L2-normalised), with a dynamic batch dimension, to ONNX (run by onnxruntime; "
        f"written by {ONNX_EXPORTER} PyTorch recommends, or its TorchScript-based one when "
        "torch.export cannot capture the model), to a torch.export ExportedProgram (.pt2, "
        "loaded with torch.export.load; PyTorch's successor to TorchScript) or to TorchScript "
        "(deprecated by PyTorch, kept while it ships). The input contract (input size, channel "
        "order, scaling, mean/std, the test-time resize and crop) and the model fingerprint go "
        "into the file and into FILE.json beside it. The file is checked against PyTorch on "
        "random images before it is written. Any of the three works as "
        "`rankedlist index build --model FILE`.",
    )
    export.add_argument("--checkpoint", required=True, help="a .pt file or a run folder")
    export.add_argument(
        "--out", required=True, help="the file to write (.onnx, .pt2, or .ts / .pt)"
    )
    export.add_argument(
        "--format",
        choices=FORMATS,
        help="onnx, exported-program or torchscript (default: from --out's suffix: .onnx -> "
        "onnx, .pt2 -> exported-program, .ts/.pt -> torchscript); ONNX needs pip install "
        "'rankedlist[export]'",
    )
    export.add_argument(
        "--opset", type=int, default=ONNX_OPSET, help=f"ONNX opset (default {ONNX_OPSET})"
    )
    export.add_argument(
        "--no-check",
        action="store_true",
        help="skip the parity check of the file against PyTorch",
    )
    return export


def run(args: argparse.Namespace) -> int:
    """Run ``rankedlist export``; one ``error:`` line and exit code 2 on a bad input."""
    return report_errors("export", _export, args)


def _export(args: argparse.Namespace) -> int:
    from rankedlist.export.checked_export import export_checkpoint

    result = export_checkpoint(
        args.checkpoint, args.out, args.format, opset=args.opset, check=not args.no_check
    )
    contract = result.contract
    shape = ", ".join(str(s) for s in contract["input"]["shape"])
    what = {
        "onnx": f"ONNX opset {contract['export']['opset']}",
        "exported-program": "torch.export ExportedProgram",
        "torchscript": "TorchScript",
    }[result.format]
    print(
        f"exported {contract['model']['checkpoint']} (iteration {contract['model']['iteration']})"
        f" to {result.path}: {what} via {result.exporter}"
    )
    print(f"  input  {contract['input']['name']}: float32 [{shape}], {contract['summary']}")
    dim = contract["output"]["shape"][1]
    print(f"  output {contract['output']['name']}: float32 [batch, {dim}], L2-normalised")
    if result.parity:
        p = result.parity
        print(
            f"  parity with PyTorch ({p['runtime']}, {p['images']} random images, batches of "
            f"{p['images']} and 1): min cosine {p['min_cosine']:.7f}, max |difference| "
            f"{p['max_abs_diff']:.1e}"
        )
    print(
        f"  input contract and model fingerprint {contract['model']['fingerprint']}: in the "
        f"file and in {result.sidecar}"
    )
    return 0
