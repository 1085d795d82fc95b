"""Shared parts of the serve tests: a glyph image folder, an untrained GlyphNet checkpoint, an
index of the folder, a real `rankedlist serve` process on a free port of 127.0.0.1, and plain
HTTP (http.client, multipart bodies written here) to talk to it."""

from __future__ import annotations

import http.client
import io
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CHARACTERS = "ABCDEFGH"  # the glyphs' train split keeps four of them: A, C, E, G


def glyph_folder(root: Path) -> Path:
    """``root/images/<class>/<n>.png``: the glyph train split's images as files."""
    from rankedlist.data import GlyphDataset

    images = root / "images"
    ds = GlyphDataset("train", characters=CHARACTERS, image_size=32, use_cache=False)
    for i, label in enumerate(ds.labels):
        folder = images / ds.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        ds.load_image(i).save(folder / f"{i:04d}.png")
    return images


def glyph_checkpoint(folder: Path, seed: int = 0) -> Path:
    """``folder/best.pt``: an untrained narrow GlyphNet (16-d, three heads) in the trainer's
    format, with randomised BatchNorm statistics so that eval mode matters."""
    import torch

    from rankedlist.models import create_model
    from rankedlist.training import config_from_dict, save_checkpoint

    section = {"name": "glyphnet", "embedding_dim": 16, "multi_level": True,
               "options": {"widths": [4, 8, 8, 16]}}  # fmt: skip
    config = config_from_dict({"model": section, "data": {"image_size": 32}}).to_dict()
    torch.manual_seed(seed)
    model = create_model("glyphnet", embedding_dim=16, multi_level=True, widths=[4, 8, 8, 16])
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    state = {"model": model.state_dict(), "losses": {}, "config": config, "iteration": 1,
             "best": {}, "world_size": 1}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(state, folder / "best.pt")


def build_index(images: Path, checkpoint: Path, out: Path) -> Path:
    """``rankedlist index build`` of ``images`` (labels from folders) into ``out``."""
    from rankedlist.cli.main import main

    argv = ["index", "build", "--checkpoint", str(checkpoint), "--images", str(images),
            "--out", str(out), "--labels-from-folders", "--device", "cpu",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running `rankedlist serve` process: its port and its log."""

    def __init__(self, process: subprocess.Popen, port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self, method: str, path: str, body: Any = None, headers: dict | None = None
    ) -> tuple[int, bytes, dict]:
        """(status, body, headers) of one request; the path is sent as it is (``body`` may be
        an iterator of chunks with ``Transfer-Encoding: chunked``)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            try:
                chunked = (headers or {}).get("Transfer-Encoding") == "chunked"
                conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused by its Content-Length before the body was sent: read the answer
            response = conn.getresponse()
            return response.status, response.read(), dict(response.getheaders())
        finally:
            conn.close()

    def get_json(self, path: str) -> dict:
        status, body, _ = self.request("GET", path)
        assert status == 200, (status, body)
        return json.loads(body)

    def post(
        self,
        path: str,
        files: Sequence[tuple[str, bytes]],
        fields: Sequence[tuple[str, str]] = (),
    ) -> tuple[int, dict]:
        """POST a multipart form: ``files`` as ``images`` parts, then ``fields``."""
        body, content_type = multipart(files, fields)
        status, data, _ = self.request("POST", path, body, {"Content-Type": content_type})
        return status, json.loads(data)


def multipart(
    files: Sequence[tuple[str, bytes]], fields: Sequence[tuple[str, str]] = ()
) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body: each file as an ``images`` part, then the fields."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, data in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; '
            f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        out.write(head.encode())
        out.write(data + b"\r\n")
    for key, value in fields:
        out.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{key}\"\r\n\r\n"
                  f"{value}\r\n".encode())  # fmt: skip
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


@contextmanager
def running_server(
    args: Sequence[str], env: dict, log: Path, wait_s: float = 120
) -> Iterator[Server]:
    """`rankedlist serve ARGS --port FREE` as a process; yields once /health answers, and
    stops it (SIGTERM, then SIGKILL) afterwards."""
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "rankedlist", "serve", *args, "--port", str(port)],
            env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    server = Server(process, port, log)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the server exited with {process.returncode}:\n"
                                     f"{log.read_text()[-4000:]}")  # fmt: skip
            try:
                if server.request("GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"no /health in {wait_s} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def png_bytes(image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
