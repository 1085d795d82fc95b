"""Concurrent requests' images embedded together: one forward pass per short window.

A server thread per request hands its prepared images (``(3, H, W)`` tensors) to
:meth:`EmbedBatcher.embed` and waits. One worker thread takes the first waiting image, collects
whatever else arrives within ``window_s`` (up to ``max_batch`` images), embeds them in one call
of the model and hands each request its rows. The window is only waited while another request
is on its way (announced by :meth:`EmbedBatcher.expecting` while it decodes its uploads): a
request alone is embedded at once. Under load the model is busy while requests queue, so
batches form without the window. The counters (:meth:`stats`) show the batches that formed.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = ["EmbedBatcher"]

_STOP = object()


class EmbedBatcher:
    """Batch the images of concurrent callers into calls of ``embed_batch``.

    Args:
        embed_batch: ``(B, 3, H, W)`` tensor -> ``(B, D)`` float32 numpy array (the model's
            embedding, called from the worker thread only).
        window_s: how long the first image of a batch waits for others.
        max_batch: the most images in one call.
    """

    def __init__(
        self, embed_batch: Callable[[Any], np.ndarray], window_s: float = 0.005, max_batch: int = 32
    ) -> None:
        if window_s < 0:
            raise ValueError(f"the batching window must be at least 0 seconds, got {window_s}")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"the batch size must be a positive integer, got {max_batch!r}")
        self._embed_batch = embed_batch
        self.window_s = float(window_s)
        self.max_batch = max_batch
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._forward_calls = 0
        self._images = 0
        self._largest = 0
        self._coming = 0  # requests announced by expecting() that have not queued yet
        self._local = threading.local()
        self._thread = threading.Thread(target=self._work, name="rankedlist-embed", daemon=True)
        self._thread.start()

    def embed(self, images: Sequence[Any]) -> np.ndarray:
        """The ``(len(images), D)`` embeddings of ``images`` (each ``(3, H, W)``), in order.

        Blocks until they are embedded; an error of the model is raised here."""
        if not self._thread.is_alive():
            raise RuntimeError("the embedding worker has stopped")
        futures: list[Future] = []
        for image in images:
            future: Future = Future()
            self._queue.put((image, future))
            futures.append(future)
        self._arrived(getattr(self._local, "announced", None))
        return np.stack([f.result() for f in futures])

    @contextmanager
    def expecting(self) -> Iterator[None]:
        """Announce that this thread will call :meth:`embed` (it is decoding its images): a
        batch being collected waits for it, within the window."""
        announced = [True]
        with self._lock:
            self._coming += 1
        self._local.announced = announced
        try:
            yield
        finally:
            self._local.announced = None
            self._arrived(announced)

    def _arrived(self, announced: list[bool] | None) -> None:
        if announced and announced[0]:
            announced[0] = False
            with self._lock:
                self._coming -= 1

    def stats(self) -> dict[str, Any]:
        """Forward calls so far, images embedded, the largest batch, and the settings."""
        with self._lock:
            calls, images, largest = self._forward_calls, self._images, self._largest
        return {
            "window_ms": self.window_s * 1000,
            "max_batch": self.max_batch,
            "forward_calls": calls,
            "images_embedded": images,
            "largest_batch": largest,
            "mean_batch": images / calls if calls else 0.0,
        }

    def close(self) -> None:
        """Stop the worker after the images already queued."""
        self._queue.put(_STOP)
        self._thread.join(timeout=10)

    def _collect(self, first: tuple[Any, Future]) -> tuple[list[tuple[Any, Future]], bool]:
        """The batch that starts with ``first``; and whether a stop came meanwhile."""
        batch = [first]
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self._queue.empty() and not self._coming):
                break  # the window is over, or no other request is on its way
            try:  # short waits: a request that announced itself may arrive, or give up
                item = self._queue.get(timeout=min(remaining, 0.0005))
            except queue.Empty:
                continue
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _work(self) -> None:
        import torch

        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, stop = self._collect(first)
            futures = [f for _, f in batch]
            try:
                rows = self._embed_batch(torch.stack([image for image, _ in batch]))
            except BaseException as err:  # noqa: BLE001 - handed to the callers, who raise it
                for future in futures:
                    future.set_exception(err)
                continue
            with self._lock:
                self._forward_calls += 1
                self._images += len(batch)
                self._largest = max(self._largest, len(batch))
            for future, row in zip(futures, rows, strict=True):
                future.set_result(row)
