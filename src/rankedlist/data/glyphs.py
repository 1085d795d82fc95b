"""Glyphs: the embedded default dataset, characters rendered from the fonts inside matplotlib.

No download and no system fonts: matplotlib's wheel ships DejaVu, STIX and Computer Modern faces.
Each character is a class and each font an instance, an Omniglot-like few-shot set that a small CNN
learns in minutes on a CPU. The rules live beside their code, in the order the data flows:

* :mod:`rankedlist.data.glyph_font_coverage`: the candidate characters, the fonts and which
  characters each font verifiably holds;
* :mod:`rankedlist.data.glyph_rendering`: a font's characters drawn into glyph images;
* :mod:`rankedlist.data.glyph_classes`: look-alike classes dropped by measured pixel similarity;
* this module: the render cache and :class:`GlyphDataset`.

Cache. The rendered arrays are cached in ``CACHE_DIR/glyphs``, where ``CACHE_DIR`` is
``cache_dir`` (``get_dataset``'s ``root``, which must then exist) or else ``$RANKEDLIST_CACHE``
(default ``~/.cache/rankedlist``), as ``.npz`` keyed by a hash of the font files (names, sizes,
modification times), the characters, the image size, the renderer version and the Pillow/FreeType
versions, so the second run loads in milliseconds. The kept and dropped classes are cached as JSON
beside it.

Split. The kept classes sorted by code point alternate: even positions train, odd positions test
(88 / 88 at 32 px), so both halves mix the three scripts. ``val_fraction`` carves val classes out of
train (see :mod:`rankedlist.data.splits`).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from rankedlist.data.glyph_classes import select_classes
from rankedlist.data.glyph_font_coverage import (
    DEFAULT_CHARACTERS,
    MIN_FONT_COVERAGE,
    font_files,
)
from rankedlist.data.glyph_rendering import (
    BASELINE_FRACTION,
    EM_FRACTION,
    MIN_INK,
    RENDERER_VERSION,
    SUPERSAMPLE,
    render_font,
)
from rankedlist.data.image_list_dataset import remap_to_contiguous
from rankedlist.data.labeled_image_dataset import LabeledImageDataset
from rankedlist.data.splits import select_class_split
from rankedlist.data.transforms import GlyphsToTensor

# DEFAULT_CHARACTERS and glyph_fonts are defined in glyph_font_coverage and re-exported here, so
# this module's public names are what they were before the split.
__all__ = [
    "GlyphDataset",
    "default_cache_dir",
    "glyph_dropped_classes",
]


def default_cache_dir() -> Path:
    """``$RANKEDLIST_CACHE`` or ``~/.cache/rankedlist``."""
    env = os.environ.get("RANKEDLIST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rankedlist"


def _cache_key(files: Sequence[Path], characters: str, image_size: int) -> str:
    from PIL import ImageFont
    from PIL import __version__ as pil_version

    stats = []
    for f in files:
        st = f.stat()
        stats.append([f.name, st.st_size, st.st_mtime_ns])
    payload = {
        "renderer": RENDERER_VERSION,
        "em": EM_FRACTION,
        "baseline": BASELINE_FRACTION,
        "supersample": SUPERSAMPLE,
        "coverage": MIN_FONT_COVERAGE,
        "pillow": pil_version,
        "freetype": getattr(ImageFont.core, "freetype2_version", ""),
        "size": image_size,
        "chars": characters,
        "fonts": stats,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def _rendered_glyphs(
    fonts_dir: str | os.PathLike | None,
    characters: str,
    image_size: int,
    cache_dir: str | os.PathLike | None,
    use_cache: bool,
) -> dict[str, Any]:
    """All verified (character, font) renderings, from the cache when possible.

    Returns ``ink`` (N, S, S) uint8 (255 = full ink), ``codepoints`` (N,), ``font_index`` (N,),
    ``font_names`` (list of font file names), rows sorted by (code point, font), and
    ``cache_path`` (the .npz, or None when not cached).
    """
    files = font_files(fonts_dir)
    cache_path = None
    if use_cache:
        folder = (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / "glyphs"
        cache_path = (
            folder / f"glyphs-{image_size}px-{_cache_key(files, characters, image_size)}.npz"
        )
        if cache_path.is_file():
            try:
                with np.load(cache_path, allow_pickle=False) as z:
                    return {
                        "ink": z["ink"],
                        "codepoints": z["codepoints"],
                        "font_index": z["font_index"],
                        "font_names": [str(n) for n in z["font_names"]],
                        "cache_path": cache_path,
                    }
            except (OSError, KeyError, ValueError) as err:
                warnings.warn(
                    f"glyphs: ignoring unreadable cache {cache_path}: {err}", stacklevel=2
                )
    inks, cps, fidx, names = [], [], [], []
    for f in files:
        chars, ink = render_font(f, characters, image_size)
        if not chars:
            continue
        # A glyph that rendered no ink (an empty outline) is not an instance of its character.
        visible = ink.reshape(len(chars), -1).max(axis=1) >= MIN_INK
        if not visible.any():
            continue
        inks.append(ink[visible])
        cps.extend(ord(c) for c, v in zip(chars, visible, strict=True) if v)
        fidx.extend([len(names)] * int(visible.sum()))
        names.append(f.name)
    if not names:
        raise ValueError(
            f"glyphs: none of the {len(files)} font files covers at least "
            f"{MIN_FONT_COVERAGE:.0%} of the {len(characters)} characters"
        )
    codepoints = np.array(cps, dtype=np.int64)
    font_index = np.array(fidx, dtype=np.int64)
    order = np.lexsort((font_index, codepoints))
    result = {
        "ink": np.concatenate(inks)[order],
        "codepoints": codepoints[order],
        "font_index": font_index[order],
        "font_names": names,
    }
    if cache_path is not None:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename, so parallel processes (DDP ranks) never read half a file.
            tmp = cache_path.with_name(f"{cache_path.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, **{**result, "font_names": np.array(names)})  # 4 MB: no compression
            os.replace(tmp, cache_path)
        except OSError as err:
            warnings.warn(f"glyphs: cannot write the cache {cache_path}: {err}", stacklevel=2)
            cache_path = None
    result["cache_path"] = cache_path
    return result


def _cached_selection(
    rendered: dict[str, Any], min_instances: int, threshold: float, fraction: float
) -> tuple[list[int], list[dict[str, Any]]]:
    """:func:`select_classes`, stored as JSON beside the render cache so reruns skip it."""
    cache_path = rendered.get("cache_path")
    if cache_path is None:
        return select_classes(rendered, min_instances, threshold, fraction)
    tag = hashlib.sha256(json.dumps([min_instances, threshold, fraction]).encode()).hexdigest()
    sel_path = Path(cache_path).with_name(f"{Path(cache_path).stem}-select-{tag[:12]}.json")
    if sel_path.is_file():
        try:
            saved = json.loads(sel_path.read_text(encoding="utf-8"))
            return [int(c) for c in saved["kept"]], list(saved["dropped"])
        except (OSError, ValueError, KeyError):
            pass  # unreadable: recompute and overwrite
    kept, dropped = select_classes(rendered, min_instances, threshold, fraction)
    try:
        tmp = sel_path.with_name(f"{sel_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"kept": kept, "dropped": dropped}), encoding="utf-8")
        os.replace(tmp, sel_path)
    except OSError:
        pass  # the cache is an optimisation only
    return kept, dropped


def glyph_dropped_classes(
    image_size: int = 32,
    fonts_dir: str | os.PathLike | None = None,
    characters: str | None = None,
    min_instances: int = 8,
    ambiguity_threshold: float = 0.03,
    ambiguity_fraction: float = 0.5,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> list[dict[str, Any]]:
    """The classes the glyph dataset leaves out, each a dict with ``char``, ``codepoint``,
    ``similar_to`` (the kept look-alike, or None) and ``reason`` (what was measured)."""
    rendered = _rendered_glyphs(
        fonts_dir, characters or DEFAULT_CHARACTERS, image_size, cache_dir, use_cache
    )
    return _cached_selection(rendered, min_instances, ambiguity_threshold, ambiguity_fraction)[1]


class GlyphDataset(LabeledImageDataset):
    """Characters as classes, fonts as instances (the rules: this module's docstring and the
    ``glyph_*`` modules it names).

    Args:
        split: ``"train"`` (even positions of the sorted kept classes, minus val), ``"val"`` or
            ``"test"`` (odd positions).
        transform: applied to the RGB PIL image (e.g. ``build_transform("glyphs", train)``).
        image_size: side of the square images in pixels.
        fonts_dir: render from this folder of .ttf/.otf files instead of matplotlib's fonts.
        characters: the candidate characters (default :data:`DEFAULT_CHARACTERS`).
        min_instances: drop characters rendered by fewer fonts than this.
        val_fraction: share of the training classes moved to ``val``.
        val_fold: which disjoint set of val classes (0: the default; see :mod:`.splits`).
        cache_dir: the cache folder; renders go to its ``glyphs`` sub-folder, created when
            missing (default :func:`default_cache_dir`).
        use_cache: read and write the cache.
        ambiguity_threshold, ambiguity_fraction: the near-identity rule for dropping classes.

    Attributes:
        images: (N, S, S) uint8 greyscale, black ink on white.
        labels: (N,) int64, ``0..C-1``. classes: the characters, ``classes[label]``.
        fonts: the font file name of each image. dropped: see :func:`glyph_dropped_classes`.
    """

    def __init__(
        self,
        split: str = "train",
        transform: Callable | None = None,
        image_size: int = 32,
        fonts_dir: str | os.PathLike | None = None,
        characters: str | None = None,
        min_instances: int = 8,
        val_fraction: float = 0.0,
        cache_dir: str | os.PathLike | None = None,
        use_cache: bool = True,
        ambiguity_threshold: float = 0.03,
        ambiguity_fraction: float = 0.5,
        val_fold: int = 0,
    ) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"glyphs: unknown split {split!r}; use 'train', 'val' or 'test'")
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"glyphs: image_size must be an int >= 8, got {image_size!r}")
        if min_instances < 2:
            raise ValueError(f"glyphs: min_instances must be >= 2, got {min_instances}")
        rendered = _rendered_glyphs(
            fonts_dir, characters or DEFAULT_CHARACTERS, image_size, cache_dir, use_cache
        )
        kept, self.dropped = _cached_selection(
            rendered, min_instances, ambiguity_threshold, ambiguity_fraction
        )
        if len(kept) < 2:
            raise ValueError(
                f"glyphs: only {len(kept)} class(es) survive min_instances={min_instances}; "
                "add fonts or characters, or lower min_instances"
            )
        cps = rendered["codepoints"]
        kept_arr = np.array(kept, dtype=np.int64)
        in_kept = np.isin(cps, kept_arr)
        # Fixed class-disjoint rule: alternate the sorted kept classes between train and test.
        test_classes = kept_arr[1::2]
        is_test = np.isin(cps, test_classes)
        rows = select_class_split(
            split, in_kept & ~is_test, in_kept & is_test, cps, val_fraction, "glyphs", val_fold
        )
        idx = np.flatnonzero(rows)
        self.labels, used = remap_to_contiguous(cps[idx])
        self.classes = [chr(c) for c in used]
        self.images = 255 - rendered["ink"][idx]
        self.fonts = [rendered["font_names"][f] for f in rendered["font_index"][idx]]
        self.font_names = list(rendered["font_names"])
        self.transform = transform
        self.split = split
        self.image_size = image_size

    def load_image(self, index: int) -> Image.Image:
        """The untransformed glyph as an RGB ``PIL.Image``."""
        return Image.fromarray(self.images[index], mode="L").convert("RGB")

    def fast_batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(images, labels)`` of the items at ``indices`` made as one batch when the transform
        is the plain :class:`GlyphsToTensor` at the rendered size, else None (then each item goes
        through the transform on its own). Equal to collating ``[self[i] for i in indices]``."""
        t = self.transform
        if not isinstance(t, GlyphsToTensor) or t.size not in (None, self.images.shape[1]):
            return None
        rows = np.asarray(indices, dtype=np.int64)
        images = GlyphsToTensor.from_uint8(self.images[rows])
        return images, torch.from_numpy(np.asarray(self.labels, dtype=np.int64)[rows])

    def __repr__(self) -> str:
        return (
            f"GlyphDataset(split={self.split!r}, images={len(self)}, classes={self.num_classes}, "
            f"fonts={len(self.font_names)}, image_size={self.image_size})"
        )
