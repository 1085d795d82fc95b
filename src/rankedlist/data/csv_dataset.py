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

Leakage checks (the protocol is class-disjoint, as for CUB and Cars). Whichever split is asked for,
the whole file is checked: an image listed in two splits (the same path after joining it to
``image_root``), and with a ``split`` column a class in two of ``train``, ``val`` and ``test``,
raise a ValueError naming the file, the first offending line and the earlier line it clashes with.
A path listed twice within the split being loaded is a warning (the count and the first lines):
the copies are separate samples, each other's positive in training and each other's nearest
neighbour in evaluation.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rankedlist.data.image_list_dataset import ImageListDataset, remap_to_contiguous
from rankedlist.data.splits import class_fraction_split, select_class_split

__all__ = ["CSVDataset"]

_SPLITS = ("train", "val", "test")
_REPEATS_SHOWN = 5  # repeated rows named in the warning


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


def _check_disjoint(
    csv_path: Path,
    lines: list[int],
    rows: list[dict[str, str]],
    paths: list[Path],
    tags: np.ndarray,
    classes: list | None,
) -> None:
    """Raise at the first row (in file order) whose image, or (given the rows' ``classes``, for
    a file with a split column) whose class, an earlier row put in another split."""
    first_path: dict[str, int] = {}
    first_class: dict[object, int] = {}
    put = tags.tolist()
    for i, tag in enumerate(put):
        j = first_path.setdefault(os.path.normpath(paths[i]), i)
        if put[j] != tag:
            raise ValueError(
                f"csv: {csv_path}:{lines[i]}: the image {rows[i]['path']} is in the {tag} split "
                f"here and in the {put[j]} split on line {lines[j]}, so it leaks from one to the "
                "other; list each image in one split only (delete one of the two rows)"
            )
        if classes is None:
            continue
        j = first_class.setdefault(classes[i], i)
        if put[j] != tag:
            label = rows[i]["label"]
            raise ValueError(
                f"csv: {csv_path}:{lines[i]}: class {label!r} is in the {tag} split here and in "
                f"the {put[j]} split on line {lines[j]}; the splits must be class-disjoint (no "
                f"class in two of train, val and test): give every row of class {label!r} the "
                "same split"
            )


def _warn_repeated_paths(csv_path: Path, split: str, lines: list[int], paths: list[Path]) -> None:
    """Warn once when rows of the loaded split list an image that an earlier row lists."""
    first: dict[str, int] = {}
    repeats: list[tuple[int, int]] = []
    for line, path in zip(lines, paths, strict=True):
        key = os.path.normpath(path)
        if key in first:
            repeats.append((line, first[key]))
        else:
            first[key] = line
    if not repeats:
        return
    shown = ", ".join(f"line {a} repeats line {b}" for a, b in repeats[:_REPEATS_SHOWN])
    more = len(repeats) - _REPEATS_SHOWN
    shown += f" and {more} more" if more > 0 else ""
    warnings.warn(
        f"csv: {csv_path}: {len(repeats)} row(s) of the {split} split list an image already "
        f"listed ({shown}); each copy counts as another image of its class, the others' "
        "positive in training and nearest neighbour in evaluation: delete the repeated rows",
        stacklevel=4,
    )


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
        val_fold: which disjoint set of val classes (0: the default; see :mod:`.splits`).
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
        val_fold: int = 0,
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
        lines = [line for line, _ in numbered]
        if "split" in fields:
            tags = np.array([r["split"].lower() for r in rows])
            _check_disjoint(csv_path, lines, rows, paths, tags, keys.tolist())
            if split == "val" and val_fraction == 0.0 and (tags == "val").any():
                selected = tags == "val"
            else:
                selected = select_class_split(
                    split, tags == "train", tags == "test", keys, val_fraction, where, val_fold
                )
        else:
            train_mask, test_mask = class_fraction_split(keys, test_fraction)
            tags = np.where(train_mask, "train", "test")
            _check_disjoint(csv_path, lines, rows, paths, tags, None)
            selected = select_class_split(
                split, train_mask, test_mask, keys, val_fraction, where, val_fold
            )
        idx = np.flatnonzero(selected)
        if len(idx) == 0:
            raise ValueError(f"csv: the {split!r} split of {csv_path} holds no images")
        _warn_repeated_paths(csv_path, split, [lines[i] for i in idx], [paths[i] for i in idx])
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
