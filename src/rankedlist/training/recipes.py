"""Where recipes live and how a recipe name becomes a file: ``./configs`` (the user's own, first),
then the recipes shipped inside the package."""

from __future__ import annotations

from pathlib import Path

import yaml

__all__ = [
    "find_recipe",
    "list_recipes",
    "recipe_dirs",
    "shipped_recipe",
    "shipped_recipes_dir",
]


def shipped_recipes_dir() -> Path:
    """The recipes inside the package (``rankedlist/configs``), in any install."""
    from importlib.resources import files

    # A wheel installs into a folder, so the resource is a real path (no zip import here).
    return Path(str(files("rankedlist") / "configs"))


def _in_folder(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.yaml``, whichever is a file first."""
    for candidate in (folder / name, folder / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    return None


def shipped_recipe(name: str) -> Path | None:
    """The shipped recipe called ``name`` (with or without ``.yaml``), or None; what a recipe's
    ``base: name`` falls back to when no such file sits beside it."""
    return _in_folder(shipped_recipes_dir(), name)


def recipe_dirs() -> list[Path]:
    """The folders searched for recipe names, in order, each once."""
    out: list[Path] = []
    for d in (Path.cwd() / "configs", shipped_recipes_dir()):
        if d.is_dir() and d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


def find_recipe(name_or_path: str | Path) -> Path:
    """A config path as given, or a recipe name (``glyphs``) looked up in :func:`recipe_dirs`."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for folder in recipe_dirs():
        found = _in_folder(folder, str(name_or_path))
        if found is not None:
            return found
    raise FileNotFoundError(
        f"config {str(name_or_path)!r} not found (neither a file nor a recipe name); "
        "`rankedlist recipes` lists the shipped recipes"
    )


def list_recipes() -> list[tuple[str, str]]:
    """``(recipe name, description)`` for every recipe (``./configs/*.yaml``, then shipped)."""
    seen: dict[str, str] = {}
    for folder in recipe_dirs():
        for path in sorted(folder.glob("*.yaml")):
            if path.stem in seen:
                continue
            try:
                data = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError:
                data = {}
            seen[path.stem] = (
                str(data.get("description", "")).strip() if isinstance(data, dict) else ""
            )
    return sorted(seen.items())
