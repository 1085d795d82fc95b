"""Rendering a font's characters into glyph images.

Pillow's FreeType renderer draws each character at 4x resolution in a fixed em box (font size 0.70
of the image side, baseline at 0.76 of the height, the advance width centred horizontally) and
box-filters it down, so size and vertical position carry meaning: ``-`` and ``_``, ``.`` and ``·``,
``o`` and ``O`` differ. Images are ink arrays (255 = full ink); the dataset shows them as black ink
on white.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from rankedlist.data.glyph_font_coverage import MIN_FONT_COVERAGE, verified_characters

#: Bumped whenever the rendering changes, so stale caches are not reused.
RENDERER_VERSION = 1
EM_FRACTION = 0.70  # font size as a fraction of the image side
BASELINE_FRACTION = 0.76  # baseline height from the top, as a fraction of the image side
SUPERSAMPLE = 4  # render at 4x and box-filter down for clean anti-aliasing
MIN_INK = 16  # a rendered glyph whose darkest pixel is lighter than 255 - MIN_INK is blank


def render_font(path: Path, characters: str, image_size: int) -> tuple[list[str], np.ndarray]:
    """Render the verified ``characters`` of one font: (chars, uint8 array (n, S, S), ink = 255).

    Returns no characters when the font cannot be used (too few verified characters, unreadable).
    """
    from PIL import ImageDraw, ImageFont

    try:
        chars = verified_characters(path, characters)
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
