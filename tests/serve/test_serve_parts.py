"""The parts of `rankedlist serve` in this process: the batcher, upload decoding and its limits,
item ids, the index source's reload (and never a half-written index), the command's errors."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rankedlist.serve.embed_batcher import EmbedBatcher
from rankedlist.serve.index_source import IndexSource, folder_index_source, folder_version
from rankedlist.serve.thumbnails import ItemNotFound, parse_item_id
from rankedlist.serve.upload_images import UploadLimits, UploadRejected, decode_upload


@pytest.fixture(autouse=True)
def _pil_guard(monkeypatch):
    """decode_upload sets PIL's pixel guard (a global): put it back after each test."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


def _row_sums(batch: torch.Tensor) -> np.ndarray:
    return batch.double().sum(dim=(2, 3)).numpy().astype(np.float32)


def test_batcher_embeds_concurrent_callers_in_one_call_in_order():
    calls: list[int] = []

    def embed(batch: torch.Tensor) -> np.ndarray:
        calls.append(len(batch))
        return _row_sums(batch)

    batcher = EmbedBatcher(embed, window_s=0.5, max_batch=64)
    inputs = [torch.rand(3, 2, 2, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    out: list = [None] * 8
    start = threading.Barrier(8)

    def caller(i: int) -> None:
        with batcher.expecting():  # on its way (decoding, in a server): a batch waits for it
            start.wait()
            out[i] = batcher.embed([inputs[i], inputs[(i + 1) % 8]])

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for i in range(8):  # each caller gets its own rows, in its order
        expected = np.stack([inputs[i].double().sum(dim=(1, 2)), inputs[(i + 1) % 8].double()
                             .sum(dim=(1, 2))]).astype(np.float32)  # fmt: skip
        np.testing.assert_allclose(out[i], expected, rtol=1e-6)
    assert calls == [16]  # the batch waited for every announced caller: one forward pass
    stats = batcher.stats()
    assert stats["forward_calls"] == 1 and stats["images_embedded"] == 16
    assert stats["largest_batch"] == 16
    batcher.close()


def test_a_request_alone_does_not_wait_for_the_window():
    batcher = EmbedBatcher(_row_sums, window_s=5.0)
    start = time.monotonic()
    with batcher.expecting():
        out = batcher.embed([torch.ones(3, 1, 1)])
    assert time.monotonic() - start < 2.5  # nobody else on the way: no 5 s wait
    np.testing.assert_array_equal(out, [[1.0, 1.0, 1.0]])
    assert batcher._coming == 0  # its announcement was withdrawn
    batcher.close()


def test_batcher_respects_max_batch_and_hands_errors_to_every_caller():
    calls: list[int] = []

    def embed(batch: torch.Tensor) -> np.ndarray:
        calls.append(len(batch))
        return _row_sums(batch)

    batcher = EmbedBatcher(embed, window_s=0.2, max_batch=3)
    with batcher.expecting():
        out = batcher.embed([torch.full((3, 1, 1), float(i)) for i in range(7)])
    np.testing.assert_array_equal(out[:, 0], np.arange(7, dtype=np.float32))
    assert calls == [3, 3, 1]
    batcher.close()

    def broken(batch: torch.Tensor) -> np.ndarray:
        raise RuntimeError("the model failed")

    failing = EmbedBatcher(broken, window_s=0.0)
    with pytest.raises(RuntimeError, match="the model failed"):
        failing.embed([torch.zeros(3, 1, 1), torch.zeros(3, 1, 1)])
    assert failing.stats()["forward_calls"] == 0
    failing.close()
    with pytest.raises(ValueError, match="batch size"):
        EmbedBatcher(embed, max_batch=0)


def _png(image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_an_upload_decodes_as_the_same_file_read_from_disk(tmp_path):
    from PIL import Image

    from rankedlist.data import read_rgb

    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8), "RGBA")
    palette = Image.fromarray(rng.integers(0, 8, (12, 12), dtype=np.uint8), "P")
    palette.info["transparency"] = 3
    for name, image in {"rgba": rgba, "palette": palette, "gray": rgba.convert("L")}.items():
        path = tmp_path / f"{name}.png"
        image.save(path)
        got = decode_upload(path.read_bytes(), path.name, UploadLimits())
        assert got.mode == "RGB"
        assert np.array_equal(np.asarray(got), np.asarray(read_rgb(path))), name


@pytest.mark.parametrize(
    ("name", "make", "status", "words"),
    [
        ("empty", lambda: b"", 400, "is empty"),
        ("text", lambda: b"GIF89a but not really", 415, "send"),
        ("bytes", lambda: b"\x89PNG" + bytes(2000), 413, "2,004 bytes"),
        ("pixels", lambda: _png(__import__("PIL.Image").Image.new("L", (101, 100))), 413,
         "101 x 100 = 10,100 pixels"),
        ("truncated", lambda: _png(__import__("PIL.Image").Image.new("RGB", (90, 90), 7))[:60],
         415, "could not be decoded"),
    ],
)  # fmt: skip
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_bad_upload_is_rejected_with_its_status_and_one_line(name, make, status, words):
    limits = UploadLimits(max_image_bytes=2000, max_pixels=10_000)
    with pytest.raises(UploadRejected) as caught:
        decode_upload(make(), f"{name}.png", limits)
    assert caught.value.status == status
    assert words in caught.value.reason and f"'{name}.png'" in caught.value.reason
    assert "\n" not in caught.value.reason


def test_a_decompression_bomb_is_refused_by_pils_guard_too():
    from PIL import Image

    bomb = _png(Image.new("1", (3000, 3000)))  # 9 M pixels in about a kilobyte
    with pytest.raises(UploadRejected) as caught:
        decode_upload(bomb, "bomb.png", UploadLimits(max_pixels=1_000_000))
    assert caught.value.status == 413
    assert Image.MAX_IMAGE_PIXELS == 1_000_000  # the guard is set to the server's limit
    with pytest.raises(Image.DecompressionBombError):  # and it refuses, by itself, above twice
        Image.open(io.BytesIO(bomb))


@pytest.mark.parametrize("item_id", ["0", "41", "007"])
def test_item_ids_are_row_numbers(item_id):
    assert parse_item_id(item_id, 42) == int(item_id)


@pytest.mark.parametrize(
    "item_id", ["42", "-1", "+1", "1.0", "1e1", "0x1", "..", "../0", "/etc/passwd", "", " 1",
                "١", "99999999999999999999"],
)  # fmt: skip
def test_anything_else_is_not_an_item(item_id):
    with pytest.raises(ItemNotFound):
        parse_item_id(item_id, 42)


# --------------------------------------------------------------------------- the index source


def _index(n: int, fingerprint: str = "aaaa", seed: int = 0):
    from rankedlist.retrieval import EmbeddingIndex

    emb = np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)
    meta = {"model_fingerprint": fingerprint, "classes": ["a", "b", "c"]}
    return EmbeddingIndex(emb, [f"item{i}.png" for i in range(n)], np.arange(n) % 3, meta)


def test_the_source_reloads_a_new_version_and_refuses_another_models(tmp_path):
    from rankedlist.retrieval.index_models import check_index_model

    folder = tmp_path / "idx"
    _index(10).save(folder)

    def same_model(index) -> None:
        check_index_model(index, "aaaa", ("model.onnx",), "--model", folder)

    source = folder_index_source(folder, same_model)
    assert len(source.current()) == 10 and source.reloads == 0
    _index(13, seed=1).save(folder)  # what `index add` does: a new folder swapped in
    assert len(source.current()) == 13 and source.reloads == 1
    np.testing.assert_array_equal(source.current().embeddings, _index(13, seed=1).embeddings)
    _index(20, fingerprint="bbbb").save(folder)  # rebuilt with another model: refused
    assert len(source.current()) == 13
    assert "not the model that built" in source.last_error and "still serving" in source.last_error
    folder.rename(tmp_path / "moved")  # missing for a moment: the current one stays
    assert len(source.current()) == 13
    (tmp_path / "moved").rename(folder)
    _index(15, seed=2).save(folder)
    assert len(source.current()) == 15 and source.last_error is None


def test_a_reader_never_sees_a_half_written_index(tmp_path):
    from rankedlist.retrieval import EmbeddingIndex

    folder = tmp_path / "idx"
    sizes = list(range(5, 25))
    _index(sizes[0], seed=sizes[0]).save(folder)
    source = IndexSource(lambda: EmbeddingIndex.load(folder), lambda: folder_version(folder))
    done = threading.Event()

    def writer() -> None:
        for n in sizes[1:]:
            _index(n, seed=n).save(folder)
        done.set()

    seen, thread = set(), threading.Thread(target=writer)
    thread.start()
    while not done.is_set() or not seen or max(seen) != sizes[-1]:
        index = source.current()
        n = len(index)
        assert n in sizes and len(index.items) == n == len(index.labels)
        np.testing.assert_array_equal(index.embeddings, _index(n, seed=n).embeddings)
        seen.add(n)
        time.sleep(0.001)
    thread.join()
    assert source.last_error is None and max(seen) == sizes[-1]


# --------------------------------------------------------------------------- the command


def _run(argv: list[str], capsys) -> tuple[int, str]:
    from rankedlist.cli.main import main

    code = main(argv)
    return code, capsys.readouterr().err


def test_a_bad_serve_command_is_one_error_line(tmp_path, capsys):
    import socket

    missing = tmp_path / "nothing"
    code, err = _run(["serve", "--index", str(missing)], capsys)
    assert code == 2 and err.startswith("error: index folder") and "index build" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = _run(["serve", "--index", str(missing), "--port", str(port)], capsys)
    assert code == 2 and f"port {port} on 127.0.0.1 is in use" in err and "--port" in err
    for option, value, words in [
        ("--workers", "0", "--workers must be at least 1"),
        ("--port", "70000", "--port must be between 1 and 65535"),
        ("--max-pixels", "0", "--max-pixels must be at least 1"),
        ("--batch-window-ms", "-1", "--batch-window-ms must be between 0 and 1000"),
        ("--host", "no.such.host.invalid", "--host no.such.host.invalid is not an address"),
    ]:
        code, err = _run(["serve", "--index", str(missing), option, value], capsys)
        assert code == 2 and words in err and err.count("\n") == 1, (option, err)
    _index(4).save(tmp_path / "idx")
    checkpoint = tmp_path / "run.pt"
    checkpoint.write_bytes(b"")
    code, err = _run(["serve", "--index", str(tmp_path / "idx"), "--model", str(checkpoint)],
                     capsys)  # fmt: skip
    assert code == 2 and "looks like a checkpoint" in err and "--checkpoint" in err
    code, err = _run(["serve", "--index", str(tmp_path / "idx")], capsys)
    assert code == 2 and "does not record the model" in err


def test_every_serve_option_has_help():
    from rankedlist.cli.main import build_parser, subcommand_parsers

    serve = subcommand_parsers(build_parser())["serve"]
    options = [a for a in serve._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in options} >= {"index", "model", "checkpoint", "host", "port",
                                         "workers", "batch_window_ms"}  # fmt: skip
    assert all(a.help for a in options)
    assert serve.parse_args(["--index", "x"]).host == "127.0.0.1"


# --------------------------------------------------------------------------- another backend


class _SearchOnlyIndex:
    """An index with only what serve needs (as a Milvus collection offers): search_items,
    its size, method and meta; no item_path."""

    def __init__(self, index) -> None:
        self._index, self.meta, self.method = index, index.meta, "other"

    def __len__(self) -> int:
        return len(self._index)

    def search_items(self, queries, k: int = 10):
        return self._index.search_items(queries, k)


class _PixelModel:
    """Embeds an image as its first 8 pixel values (the test's own, simple model)."""

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x.flatten(1)[:, :8], dim=1)


def test_a_search_only_backend_is_served_with_filters_and_thumbnails(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from rankedlist.retrieval import EmbeddingIndex
    from rankedlist.serve.search_service import SearchService

    rng = np.random.default_rng(3)
    pixels = rng.integers(1, 256, (30, 2, 4, 3), dtype=np.uint8)  # 24 values, 8 embedded
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(tmp_path / f"{i}.png")
    emb = pixels.reshape(30, -1)[:, :8].astype(np.float64)
    labels = np.arange(30) % 3
    meta = {"classes": ["a", "b", "c"], "images_root": str(tmp_path)}
    index = EmbeddingIndex(emb, [f"{i}.png" for i in range(30)], labels, meta)
    backend = _SearchOnlyIndex(index)
    source = IndexSource(lambda: backend, lambda: 1)

    def transform(image):
        return torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)

    model = SimpleNamespace(model=_PixelModel(), transform=transform, meta={}, image_size=4,
                            source=Path("pixels"))  # fmt: skip
    service = SearchService(model, source, window_s=0.0)
    try:
        query = Image.fromarray(rng.integers(1, 256, (2, 4, 3), dtype=np.uint8))
        q = np.asarray(query, dtype=np.float64).transpose(2, 0, 1).reshape(-1)[:8]
        unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        sims = unit @ (q / np.linalg.norm(q))
        order = np.argsort(-sims, kind="stable")
        (hits,) = service.search([query], k=5)
        assert [h["item_id"] for h in hits] == order[:5].tolist()
        np.testing.assert_allclose([h["similarity"] for h in hits], sims[order[:5]], atol=1e-5)
        assert [h["class"] for h in hits] == [["a", "b", "c"][labels[r]] for r in order[:5]]
        (only_c,) = service.search([query], k=4, classes=["c"])
        assert [h["item_id"] for h in only_c] == [r for r in order if labels[r] == 2][:4]
        with pytest.raises(UploadRejected, match="class 'z' is not in this index"):
            service.search([query], k=4, classes=["z"])
        # Thumbnails of the rows answered with, by id; another row is not known.
        row = only_c[0]["item_id"]
        expected = Image.open(tmp_path / f"{row}.png").convert("RGB")
        got = Image.open(io.BytesIO(service.thumbnail(str(row)))).convert("RGB")
        assert np.array_equal(np.asarray(got), np.asarray(expected))
        unanswered = next(r for r in range(30) if r not in {h["item_id"] for h in hits + only_c})
        with pytest.raises(ItemNotFound):
            service.thumbnail(str(unanswered))
    finally:
        service.close()
