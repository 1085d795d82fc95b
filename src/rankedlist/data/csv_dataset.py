"""A CSV list of images for users' own data: columns ``path``, ``label`` and an optional ``split``.

The file needs a header row naming at least ``path`` and ``label`` (other columns are ignored).
``path`` is relative to ``image_root`` (default: the CSV file's folder) unless absolute;
``label`` is a class name or number (classes sort numerically when every label is an integer,
else by name). The file is UTF-8 (a byte-order mark, as spreadsheets write, is fine).

Every row must have as many fields as the header (quote a field that contains a comma), a
non-empty path and a non-empty label; blank rows (also ones of commas only) are skipped. A row that
breaks a rule raises a ValueError naming the file and its line number (counting the header as line
1), so a stray row cannot become a class of its own and shift the class-disjoint split. Listed
images that do not exist raise
:class:`~rankedlist.data.image_list_dataset.MissingImagesError` with their line numbers.

With a ``split`` column (values ``train``, ``val``, ``test``) the rows say their split; ``val`` rows
are used when ``val_fraction`` is 0, otherwise val classes are carved from the ``train`` rows.
Without it, the split is class-disjoint by a fixed rule: the first classes in sorted order train,
the last ``test_fraction`` (default half) test.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rankedlist.data.image_list_dataset import ImageListDataset, remap_to_contiguous
from rankedlist.data.splits import class_fraction_split, select_class_split

__all__ = ["CSVDataset"]

_SPLITS = ("train", "val", "test")


def _read_rows(csv_path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header's column names and ``(line number, row)`` of every non-blank row, checked."""
    data = csv_path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(
            f"csv: {csv_path}:{line}: not UTF-8 ({err.reason} at byte {err.start}); save the file "
            "as UTF-8 (CSV UTF-8 in a spreadsheet)"
        ) from err
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[tuple[int, dict[str, str]]] = []
    end = 0  # the last line of the previous record: a quoted field can span lines
    try:
        for fields in reader:
            start, end = end + 1, reader.line_num
            fields = [f.strip() for f in fields]
            if not any(fields):  # blank, or only separators (",,", as spreadsheets pad)
                continue
            if header is None:
                header = fields
                if "path" not in header or "label" not in header:
                    raise ValueError(
                        f"csv: {csv_path} needs a header row with the columns 'path' and 'label' "
                        f"(and optionally 'split'), found {header}"
                    )
                twice = sorted({c for c in header if c and header.count(c) > 1})
                if twice:
                    raise ValueError(
                        f"csv: {csv_path}:{start}: the header names {twice} more than once; "
                        "rename or delete the repeated columns"
                    )
                continue
            if len(fields) != len(header):
                raise ValueError(
                    f"csv: {csv_path}:{start}: the row has {len(fields)} field(s), the header "
                    f"{len(header)} ({','.join(header)}); quote a field that contains a comma "
                    "or fix the row"
                )
            row = dict(zip(header, fields, strict=True))
            if not row["path"]:
                raise ValueError(
                    f"csv: {csv_path}:{start}: the path is empty; give the row an image path or "
                    "delete it"
                )
            if not row["label"]:
                raise ValueError(
                    f"csv: {csv_path}:{start}: the label of {row['path']} is empty; give the row "
                    "a class name or number or delete it"
                )
            if "split" in row and row["split"].lower() not in _SPLITS:
                raise ValueError(
                    f"csv: {csv_path}:{start}: split {row['split']!r} is not train, val or "
                    "test; fix the value, or drop the split column for an automatic "
                    "class-disjoint split"
                )
            rows.append((start, row))
    except csv.Error as err:
        raise ValueError(
            f"csv: {csv_path}:{reader.line_num}: {err}; check the quoting on that line"
        ) from err
    if header is None:
        raise ValueError(
            f"csv: {csv_path} is empty; it needs a header row with the columns 'path' and "
            "'label' (and optionally 'split')"
        )
    return header, rows


class CSVDataset(ImageListDataset):
    """Images listed in a CSV file (see the module docstring for the format).

    Args:
        root: the CSV file.
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: applied to the RGB PIL image.
        val_fraction: share of the training classes moved to ``val``.
        test_fraction: share of the classes forming ``test`` when there is no ``split`` column.
        image_root: the folder relative paths start from (default: the CSV's folder).
        skip_corrupt: decode all images now and skip unreadable ones with a warning.
    """

    def __init__(
        self,
        root: str | os.PathLike | None,
        split: str = "train",
        transform: Callable | None = None,
        val_fraction: float = 0.0,
        test_fraction: float = 0.5,
        image_root: str | os.PathLike | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        if root is None:
            raise ValueError("csv needs root=PATH of a CSV file with columns path,label[,split]")
        csv_path = Path(root).expanduser()
        if not csv_path.is_file():
            raise FileNotFoundError(
                f"csv: file {csv_path} not found; expected a CSV file with a header row and the "
                "columns path,label and optionally split"
            )
        if split not in _SPLITS:
            raise ValueError(f"csv: unknown split {split!r}; use 'train', 'val' or 'test'")
        fields, numbered = _read_rows(csv_path)
        if not numbered:
            raise ValueError(f"csv: {csv_path} lists no images")
        rows = [r for _, r in numbered]
        base = Path(image_root).expanduser() if image_root is not None else csv_path.parent
        paths = [Path(r["path"]) if os.path.isabs(r["path"]) else base / r["path"] for r in rows]
        raw = [r["label"] for r in rows]
        try:
            keys = np.array([int(v) for v in raw], dtype=np.int64)
        except ValueError:
            keys = np.array(raw)
        where = f"csv {csv_path}"
        if "split" in fields:
            tags = np.array([r["split"].lower() for r in rows])
            if split == "val" and val_fraction == 0.0 and (tags == "val").any():
                selected = tags == "val"
            else:
                selected = select_class_split(
                    split, tags == "train", tags == "test", keys, val_fraction, where
                )
        else:
            train_mask, test_mask = class_fraction_split(keys, test_fraction)
            selected = select_class_split(split, train_mask, test_mask, keys, val_fraction, where)
        idx = np.flatnonzero(selected)
        if len(idx) == 0:
            raise ValueError(f"csv: the {split!r} split of {csv_path} holds no images")
        labels, classes = remap_to_contiguous(keys[idx])
        super().__init__(
            [paths[i] for i in idx],
            labels,
            classes,
            transform=transform,
            skip_corrupt=skip_corrupt,
            name=f"csv/{split}",
            sources=[f"line {numbered[i][0]} of {csv_path.name}" for i in idx],
            missing_hint=(
                f"Relative paths in {csv_path} start from {base} (the image_root option); "
                "correct the paths or image_root"
            ),
        )
