"""Throughput and latency of `rankedlist serve` against the model and the index called directly.

An index of the glyph recipe's train images (``--split``, or ``--images``) is built with the
glyph recipe's GlyphNet (``--checkpoint`` for a trained run; by default untrained weights, as the
speed does not depend on them; ``--arch`` for another untrained model, e.g. a timm ResNet at
``--image-size 224``), then:

* ``direct``: in this process, one query at a time as a program embedding images itself would:
  read the file, the model's test transform, ``model.embed`` of a batch of one, the index's
  ``search`` (k = 10); latency per query and queries/s;
* ``serve``: `rankedlist serve` started as a process on 127.0.0.1, then 1, 8 and 32 (``--clients``)
  concurrent clients, threads of this process with a keep-alive connection each, each sending
  ``--requests`` uploads of a query image to ``POST /search`` (k = 10) one after the other;
  requests/s over the whole level, p50 / p95 latency, the errors (any answer but 200), the mean
  forward-pass batch the server formed (from ``/info``), and requests/s against ``direct``.

Server and clients share the machine's cores, as any benchmark from the same machine does. The
model runs on ``--threads`` threads (1 by default) in the server and in ``direct``; ``direct``
is measured before and after the server's levels and the faster of the two is kept (the
machine may be shared).

    python benchmarks/serve_speed.py                           # 1, 8, 32 clients
    python benchmarks/serve_speed.py --clients 1 8 --requests 50 --json serve.json
    python benchmarks/serve_speed.py --arch resnet18 --image-size 224 --split test
    python benchmarks/serve_speed.py --checkpoint runs/demo --split test \\
        --page-picture docs/images/serve_page.png
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

K = 10


def glyph_images(root: Path, split: str) -> Path:
    """The glyph recipe's images of ``split`` as files, one folder per class."""
    from rankedlist.data import GlyphDataset

    images = root / "images"
    ds = GlyphDataset(split, image_size=32, use_cache=False)
    for i, label in enumerate(ds.labels):
        name = str(ds.classes[label])  # a character; "/" or "." cannot be a folder's name
        folder = images / (
            name if name.isalnum() else "U+" + "-".join(f"{ord(c):04X}" for c in name)
        )
        folder.mkdir(parents=True, exist_ok=True)
        ds.load_image(i).save(folder / f"{i:05d}.png")
    return images


def untrained_checkpoint(root: Path, arch: str | None, image_size: int) -> Path:
    """The glyph recipe's model (or the model ``arch`` at ``image_size``), untrained, as a
    checkpoint in the trainer's format."""
    import torch

    from rankedlist.models import create_model
    from rankedlist.training import config_from_dict, save_checkpoint
    from rankedlist.training.config import load_config

    recipe = load_config(Path(__file__).resolve().parents[1] / "configs" / "glyphs.yaml", [])
    section = recipe.to_dict()["model"]
    if arch is not None:
        section = {"name": arch, "embedding_dim": section["embedding_dim"], "options": {}}
    config = config_from_dict({"model": section, "data": {"image_size": image_size}}).to_dict()
    torch.manual_seed(0)
    model = create_model(
        section["name"], embedding_dim=section["embedding_dim"], **section["options"]
    )
    state = {"model": model.state_dict(), "losses": {}, "config": config, "iteration": 0,
             "best": {}, "world_size": 1}  # fmt: skip
    (root / "run").mkdir(exist_ok=True)
    return save_checkpoint(state, root / "run" / "best.pt")


def percentile_ms(latencies: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(latencies) * 1000, q))


def direct(index_folder: Path, queries: list[Path], repeat: int) -> dict:
    """Queries one at a time in this process: read, transform, embed (batch of 1), search."""
    import torch

    from rankedlist.data import read_rgb
    from rankedlist.retrieval import EmbeddingIndex
    from rankedlist.retrieval.index_models import model_for_index

    index = EmbeddingIndex.load(index_folder)
    model = model_for_index(index, device="cpu")
    model.model.eval()
    latencies = []
    with torch.inference_mode():
        for i in range(repeat):
            start = time.perf_counter()
            x = model.transform(read_rgb(queries[i % len(queries)]))[None]
            index.search(model.model.embed(x).numpy(), K)
            latencies.append(time.perf_counter() - start)
    latencies = latencies[len(latencies) // 10 :]  # the first ones warm up
    return {
        "requests": len(latencies),
        "errors": 0,
        "per_s": len(latencies) / sum(latencies),
        "p50_ms": percentile_ms(latencies, 50),
        "p95_ms": percentile_ms(latencies, 95),
    }


def upload(data: bytes, name: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename="
            f"\"{name}\"\r\nContent-Type: image/png\r\n\r\n").encode() + data + (
            f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n{K}\r\n"
            f"--{boundary}--\r\n").encode()  # fmt: skip
    return body, f"multipart/form-data; boundary={boundary}"


def clients(port: int, bodies: list[tuple[bytes, str]], n_clients: int, per_client: int) -> dict:
    """``n_clients`` threads, ``per_client`` searches each; requests/s and latencies."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(n_clients + 1)

    def client(c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        start.wait()
        for r in range(per_client):
            body, kind = bodies[(c * per_client + r) % len(bodies)]
            t = time.perf_counter()
            try:
                conn.request("POST", "/search", body, {"Content-Type": kind})
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
                why = f"status {response.status}"
            except OSError as err:
                ok, why = False, repr(err)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            with lock:
                (latencies.append(time.perf_counter() - t) if ok else errors.append(why))
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(n_clients)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    return {"requests": len(latencies) + len(errors), "errors": len(errors),
            "per_s": len(latencies) / wall, "p50_ms": percentile_ms(latencies, 50),
            "p95_ms": percentile_ms(latencies, 95), "first_errors": errors[:3]}  # fmt: skip


def get_json(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def start_server(
    index: Path, port: int, window_ms: float, threads: int, log: Path
) -> subprocess.Popen:
    argv = [sys.executable, "-m", "rankedlist", "serve", "--index", str(index), "--port",
            str(port), "--batch-window-ms", str(window_ms), "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    process = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()}")
        try:
            get_json(port, "/health")
            return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not answer /health in 180 s")


def page_picture(port: int, query: Path, out: Path) -> None:
    """The search page in headless Chromium after an upload of ``query``, as a PNG."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,620",
                 "--disable-background-networking", "--disable-dev-shm-usage"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        driver.find_element(By.ID, "k").clear()
        driver.find_element(By.ID, "k").send_keys("7")
        driver.find_element(By.ID, "file").send_keys(str(query))
        WebDriverWait(driver, 60).until(
            lambda d: d.execute_script(
                "const i = document.querySelectorAll('figure.hit img'); return i.length > 0 && "
                "Array.from(i).every(x => x.complete && x.naturalWidth > 0)"
            )
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrent clients per level"
    )
    parser.add_argument(
        "--requests", type=int, default=200, help="requests per level (all clients)"
    )
    parser.add_argument("--window-ms", type=float, default=5.0, help="the server's batch window")
    parser.add_argument("--threads", type=int, default=1, help="the model's threads (both sides)")
    parser.add_argument("--checkpoint", help="a trained run (default: untrained glyph model)")
    parser.add_argument("--arch", help="an untrained model of this name instead (e.g. resnet18)")
    parser.add_argument("--image-size", type=int, default=32, help="--arch's input size (32)")
    parser.add_argument("--images", help="the images to index (default: glyph images)")
    parser.add_argument("--split", default="train", help="the glyph split indexed (train)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--page-picture", help="also save a screenshot of the page here")
    parser.add_argument("--picture-query", type=int, default=3, help="which query it shows")
    args = parser.parse_args()

    import torch

    from rankedlist.cli.main import main as cli

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="serve-speed-") as tmp:
        measure(args, Path(tmp), cli)


def measure(args: argparse.Namespace, work: Path, cli) -> None:
    """Build the index in ``work``, measure, print the table (and write --json)."""
    images = Path(args.images) if args.images else glyph_images(work, args.split)
    checkpoint = args.checkpoint or str(untrained_checkpoint(work, args.arch, args.image_size))
    build = ["index", "build", "--checkpoint", checkpoint, "--images", str(images), "--out",
             str(work / "idx"), "--labels-from-folders", "--device", "cpu",
             "--no-progress"]  # fmt: skip
    assert cli(build) == 0
    queries = sorted(images.rglob("*.png"))[::7][:64]
    bodies = [upload(q.read_bytes(), q.name) for q in queries]
    first = direct(work / "idx", queries, args.requests)
    rows: dict = {}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = start_server(work / "idx", port, args.window_ms, args.threads, work / "server.log")
    try:
        clients(port, bodies, 1, 10)  # warm-up
        for n in args.clients:
            before = get_json(port, "/info")["batching"]
            row = clients(port, bodies, n, max(1, args.requests // n))
            after = get_json(port, "/info")["batching"]
            calls = after["forward_calls"] - before["forward_calls"]
            row["mean_batch"] = (after["images_embedded"] - before["images_embedded"]) / max(
                calls, 1
            )
            rows[f"serve, {n} clients"] = row
        if args.page_picture:
            page_picture(port, queries[args.picture_query], Path(args.page_picture))
    finally:
        server.terminate()
        server.wait(timeout=30)
    second = direct(work / "idx", queries, args.requests)
    rows = {"direct": max(first, second, key=lambda r: r["per_s"]), **rows}
    base = rows["direct"]["per_s"]
    info = {"items": len(list(images.rglob("*.png"))), "window_ms": args.window_ms}
    print(
        f"index of {info['items']} images, k = {K}, batch window {args.window_ms} ms, "
        f"{args.threads} model thread(s); direct {first['per_s']:.0f} and "
        f"{second['per_s']:.0f} queries/s before and after"
    )
    print("| | requests | errors | requests/s | p50 ms | p95 ms | mean batch | vs direct |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        batch = f"{r['mean_batch']:.1f}" if "mean_batch" in r else "1"
        print(
            f"| {name} | {r['requests']} | {r['errors']} | {r['per_s']:.0f} | "
            f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {batch} | {r['per_s'] / base:.2f}x |"
        )
        if r.get("first_errors"):
            print(f"  errors: {r['first_errors']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
