"""Glyphs: the embedded default dataset, characters rendered from the fonts inside matplotlib.

No download and no system fonts: matplotlib's wheel ships DejaVu, STIX and Computer Modern faces.
Each character is a class and each font an instance, an Omniglot-like few-shot set that a small CNN
learns in minutes on a CPU.

Characters. ASCII printable (``!`` to ``~``), the Greek letters (U+0391-U+03A9, U+03B1-U+03C9) and
the Russian Cyrillic letters (U+0410-U+044F, Ё, ё): 209 candidates.

Fonts. Every ``.ttf``/``.otf`` file of the fonts folder (matplotlib's ``fonts/ttf`` by default, or
``fonts_dir``). A font renders a character only when its character map really holds it: the cmap
must map the code point to a glyph whose PostScript name means that same character (Adobe Glyph
List, e.g. ``A``, ``uni0416``; compatibility-equivalent names such as DejaVu's ``Omega`` for U+03A9
count). That removes the BaKoMa Computer Modern fonts' TeX-encoded slots (cmr10 maps ``<`` to ``¡``
and ``_`` to a dot accent, cmmi10 maps ``!`` to omega), the LastResort font (one placeholder glyph
for every code point) and no ``.notdef`` box can slip in. A font is used when it verifies at least a
quarter of the candidate characters, which leaves out symbol-only faces (STIXSize*, cmex10, cmsy10)
and faces with no Unicode map (STIXNonUni*, DejaVu*Display). With matplotlib 3.x this keeps 22
faces: 12 DejaVu, 4 STIXGeneral, 6 Computer Modern (cmb10, cmmi10, cmr10, cmss10, cmti10, cmtt10).
:func:`glyph_fonts` lists every file with the reason it is used or not.

Rendering. Pillow's FreeType renderer draws each character at 4x resolution in a fixed em box (font
size 0.70 of the image side, baseline at 0.76 of the height, the advance width centred
horizontally) and box-filters it down, so size and vertical position carry meaning: ``-`` and
``_``, ``.`` and ``·``, ``o`` and ``O`` differ. Images are black ink on white, greyscale,
returned as RGB PIL images. The rendered arrays are cached in ``CACHE_DIR/glyphs``, where
``CACHE_DIR`` is ``cache_dir`` (``get_dataset``'s ``root``, which must then exist) or else
``$RANKEDLIST_CACHE`` (default ``~/.cache/rankedlist``), as ``.npz`` keyed by a hash of the font
files (names, sizes, modification times), the characters, the image size, the renderer version and
the Pillow/FreeType versions, so the second run loads in milliseconds.

Ambiguous classes. A pair of characters is near-identical in a font when the normalised L1 distance
of their ink, ``sum|a - b| / (sum a + sum b)``, is at most ``ambiguity_threshold`` (0.03: identical
outlines give 0, while ``Й`` vs ``И`` or ``Ё`` vs ``Е`` give 0.04-0.08 and ``l`` vs ``I`` 0.06 or
more). When that holds in at least ``ambiguity_fraction`` (half) of the fonts that render both,
retrieval between them is ambiguous. Classes are then kept greedily in code-point order (ASCII,
then Greek, then Cyrillic), and a class is dropped when it is ambiguous with an already kept
one. Classes with fewer than ``min_instances`` fonts are dropped first. At 32 px this drops 33 of
209: the 14 Greek capitals that share Latin shapes (Α Β Ε Ζ Η Ι Κ Μ Ν Ο Ρ Τ Υ Χ), Greek ο, and
Cyrillic А В Е М Н О П(=Π) Р С Т Х а е о р с у х, leaving 176 classes of 16-22 images.
:func:`glyph_dropped_classes` returns the list with the measured reason for each.

Split. The kept classes sorted by code point alternate: even positions train, odd positions test
(88 / 88 at 32 px), so both halves mix the three scripts. ``val_fraction`` carves val classes out of
train (see :mod:`rankedlist.data.splits`).
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rankedlist.data.image_list_dataset import remap_to_contiguous
from rankedlist.data.labeled_image_dataset import LabeledImageDataset
from rankedlist.data.splits import select_class_split

__all__ = [
    "DEFAULT_CHARACTERS",
    "GlyphDataset",
    "default_cache_dir",
    "glyph_dropped_classes",
    "glyph_fonts",
]

#: Bumped whenever the rendering changes, so stale caches are not reused.
RENDERER_VERSION = 1
EM_FRACTION = 0.70  # font size as a fraction of the image side
BASELINE_FRACTION = 0.76  # baseline height from the top, as a fraction of the image side
SUPERSAMPLE = 4  # render at 4x and box-filter down for clean anti-aliasing
MIN_FONT_COVERAGE = 0.25  # a font must verify this share of the candidate characters
MIN_INK = 16  # a rendered glyph whose darkest pixel is lighter than 255 - MIN_INK is blank

DEFAULT_CHARACTERS = (
    "".join(chr(c) for c in range(0x21, 0x7F))
    + "".join(chr(c) for c in range(0x391, 0x3AA) if c != 0x3A2)
    + "".join(chr(c) for c in range(0x3B1, 0x3CA))
    + "\u0401"
    + "".join(chr(c) for c in range(0x410, 0x450))
    + "\u0451"
)
_FONT_SUFFIXES = (".ttf", ".otf")


def default_cache_dir() -> Path:
    """``$RANKEDLIST_CACHE`` or ``~/.cache/rankedlist``."""
    env = os.environ.get("RANKEDLIST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rankedlist"


def _default_fonts_dir() -> Path:
    import matplotlib  # heavy import, only when rendering

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _font_files(fonts_dir: str | os.PathLike | None) -> list[Path]:
    folder = Path(fonts_dir).expanduser() if fonts_dir is not None else _default_fonts_dir()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"glyphs: fonts folder {folder} does not exist; pass fonts_dir= a folder of .ttf/.otf "
            "files (or leave it unset to use the fonts inside matplotlib)"
        )
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in _FONT_SUFFIXES and not p.name.startswith(".")
    )
    if not files:
        raise FileNotFoundError(f"glyphs: no .ttf or .otf font files in {folder}")
    return files


def _verified_characters(path: Path, characters: str) -> list[str]:
    """The characters whose cmap entry in ``path`` names a glyph meaning that character."""
    from fontTools import agl  # the Adobe Glyph List; fontTools ships with matplotlib
    from matplotlib.ft2font import FT2Font

    # FreeType looks up single code points without decoding the whole cmap (LastResort's cmap
    # covers all of Unicode and takes seconds to decode in pure Python).
    font = FT2Font(str(path))
    ok = []
    for ch in characters:
        index = font.get_char_index(ord(ch))
        if index == 0:  # .notdef: not covered
            continue
        # agl.toUnicode understands AGL names and uniXXXX/uXXXXX; NFKC folds e.g. OHM SIGN to Omega
        if unicodedata.normalize("NFKC", agl.toUnicode(font.get_glyph_name(index))) == ch:
            ok.append(ch)
    return ok


def _render_font(path: Path, characters: str, image_size: int) -> tuple[list[str], np.ndarray]:
    """Render the verified ``characters`` of one font: (chars, uint8 array (n, S, S), ink = 255).

    Returns no characters when the font cannot be used (too few verified characters, unreadable).
    """
    from PIL import ImageDraw, ImageFont

    try:
        chars = _verified_characters(path, characters)
    except Exception as err:  # fontTools raises many types on broken files
        warnings.warn(f"glyphs: skipping unreadable font {path}: {err}", stacklevel=2)
        return [], np.zeros((0, image_size, image_size), np.uint8)
    if len(chars) < MIN_FONT_COVERAGE * len(characters):
        return [], np.zeros((0, image_size, image_size), np.uint8)
    big = image_size * SUPERSAMPLE
    font = ImageFont.truetype(str(path), size=int(round(EM_FRACTION * big)))
    out = np.zeros((len(chars), image_size, image_size), np.uint8)
    for i, ch in enumerate(chars):
        canvas = Image.new("L", (big, big), 0)
        x = (big - font.getlength(ch)) / 2.0
        ImageDraw.Draw(canvas).text(
            (x, BASELINE_FRACTION * big), ch, fill=255, font=font, anchor="ls"
        )
        out[i] = np.asarray(canvas.resize((image_size, image_size), Image.Resampling.BOX))
    return chars, out


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
    files = _font_files(fonts_dir)
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
        chars, ink = _render_font(f, characters, image_size)
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


def _describe(cp: int) -> str:
    return f"{chr(cp)!r} (U+{cp:04X} {unicodedata.name(chr(cp), '?')})"


def _select_classes(
    rendered: dict[str, Any],
    min_instances: int,
    threshold: float,
    fraction: float,
) -> tuple[list[int], list[dict[str, Any]]]:
    """Kept code points (sorted) and the dropped ones with their measured reasons."""
    cps = rendered["codepoints"]
    fonts = rendered["font_index"]
    ink = rendered["ink"].reshape(len(cps), -1).astype(np.float32) / 255.0
    classes, counts = np.unique(cps, return_counts=True)
    dropped: list[dict[str, Any]] = []
    for cp, n in zip(classes, counts, strict=True):
        if n < min_instances:
            dropped.append(
                {
                    "char": chr(cp),
                    "codepoint": f"U+{cp:04X}",
                    "similar_to": None,
                    "reason": f"rendered by only {n} font(s), fewer than min_instances="
                    f"{min_instances}",
                }
            )
    candidates = classes[counts >= min_instances]
    pos = {int(c): i for i, c in enumerate(candidates)}
    n = len(candidates)
    near = np.zeros((n, n), np.int64)  # fonts in which the pair is near-identical
    common = np.zeros((n, n), np.int64)  # fonts that render both
    for f in np.unique(fonts):
        rows = np.flatnonzero((fonts == f) & np.isin(cps, candidates))
        if len(rows) == 0:
            continue
        idx = np.array([pos[int(c)] for c in cps[rows]], dtype=np.int64)
        x = ink[rows]
        mass = x.sum(axis=1)
        denom = np.maximum(mass[:, None] + mass[None, :], 1e-6)
        common[np.ix_(idx, idx)] += 1
        # Exact L1 for all pairs is slow (22 fonts x 209^2 x 1024); since ink lies in [0, 1],
        # L1 >= squared L2, which BLAS gives fast, so only pairs passing that bound can be near.
        sq = (x * x).sum(axis=1)
        l2sq = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
        a, b = np.nonzero(np.triu(l2sq <= threshold * denom + 1e-3, k=1))
        if len(a):
            l1 = np.abs(x[a] - x[b]).sum(axis=1) / denom[a, b]
            hit = l1 <= threshold
            near[idx[a[hit]], idx[b[hit]]] += 1
            near[idx[b[hit]], idx[a[hit]]] += 1
    ambiguous = (common > 0) & (near >= fraction * common)
    share = near / np.maximum(common, 1)
    kept: list[int] = []
    kept_pos: list[int] = []
    for i, cp in enumerate(candidates):
        clash = [j for j in kept_pos if ambiguous[i, j]]
        if clash:
            j = max(clash, key=lambda j: share[i, j])
            other = int(candidates[j])
            dropped.append(
                {
                    "char": chr(cp),
                    "codepoint": f"U+{cp:04X}",
                    "similar_to": chr(other),
                    "reason": f"{_describe(int(cp))} renders near-identically to "
                    f"{_describe(other)} in {near[i, j]} of the {common[i, j]} fonts that render "
                    f"both (normalised ink L1 <= {threshold})",
                }
            )
        else:
            kept.append(int(cp))
            kept_pos.append(i)
    dropped.sort(key=lambda d: int(d["codepoint"][2:], 16))
    return kept, dropped


def _cached_selection(
    rendered: dict[str, Any], min_instances: int, threshold: float, fraction: float
) -> tuple[list[int], list[dict[str, Any]]]:
    """:func:`_select_classes`, stored as JSON beside the render cache so reruns skip it."""
    cache_path = rendered.get("cache_path")
    if cache_path is None:
        return _select_classes(rendered, min_instances, threshold, fraction)
    tag = hashlib.sha256(json.dumps([min_instances, threshold, fraction]).encode()).hexdigest()
    sel_path = Path(cache_path).with_name(f"{Path(cache_path).stem}-select-{tag[:12]}.json")
    if sel_path.is_file():
        try:
            saved = json.loads(sel_path.read_text(encoding="utf-8"))
            return [int(c) for c in saved["kept"]], list(saved["dropped"])
        except (OSError, ValueError, KeyError):
            pass  # unreadable: recompute and overwrite
    kept, dropped = _select_classes(rendered, min_instances, threshold, fraction)
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


def glyph_fonts(
    fonts_dir: str | os.PathLike | None = None, characters: str | None = None
) -> list[dict[str, Any]]:
    """Every font file considered, with ``file``, ``characters`` (how many it verifiably covers),
    ``used`` and ``reason``."""
    chars = characters or DEFAULT_CHARACTERS
    report = []
    for f in _font_files(fonts_dir):
        try:
            n = len(_verified_characters(f, chars))
            reason = ""
        except Exception as err:  # fontTools raises many types on broken files
            n, reason = 0, f"unreadable: {err}"
        used = n >= MIN_FONT_COVERAGE * len(chars)
        if not reason:
            reason = (
                f"verifies {n} of {len(chars)} characters"
                if used
                else f"verifies only {n} of {len(chars)} characters (needs "
                f"{MIN_FONT_COVERAGE:.0%}): symbol-only, non-Unicode or placeholder font"
            )
        report.append({"file": f.name, "characters": n, "used": used, "reason": reason})
    return report


class GlyphDataset(LabeledImageDataset):
    """Characters as classes, fonts as instances (see the module docstring for every rule).

    Args:
        split: ``"train"`` (even positions of the sorted kept classes, minus val), ``"val"`` or
            ``"test"`` (odd positions).
        transform: applied to the RGB PIL image (e.g. ``build_transform("glyphs", train)``).
        image_size: side of the square images in pixels.
        fonts_dir: render from this folder of .ttf/.otf files instead of matplotlib's fonts.
        characters: the candidate characters (default :data:`DEFAULT_CHARACTERS`).
        min_instances: drop characters rendered by fewer fonts than this.
        val_fraction: share of the training classes moved to ``val``.
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
            split, in_kept & ~is_test, in_kept & is_test, cps, val_fraction, "glyphs"
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

    def __repr__(self) -> str:
        return (
            f"GlyphDataset(split={self.split!r}, images={len(self)}, classes={self.num_classes}, "
            f"fonts={len(self.font_names)}, image_size={self.image_size})"
        )
