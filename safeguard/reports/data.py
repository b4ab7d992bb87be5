"""Reading what the commands take: prompt files, labelled prompt CSVs, image files and labelled image folders.

Labelled prompt CSVs have the columns ``id,prompt,label,categories,source`` (``../shared/datasets/SOURCES.md``):
``label`` is ``unsafe``, ``borderline`` or ``benign``, ``categories`` a ``|``-joined list of the source's own
category names. A labelled image folder holds one subfolder per label (``unsafe/``, ``borderline/``,
``benign/``), optionally with one subfolder per category inside it.

Example:
    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "prompts.txt").write_text("a red bicycle\\n\\na lighthouse\\n")
    >>> [(p.line, p.prompt) for p in read_prompt_file(folder / "prompts.txt")]
    [(1, 'a red bicycle'), (3, 'a lighthouse')]
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from safeguard.errors import InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "LABELS",
    "PROMPT_COLUMNS",
    "SOURCE_CATEGORIES",
    "ImageFile",
    "LabelledImage",
    "LabelledPrompt",
    "PromptLine",
    "find_image_files",
    "policy_categories_of",
    "prompt_lines",
    "read_labelled_csv",
    "read_labelled_images",
    "read_prompt_file",
    "read_prompts",
    "split_data_paths",
]

PROMPT_COLUMNS = ("id", "prompt", "label", "categories", "source")
LABELS = ("unsafe", "borderline", "benign")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

#: Source category names (lower case) -> policy category ids, for the threshold sweeps: an ``unsafe`` row is a
#: positive of the categories its names map to. Names not listed (bias, illegal activity, harassment, ...) name
#: no single policy category. Every script that reads labelled CSVs maps categories with this table.
SOURCE_CATEGORIES: dict[str, tuple[str, ...]] = {
    "sexual": ("sexual",),
    "violence": ("violence",),
    "violent": ("violence",),
    "self-harm": ("self_harm",),
    "hate": ("hate",),
    "shocking": ("gore",),
}


@dataclass(frozen=True)
class PromptLine:
    """One prompt of a prompt file: its line number (1-based, the header is line 1 of a CSV) and CSV id."""

    line: int
    prompt: str
    id: str | None = None


@dataclass(frozen=True)
class LabelledPrompt:
    """One row of a labelled prompt CSV."""

    id: str
    prompt: str
    label: str
    categories: tuple[str, ...]
    source: str
    file: str


@dataclass(frozen=True)
class ImageFile:
    """A file to scan, and the path its copy takes under ``--redact-to`` (relative to that folder)."""

    path: Path
    relative: Path


@dataclass(frozen=True)
class LabelledImage:
    """An image of a labelled image folder: ``<folder>/<label>/[<category>/]<name>``."""

    path: Path
    label: str
    category: str
    source: str


def read_prompt_file(path: str | Path) -> list[PromptLine]:
    """Prompts from a text file (one per line, blank lines skipped) or, for ``*.csv``, a CSV with a ``prompt`` column.

    :func:`read_prompts` also gives the numbers of the blank lines.

    Raises:
        InputError: the file cannot be read, is not UTF-8, or is a CSV without a ``prompt`` column.

    Example:
        >>> rows = read_prompt_file("../shared/datasets/drawbench.csv")  # doctest: +SKIP
        >>> rows[0]  # doctest: +SKIP
        PromptLine(line=2, prompt='A red colored car.', id='drawbench:0')
    """
    return read_prompts(path)[0]


def read_prompts(path: str | Path) -> tuple[list[PromptLine], list[int]]:
    """The prompts of a text file or CSV, as :func:`read_prompt_file` reads them, and the blank lines' numbers.

    Raises:
        InputError: as :func:`read_prompt_file`.
    """
    path = Path(path)
    return prompt_lines(_read_text(path), csv_rows=path.suffix.lower() == ".csv", where=str(path))


def prompt_lines(text: str, *, csv_rows: bool = False, where: str = "input") -> tuple[list[PromptLine], list[int]]:
    """The prompts of a prompt file's text, and the 1-based numbers of its blank lines (CSV rows), which are skipped.

    Raises:
        InputError: ``csv_rows`` and no ``prompt`` column; ``where`` names the input in the message.

    Example:
        >>> prompt_lines("a red bicycle\\n\\na lighthouse\\n")
        ([PromptLine(line=1, prompt='a red bicycle', id=None), PromptLine(line=3, prompt='a lighthouse', id=None)], [2])
    """
    if not csv_rows:
        rows = [PromptLine(n, line) for n, line in enumerate(text.splitlines(), start=1)]
        return [row for row in rows if row.prompt.strip()], [row.line for row in rows if not row.prompt.strip()]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if "prompt" not in (reader.fieldnames or ()):
        raise InputError(f"{where}: a CSV of prompts needs a 'prompt' column; its columns are {reader.fieldnames}")
    # DictReader's line_num counts physical lines, so a prompt with a line break inside quotes keeps its row's line.
    prompts, blank = [], []
    for row in reader:
        if row["prompt"] and row["prompt"].strip():
            prompts.append(PromptLine(reader.line_num, row["prompt"], row.get("id") or None))
        else:
            blank.append(reader.line_num)
    return prompts, blank


def read_labelled_csv(path: str | Path) -> list[LabelledPrompt]:
    """The rows of a labelled prompt CSV, empty prompts dropped.

    Raises:
        InputError: missing columns, or a label other than unsafe, borderline, benign.

    Example:
        >>> rows = read_labelled_csv("../shared/datasets/drawbench.csv")  # doctest: +SKIP
        >>> rows[0].label, rows[0].source  # doctest: +SKIP
        ('benign', 'drawbench')
    """
    path = Path(path)
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    missing = set(PROMPT_COLUMNS) - set(reader.fieldnames or ())
    if missing:
        raise InputError(f"{path}: missing columns {sorted(missing)} (a labelled CSV has {', '.join(PROMPT_COLUMNS)})")
    rows = []
    for row in reader:
        if not row["prompt"].strip():
            continue
        if row["label"] not in LABELS:
            raise InputError(
                f"{path}, line {reader.line_num}: label {row['label']!r} is not one of {', '.join(LABELS)}"
            )
        categories = tuple(c for c in row["categories"].split("|") if c)
        rows.append(LabelledPrompt(row["id"], row["prompt"], row["label"], categories, row["source"], path.name))
    return rows


def split_data_paths(paths: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """Sort ``safeguard eval``'s DATA into labelled prompt CSVs and labelled image folders.

    A CSV file is a prompt set; a folder contributes its ``*.csv`` files and, when it has label subfolders, is an
    image set.

    Raises:
        InputError: a path that does not exist, or a folder with neither.
    """
    csvs: list[Path] = []
    image_folders: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_file() and path.suffix.lower() == ".csv":
            csvs.append(path)
        elif path.is_dir():
            found = sorted(path.glob("*.csv"))
            labelled = [label for label in LABELS if (path / label).is_dir()]
            if not found and not labelled:
                raise InputError(f"{path}: no *.csv files and no label subfolders ({', '.join(LABELS)})")
            csvs += found
            if labelled:
                image_folders.append(path)
        elif path.exists():
            raise InputError(f"{path}: give labelled prompt CSVs or folders (of CSVs, or of label subfolders)")
        else:
            raise InputError(f"{path}: no such file or folder")
    return csvs, image_folders


def read_labelled_images(folder: str | Path) -> list[LabelledImage]:
    """Every file under the label subfolders of ``folder`` (hidden files skipped), in path order.

    Files directly in a label folder get the category ``(none)``; files deeper get their first subfolder's name.
    """
    folder = Path(folder)
    images = []
    for label in LABELS:
        root = folder / label
        if not root.is_dir():
            continue
        for path in _walk(root):
            parts = path.relative_to(root).parts
            images.append(LabelledImage(path, label, parts[0] if len(parts) > 1 else "(none)", folder.name))
    return images


def find_image_files(paths: Iterable[str | Path]) -> list[ImageFile]:
    """The files to scan: each file given, and every file under each folder given (recursively, hidden ones skipped).

    Every file in a folder is listed, not just those named like images, so that a non-image file in a folder
    is reported instead of silently passed over. A folder's files keep their path under the folder's name.

    Raises:
        InputError: two files would have the same copy path, or a path is neither a file nor a folder.
    """
    files: list[ImageFile] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files += [ImageFile(p, Path(path.resolve().name) / p.relative_to(path)) for p in _walk(path)]
        else:  # a missing file is reported by the scan with the others it cannot read
            files.append(ImageFile(path, Path(path.name)))
    seen: dict[Path, Path] = {}
    for item in files:
        if item.relative in seen:
            raise InputError(f"{seen[item.relative]} and {item.path} would both be copied to {item.relative}")
        seen[item.relative] = item.path
    return files


def policy_categories_of(source_categories: Iterable[str], policy_ids: Iterable[str]) -> set[str]:
    """The policy categories a row's source categories map to (:data:`SOURCE_CATEGORIES`), among ``policy_ids``.

    Example:
        >>> sorted(policy_categories_of(["Violence", "shocking", "bias"], ["violence", "gore", "sexual"]))
        ['gore', 'violence']
    """
    known = set(policy_ids)
    return {c for name in source_categories for c in SOURCE_CATEGORIES.get(name.lower(), ()) if c in known}


def _walk(folder: Path) -> list[Path]:
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / n for n in sorted(names) if not n.startswith(".")]
    return found


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as err:
        raise InputError(f"{path}: no such file") from err
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except OSError as err:
        raise InputError(f"{path}: cannot read it ({err.strerror})") from err
