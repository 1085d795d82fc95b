"""`rankedlist serve` for real: the server started as a process on 127.0.0.1, requests over
HTTP, the answers checked against the index and the model read in this process (files from
disk, not uploads), and the page driven in headless Chromium."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from _serve_helpers import png_bytes, running_server

pytestmark = pytest.mark.slow

# Small limits, so each one can be crossed with small files.
LIMITS = ["--max-image-mb", "0.25", "--max-pixels", "1000000", "--max-images", "4",
          "--max-request-mb", "0.5", "--max-k", "50"]  # fmt: skip


@pytest.fixture(scope="module")
def served(glyph_index, tmp_path_factory, child_env):
    """(server, index folder, image files): the glyph index, served with the model it records,
    a 50 ms batching window and small limits."""
    images, _, index = glyph_index
    root = tmp_path_factory.mktemp("serve")
    args = ["--index", str(index), "--batch-window-ms", "50", *LIMITS]
    with running_server(args, child_env(), root / "server.log") as server:
        yield server, index, sorted(images.rglob("*.png"))


def reference(index_folder: Path, files: list[Path], k: int):
    """(similarities, rows, index, embeddings) of ``files`` searched in this process: the
    index folder read by EmbeddingIndex, the images read from disk and embedded by the
    checkpoint the index records."""
    from rankedlist.retrieval import EmbeddingIndex, embed_images
    from rankedlist.retrieval.index_models import model_for_index

    index = EmbeddingIndex.load(index_folder)
    model = model_for_index(index, device="cpu")
    emb = embed_images(model.model, files, model.transform, progress=False)
    sims, rows = index.search(emb, k)
    return sims, rows, index, emb


def test_health_and_info_describe_the_index_and_its_model(served):
    from rankedlist import __version__
    from rankedlist.retrieval import EmbeddingIndex

    server, index_folder, files = served
    index = EmbeddingIndex.load(index_folder)
    assert server.get_json("/health") == {"status": "ok", "index_size": len(files)}
    info = server.get_json("/info")
    assert info["version"] == __version__
    assert info["model"]["fingerprint"] == index.meta["model_fingerprint"]
    assert info["model"]["runtime"] == "pytorch"
    assert info["index"]["size"] == len(index) == len(files)
    assert info["index"]["method"] == "exact" and info["index"]["classes"] == 4
    assert info["limits"]["max_images"] == 4 and info["limits"]["max_pixels"] == 1_000_000
    schema = server.get_json("/openapi.json")
    assert {"/search", "/embed", "/health", "/info", "/items/{item_id}/thumbnail"} <= set(
        schema["paths"]
    )
    status, page, _ = server.request("GET", "/docs")
    assert status == 200 and b"swagger" in page.lower()
    # It listens on the loopback address only (the default --host): /proc/net/tcp's LISTEN rows.
    port = f"{server.port:04X}"
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    listening = [r[1] for r in rows if r[1].endswith(f":{port}") and r[3] == "0A"]
    assert listening == [f"0100007F:{port}"]


def test_search_of_a_batch_answers_as_the_index_does_in_process(served):
    server, index_folder, files = served
    queries = [files[0], files[30], files[-1]]
    status, body = server.post("/search", [(q.name, q.read_bytes()) for q in queries], [("k", "7")])
    assert status == 200, body
    sims, rows, index, _ = reference(index_folder, queries, 7)
    classes = index.meta["classes"]
    assert [r["query"] for r in body["results"]] == [q.name for q in queries]
    for result, ref_sims, ref_rows in zip(body["results"], sims, rows, strict=True):
        got = result["neighbors"]
        assert [n["item_id"] for n in got] == ref_rows.tolist()
        assert [n["rank"] for n in got] == list(range(1, 8))
        np.testing.assert_allclose([n["similarity"] for n in got], ref_sims, atol=1e-5)
        for n, row in zip(got, ref_rows, strict=True):
            assert n["item"] == index.items[row]
            assert Path(n["path"]) == index.item_path(int(row))
            assert n["class"] == classes[index.labels[row]] == Path(n["item"]).parent.name
            assert n["thumbnail"] == f"/items/{row}/thumbnail"
    # An indexed image finds itself first.
    assert (
        body["results"][0]["neighbors"][0]["item"]
        == files[0].relative_to(files[0].parents[1]).as_posix()
    )


def test_embed_is_the_models_embedding(served):
    server, index_folder, files = served
    status, body = server.post("/embed", [(f.name, f.read_bytes()) for f in files[:2]])
    assert status == 200, body
    *_, emb = reference(index_folder, files[:2], 1)
    got = np.asarray(body["embeddings"])
    assert got.shape == emb.shape == (2, body["dim"])
    np.testing.assert_allclose(got, emb, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_concurrent_requests_share_forward_passes_and_answer_as_alone(served):
    server, _, files = served
    queries = files[::12][:8]

    def ask(q: Path) -> list:
        status, body = server.post("/search", [(q.name, q.read_bytes())], [("k", "5")])
        assert status == 200, body
        return body["results"][0]["neighbors"]

    alone = [ask(q) for q in queries]
    before = server.get_json("/info")["batching"]
    together: list = [None] * len(queries)
    start = threading.Barrier(len(queries))

    def client(i: int) -> None:
        start.wait()
        together[i] = ask(queries[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    after = server.get_json("/info")["batching"]
    assert after["images_embedded"] - before["images_embedded"] == len(queries)
    assert after["forward_calls"] - before["forward_calls"] < len(queries)  # batches formed
    assert after["largest_batch"] >= 2
    for one, many in zip(alone, together, strict=True):
        assert [n["item_id"] for n in many] == [n["item_id"] for n in one]
        np.testing.assert_allclose(
            [n["similarity"] for n in many], [n["similarity"] for n in one], atol=1e-5
        )


def test_filters_match_a_brute_force_search(served):
    server, index_folder, files = served
    query = files[0]
    _, _, index, emb = reference(index_folder, [query], 1)
    sims = index.embeddings.astype(np.float64) @ emb[0].astype(np.float64)
    classes = index.meta["classes"]
    wanted = [classes.index("C"), classes.index("G")]
    rows = [r for r in np.argsort(-sims, kind="stable") if index.labels[r] in wanted][:6]
    fields = [("k", "6"), ("classes", "C"), ("classes", "G")]
    status, body = server.post("/search", [(query.name, query.read_bytes())], fields)
    assert status == 200, body
    got = body["results"][0]["neighbors"]
    assert [n["item_id"] for n in got] == rows
    assert {n["class"] for n in got} <= {"C", "G"}
    floor = float(np.sort(sims)[-4])  # the fourth best similarity: three pass above it
    status, body = server.post(
        "/search", [(query.name, query.read_bytes())], [("min_similarity", f"{floor + 1e-4}")]
    )
    assert status == 200, body
    expected = [int(r) for r in np.argsort(-sims, kind="stable") if sims[r] >= floor + 1e-4]
    assert [n["item_id"] for n in body["results"][0]["neighbors"]] == expected


def _bad_requests(files: list[Path]) -> dict:
    """name -> (files, fields, expected status)."""
    from PIL import Image

    good = files[0].read_bytes()
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    big_file = png_bytes(Image.fromarray(noise))  # about 480 KB, over 0.25 MiB
    many_pixels = png_bytes(Image.new("L", (1100, 1000), 255))  # small file, 1.1 M pixels
    bomb = png_bytes(Image.new("1", (20000, 20000), 0))  # a few KB, 400 M pixels
    medium = png_bytes(Image.fromarray(noise[:250, :250]))  # about 190 KB, under 0.25 MiB
    return {
        "empty": ([("empty.png", b"")], [], 400),
        "not an image": ([("notes.png", b"plain text, not a picture")], [], 415),
        "truncated": ([("cut.png", good[: len(good) // 2])], [], 415),
        "file too large": ([("big.png", big_file)], [], 413),
        "too many pixels": ([("wide.png", many_pixels)], [], 413),
        "decompression bomb": ([("bomb.png", bomb)], [], 413),
        "too many images": ([("a.png", good)] * 5, [], 413),
        "request too large": ([("m.png", medium)] * 3, [], 413),
        "k zero": ([("a.png", good)], [("k", "0")], 400),
        "k over the limit": ([("a.png", good)], [("k", "51")], 400),
        "k not a number": ([("a.png", good)], [("k", "ten")], 422),
        "no image": ([], [("k", "3")], 422),
        "unknown class": ([("a.png", good)], [("classes", "Z")], 400),
    }


def test_bad_uploads_get_a_4xx_with_a_one_line_reason(served):
    server, _, files = served
    for name, (uploads, fields, expected) in _bad_requests(files).items():
        for path in ("/search", "/embed"):
            if path == "/embed" and fields:
                continue
            status, body = server.post(path, uploads, fields)
            assert status == expected, (name, path, status, body)
            detail = body["detail"]
            assert isinstance(detail, str) and detail and "\n" not in detail, (name, body)
    # A body without Content-Length (chunked) is counted as it arrives: refused past the limit.
    chunks = (bytes(64 * 1024) for _ in range(16))  # 1 MiB, over --max-request-mb 0.5
    headers = {"Content-Type": "multipart/form-data; boundary=x", "Transfer-Encoding": "chunked"}
    status, data, _ = server.request("POST", "/search", chunks, headers)
    assert status == 413 and b"over this server's limit" in data
    # The server is still there and answers.
    status, body = server.post("/search", [("a.png", files[0].read_bytes())], [("k", "1")])
    assert status == 200 and body["results"][0]["neighbors"][0]["item_id"] == 0


def test_thumbnails_are_served_by_item_id_only(served):
    from PIL import Image

    server, index_folder, files = served
    status, data, headers = server.request("GET", "/items/5/thumbnail")
    assert status == 200 and headers["content-type"] == "image/png"
    expected = Image.open(files[5]).convert("RGB")
    expected.thumbnail((160, 160))
    got = Image.open(io.BytesIO(data)).convert("RGB")
    assert np.array_equal(np.asarray(got), np.asarray(expected))
    secret = index_folder / "meta.json"
    attempts = [
        f"/items/{len(files)}/thumbnail", "/items/-1/thumbnail", "/items/1e1/thumbnail",
        "/items/%2e%2e/thumbnail", "/items/..%2f..%2fmeta.json/thumbnail",
        f"/items/{secret}/thumbnail", f"/items/{str(secret).replace('/', '%2f')}/thumbnail",
        "/items/../../etc/passwd", "/items/0/../../../etc/passwd",
        "/items/%2e%2e/%2e%2e/etc/passwd",
        f"/{secret}", "/items/0x1/thumbnail", "/items/%30/../thumbnail",
    ]  # fmt: skip
    for path in attempts:
        status, data, _ = server.request("GET", path)
        assert status in (400, 404), (path, status)
        assert b"root:" not in data and b"model_fingerprint" not in data, path


def test_the_page_searches_an_uploaded_image_in_chromium(served, tmp_path):
    from _browser import browser, console_errors
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server, _, files = served
    query = files[40]
    with browser() as driver:
        driver.get(server.url + "/")
        WebDriverWait(driver, 30).until(lambda d: "items" in d.find_element(By.ID, "about").text)
        driver.find_element(By.ID, "k").clear()
        driver.find_element(By.ID, "k").send_keys("6")
        driver.find_element(By.ID, "file").send_keys(str(query))
        WebDriverWait(driver, 60).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "figure.hit")) == 6
        )
        # Every thumbnail has loaded (a broken image has no natural width).
        WebDriverWait(driver, 30).until(
            lambda d: d.execute_script(
                "return Array.from(document.querySelectorAll('figure.hit img'))"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )
        )
        hits = driver.find_elements(By.CSS_SELECTOR, "figure.hit")
        shown = [h.find_element(By.CLASS_NAME, "class").text for h in hits]
        sims = [float(h.find_element(By.CLASS_NAME, "sim").text) for h in hits]
        driver.save_screenshot(str(tmp_path / "page.png"))
        errors = console_errors(driver)
        # The API docs render from this server alone (no CDN): every route is listed.
        driver.get(server.url + "/docs")
        WebDriverWait(driver, 30).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")) >= 5
        )
        paths = {
            e.text.strip() for e in driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
        }
        errors += console_errors(driver)
        assert all(
            r.startswith(server.url)
            for r in driver.execute_script(
                "return performance.getEntriesByType('resource').map(e => e.name)"
            )
        )
    assert {"/search", "/embed", "/health", "/info"} <= {p.replace("\u200b", "") for p in paths}
    status, body = server.post("/search", [(query.name, query.read_bytes())], [("k", "6")])
    expected = body["results"][0]["neighbors"]
    assert shown == [n["class"] for n in expected]
    assert shown[0] == query.parent.name
    np.testing.assert_allclose(sims, [n["similarity"] for n in expected], atol=6e-4)
    assert errors == []
    assert (tmp_path / "page.png").stat().st_size > 10_000
    json.dumps(body)  # the answer is plain JSON
