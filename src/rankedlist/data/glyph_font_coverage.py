"""Which fonts the glyphs are rendered from, and which characters each font really holds.

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
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Any

MIN_FONT_COVERAGE = 0.25  # a font must verify this share of the candidate characters

#: The 209 candidate characters: ASCII printable, Greek and Russian Cyrillic letters.
DEFAULT_CHARACTERS = (
    "".join(chr(c) for c in range(0x21, 0x7F))
    + "".join(chr(c) for c in range(0x391, 0x3AA) if c != 0x3A2)
    + "".join(chr(c) for c in range(0x3B1, 0x3CA))
    + "\u0401"
    + "".join(chr(c) for c in range(0x410, 0x450))
    + "\u0451"
)
_FONT_SUFFIXES = (".ttf", ".otf")


def default_fonts_dir() -> Path:
    """The fonts inside matplotlib (its ``fonts/ttf`` folder)."""
    import matplotlib  # heavy import, only when rendering

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def font_files(fonts_dir: str | os.PathLike | None) -> list[Path]:
    """The sorted ``.ttf``/``.otf`` files under ``fonts_dir`` (default: matplotlib's fonts)."""
    folder = Path(fonts_dir).expanduser() if fonts_dir is not None else default_fonts_dir()
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


def verified_characters(path: Path, characters: str) -> list[str]:
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


def glyph_fonts(
    fonts_dir: str | os.PathLike | None = None, characters: str | None = None
) -> list[dict[str, Any]]:
    """Every font file considered, with ``file``, ``characters`` (how many it verifiably covers),
    ``used`` and ``reason``."""
    chars = characters or DEFAULT_CHARACTERS
    report = []
    for f in font_files(fonts_dir):
        try:
            n = len(verified_characters(f, chars))
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
