"""Scanning image files through the output stage, as ``safeguard scan`` does.

Each file is read once into memory: the bytes that are decoded and checked are the bytes a ``--redact-to``
copy is written from, so a file that changes during the scan cannot slip an unchecked version into the copy.
Every frame of an animated PNG or WebP is checked, and the file's verdict combines them (block wins). JPEG
orientation tags are applied first, so the check sees what a viewer shows.

Under ``redact_to`` an allowed file is copied byte for byte, a blocked one is written redacted with the
preset's method; a blocked file that the method would leave as it is (``flag``, ``raise``, a per-category
``flag``) or withhold is not written at all, and neither is a file that could not be checked. A copy left
there by an earlier scan is deleted in those cases: a flagged or unchecked original never stays in the folder.

Example:
    >>> from safeguard.guard import Guard
    >>> from safeguard.reports.data import find_image_files
    >>> results = list(scan_images(find_image_files(["photos/"]), Guard.create()))  # doctest: +SKIP
    >>> results[0].to_dict()["verdict"]["flagged"]  # doctest: +SKIP
    False
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from safeguard.errors import InputError
from safeguard.guard import Guard
from safeguard.images import to_unit_tensors
from safeguard.reports.data import ImageFile
from safeguard.reports.progress import ProgressBar
from safeguard.verdict import Verdict

__all__ = ["MAX_FRAMES", "ScanResult", "check_image_tensors", "load_image", "scan_images"]

#: PIL format names scanned, with the name used in messages (MPO is how PIL reads many camera JPEGs).
FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "WEBP": "WebP"}
_SAVE_FORMAT = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "WEBP": "WEBP"}
#: An animation with more frames than this is refused rather than checked in part.
MAX_FRAMES = 256


@dataclass
class LoadedImage:
    """A decoded file: its bytes, PIL format, frames as ``(3, H, W)`` tensors in ``[0, 1]`` and frame durations."""

    data: bytes
    format: str
    frames: list[torch.Tensor]
    durations: list[int] = field(default_factory=list)


@dataclass
class ScanResult:
    """What the scan found about one file: a verdict, or the error that kept it from being checked."""

    path: Path
    verdict: Verdict | None = None
    error: str | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    frames: int = 0
    copy: Path | None = None
    withheld: bool = False

    def to_dict(self) -> dict[str, Any]:
        """One JSON object per file: the verdict is shaped like a moderation response (``Verdict.to_dict``)."""
        if self.verdict is None:
            return {"file": str(self.path), "error": self.error, "copy": None}
        return {
            "file": str(self.path),
            "format": self.format,
            "width": self.width,
            "height": self.height,
            "frames": self.frames,
            "verdict": self.verdict.to_dict(),
            "copy": None if self.copy is None else str(self.copy),
            "withheld": self.withheld,
        }


def load_image(path: Path) -> LoadedImage:
    """Read and decode a PNG, JPEG or WebP file.

    Raises:
        InputError: naming the file and what is wrong with it (missing, unreadable, not an image, another
            format, corrupt or truncated, too many frames, too small).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise InputError(f"{path}: no such file") from err
    except OSError as err:
        raise InputError(f"{path}: cannot read it ({err.strerror})") from err
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in FORMATS:
                raise InputError(f"{path}: a {image.format} image; scan reads PNG, JPEG and WebP")
            count = getattr(image, "n_frames", 1)
            if count > MAX_FRAMES:
                raise InputError(f"{path}: {count} frames; scan checks at most {MAX_FRAMES}")
            frames, durations = [], []
            for index in range(count):
                image.seek(index)
                frames.append(ImageOps.exif_transpose(image))  # a decoded copy, turned as viewers show it
                durations.append(int(image.info.get("duration", 0)))
            fmt = image.format
    except UnidentifiedImageError as err:
        raise InputError(f"{path}: not a PNG, JPEG or WebP image (PIL recognises no image format in it)") from err
    except InputError:
        raise
    # PIL reports broken files as OSError ("image file is truncated"), SyntaxError ("broken PNG file"),
    # ValueError, EOFError or DecompressionBombError, depending on the decoder.
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        raise InputError(f"{path}: corrupt or truncated {FORMATS.get(_sniff(data), 'image')} ({err})") from err
    try:
        tensors = to_unit_tensors(frames)
    except InputError as err:
        raise InputError(f"{path}: {err}") from err
    return LoadedImage(data, fmt, tensors, durations)


def check_image_tensors(guard: Guard, tensors: Sequence[torch.Tensor]) -> list[Verdict]:
    """One verdict per ``(3, H, W)`` tensor; tensors of one size are checked together as a batch.

    Example:
        >>> import torch
        >>> from safeguard.guard import Guard
        >>> [v.blocked for v in check_image_tensors(Guard.create(), [torch.full((3, 64, 64), 0.5)])]
        [False]
    """
    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, tensor in enumerate(tensors):
        by_size[(tensor.shape[-2], tensor.shape[-1])].append(i)
    verdicts: dict[int, Verdict] = {}
    for indices in by_size.values():
        batch = torch.stack([tensors[i] for i in indices])
        verdicts.update(zip(indices, guard.check_images(batch), strict=True))
    return [verdicts[i] for i in range(len(tensors))]


def scan_images(
    files: Sequence[ImageFile],
    guard: Guard,
    *,
    redact_to: Path | None = None,
    batch_size: int = 16,
    progress: ProgressBar | None = None,
) -> Iterator[ScanResult]:
    """Check each file with the guard's output stage; yield one :class:`ScanResult` per file, in order.

    Files that cannot be read give a result with ``error`` set, and the scan goes on with the rest.

    Raises:
        InputError: a copy under ``redact_to`` would overwrite a scanned file.
    """
    if redact_to is not None:
        _refuse_copies_inside_scanned(redact_to, files)
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        loaded: list[LoadedImage | InputError] = []
        for item in chunk:
            try:
                loaded.append(load_image(item.path))
            except InputError as err:
                loaded.append(err)
        frames = [t for image in loaded if isinstance(image, LoadedImage) for t in image.frames]
        frame_verdicts = iter(check_image_tensors(guard, frames)) if frames else iter(())
        for item, image in zip(chunk, loaded, strict=True):
            if isinstance(image, InputError):
                result = ScanResult(item.path, error=str(image))
                if redact_to is not None:
                    (redact_to / item.relative).unlink(missing_ok=True)
            else:
                verdicts = [next(frame_verdicts) for _ in image.frames]
                height, width = image.frames[0].shape[-2:]
                result = ScanResult(
                    item.path, Verdict.combine(verdicts), None, FORMATS[image.format], width, height, len(verdicts)
                )
                if redact_to is not None:
                    _write_copy(guard, image, verdicts, redact_to / item.relative, result)
            yield result
        if progress is not None:
            progress.advance(len(chunk))


def _write_copy(guard: Guard, image: LoadedImage, verdicts: list[Verdict], target: Path, result: ScanResult) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if not any(v.blocked for v in verdicts):
        target.write_bytes(image.data)
        result.copy = target
        return
    redacted = _redacted_frames(guard, image, verdicts)
    if redacted is None:
        target.unlink(missing_ok=True)
        result.withheld = True
        return
    pictures = [Image.fromarray(frame) for frame in redacted]
    options: dict[str, Any] = {"format": _SAVE_FORMAT[image.format]}
    if len(pictures) > 1:
        options.update(save_all=True, append_images=pictures[1:], duration=image.durations, loop=0)
    pictures[0].save(target, **options)
    result.copy = target


def _redacted_frames(guard: Guard, image: LoadedImage, verdicts: list[Verdict]) -> list[np.ndarray] | None:
    """The frames with the blocked ones redacted as uint8 arrays, or None when the file must be withheld."""
    if guard.settings.output.redaction in ("flag", "raise"):
        return None  # these leave the image as it is: a copy of it would be the flagged original
    batch = torch.stack(image.frames)
    redacted, withheld = guard.apply_redaction(batch, verdicts)
    blocked = [i for i, v in enumerate(verdicts) if v.blocked]
    if withheld or any(torch.equal(redacted[i], batch[i]) for i in blocked):
        return None
    return [(frame.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for frame in redacted]


def _refuse_copies_inside_scanned(redact_to: Path, files: Sequence[ImageFile]) -> None:
    scanned = {item.path.resolve(): item.path for item in files}
    for item in files:
        original = scanned.get((redact_to / item.relative).resolve())
        if original is not None:
            raise InputError(f"--redact-to {redact_to} would write the copy of {item.path} over {original}")


def _sniff(data: bytes) -> str:
    """The PIL format name that a file's first bytes announce, for messages about broken files."""
    if data.startswith(b"\x89PNG"):
        return "PNG"
    if data.startswith(b"\xff\xd8"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return ""
