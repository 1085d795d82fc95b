"""What the report's pictures share: a pyplot-free figure, its PNG writer, the axes style, labels.

Every picture draws on a bare :class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot, so
no global state, no GUI backend and no figure leak across calls), imports matplotlib inside itself
(``import rankedlist`` stays fast), writes one PNG atomically (:mod:`rankedlist.atomic_write`) and
returns its path, or ``None`` when there is nothing to draw (the report then says why).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from rankedlist.atomic_write import atomic_write

#: Resolution of every picture (the retrieval grid sizes its pixel mosaic with it).
DPI = 110


def new_figure(width: float, height: float, layout: str | None = "constrained") -> Any:
    """A pyplot-free figure on the Agg canvas, ``width`` x ``height`` inches."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as a PNG through :func:`rankedlist.atomic_write.atomic_write`: a full disk or
    an interruption leaves the previous picture (or none), never half a PNG."""
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=DPI, facecolor="white"))


def style_axes(ax: Any) -> None:
    """Light grid behind the data, no top or right spine."""
    ax.grid(True, color="#dddddd", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def class_name(class_names: Sequence[str] | None, label: Any) -> str:
    """The name of class ``label``: ``class_names[label]`` when known, else ``class <label>``."""
    try:
        idx = int(label)
    except (TypeError, ValueError):
        return str(label)
    if class_names is not None and 0 <= idx < len(class_names):
        return str(class_names[idx])
    return f"class {idx}"


def shorten(text: str, n: int) -> str:
    """``text`` cut to ``n`` characters, the last one an ellipsis when cut."""
    return text if len(text) <= n else text[: n - 1] + "…"


#: What a character no font of the picture can draw becomes (the HTML page shows the real name).
MISSING_GLYPH = "□"


@lru_cache(maxsize=1)
def _drawable_code_points() -> frozenset[int]:
    """The code points of the font matplotlib draws the pictures' text with."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    path = font_manager.findfont(font_manager.FontProperties(), fallback_to_default=True)
    return frozenset(FT2Font(path).get_charmap())


def drawable(text: str) -> str:
    """``text`` with each character the pictures' font lacks replaced by :data:`MISSING_GLYPH`.

    A class named in a script the font does not cover (a CJK character in DejaVu Sans) would
    otherwise draw an empty box and a "Glyph missing from font" warning for every label.
    """
    covered = _drawable_code_points()
    return "".join(c if ord(c) in covered or c.isspace() else MISSING_GLYPH for c in text)
