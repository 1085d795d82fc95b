"""Export time, file size, parity and embedding speed of the three export formats against the
PyTorch model they come from.

A run checkpoint of ``--model`` (random weights, random BatchNorm statistics: speed and parity
do not depend on training) is written to a temporary folder and exported with
``rankedlist.export.export_checkpoint`` to ONNX, a ``torch.export`` program (``.pt2``) and
TorchScript, each with its parity check. Each file is then opened as ``rankedlist index build
--model`` opens it (``rankedlist.export.model_files.open_model_file``: onnxruntime, a checked
``torch.export.load``, ``torch.jit.load``) and embeds one batch of ``--batch`` random images
``--repeat`` times, the formats interleaved with eager PyTorch (``model.embed``) so that a
machine shared with other jobs slows them alike. Columns: export seconds (capture, writing and
the parity check), file MiB, the largest |difference| from PyTorch on the batch, images/s (the
median of the repeats) and the speed relative to eager PyTorch in the same run. Everything runs
on the CPU with ``--threads`` threads.

    python benchmarks/export_formats.py                        # BN-Inception, 227 px, 512-d
    python benchmarks/export_formats.py --model glyphnet --image-size 32 --embedding-dim 64
    python benchmarks/export_formats.py --json results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

FORMATS = {"onnx": ".onnx", "exported-program": ".pt2", "torchscript": ".ts"}


def write_run(folder: Path, name: str, image_size: int, dim: int) -> Path:
    """A checkpoint in the trainer's format of a randomly initialised model."""
    from rankedlist.models import create_model
    from rankedlist.training import config_from_dict, save_checkpoint

    section = {"name": name, "embedding_dim": dim, "multi_level": name != "resnet50"}
    config = config_from_dict({"model": section, "data": {"image_size": image_size}}).to_dict()
    torch.manual_seed(0)
    model = create_model(name, embedding_dim=dim, multi_level=section["multi_level"])
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    state = {"model": model.state_dict(), "losses": {}, "config": config, "iteration": 0,
             "best": {}, "world_size": 1}  # fmt: skip
    return save_checkpoint(state, folder / "best.pt")


def measure(args: argparse.Namespace) -> list[dict]:
    from rankedlist.export.checked_export import export_checkpoint
    from rankedlist.export.model_files import open_model_file
    from rankedlist.training.checkpoint_model import load_model_from_checkpoint

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_run(Path(tmp), args.model, args.image_size, args.embedding_dim)
        eager = load_model_from_checkpoint(ckpt, device="cpu").model.eval()
        runners = {"pytorch (eager)": eager.embed}
        for fmt, suffix in FORMATS.items():
            start = time.perf_counter()
            result = export_checkpoint(ckpt, Path(tmp) / f"model{suffix}", fmt)
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "format": fmt,
                    "exporter": result.exporter,
                    "export_s": seconds,
                    "file_mib": result.path.stat().st_size / 2**20,
                }  # fmt: skip
            )
            runners[fmt] = open_model_file(result.path).embed
        size = args.image_size
        x = torch.from_numpy(
            np.random.default_rng(0).uniform(-1, 1, (args.batch, 3, size, size)).astype("f4")
        )
        with torch.no_grad():
            want = eager.embed(x).numpy()
        times: dict[str, list[float]] = {name: [] for name in runners}
        diffs = {}
        for _ in range(args.repeat):
            for name, embed in runners.items():
                start = time.perf_counter()
                with torch.no_grad():
                    got = embed(x)
                times[name].append(time.perf_counter() - start)
                diffs[name] = float(np.abs(np.asarray(got, np.float64) - want).max())
    speed = {name: args.batch / statistics.median(t) for name, t in times.items()}
    rows.insert(0, {"format": "pytorch (eager)", "exporter": "", "export_s": None,
                    "file_mib": None})  # fmt: skip
    for row in rows:
        row["max_abs_diff"] = diffs[row["format"]]
        row["images_per_s"] = speed[row["format"]]
        row["vs_eager"] = speed[row["format"]] / speed["pytorch (eager)"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bninception", help="a rankedlist model name")
    parser.add_argument("--image-size", type=int, default=227, help="input size in pixels")
    parser.add_argument("--embedding-dim", type=int, default=512, help="per head")
    parser.add_argument("--batch", type=int, default=32, help="images per embedding call")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per format")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (onnxruntime: one per core)"
    )
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    rows = measure(args)
    print(f"{args.model}, {args.image_size} px, batch {args.batch}, {args.threads} threads, "
          f"torch {torch.__version__}")  # fmt: skip
    print("| format | exporter | export s | file MiB | max abs diff | images/s | vs eager |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        export_s = "" if r["export_s"] is None else f"{r['export_s']:.1f}"
        mib = "" if r["file_mib"] is None else f"{r['file_mib']:.1f}"
        print(
            f"| {r['format']} | {r['exporter']} | {export_s} | {mib} | {r['max_abs_diff']:.1e} "
            f"| {r['images_per_s']:.1f} | {r['vs_eager']:.2f}x |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
