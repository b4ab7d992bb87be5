"""The invisible watermark: a 64-bit payload hidden in an image's colour, and the detector that reads it back.

Payload (64 bits, most significant first): the marker ``0x5347`` ("SG", 16 bits), the generator id (16 bits, set
by ``disclosure.generator_id``), a content tag (16 bits: the first two bytes of the SHA-256 of the unmarked pixels,
so that with the generator id it names one image in a host's records), and a CRC-16/CCITT of the 48 bits before it.

Transform: that of invisible-watermark's ``dwtDctSvd``, vectorised. Each chroma channel (U and V of BT.601 YUV,
offset 128, as OpenCV writes them) goes through a one-level Haar DWT; its LL band is cut into 4x4 blocks; the
largest singular value ``s`` of each block's 2-D DCT is moved into the lower quarter of its quantisation cell of
width :data:`STEP` for a 0 bit and into the upper quarter for a 1 bit. A block reads back as the soft score
``cos(2 pi (s / STEP - 0.75))``: +1 for a 1, -1 for a 0; its sign is what the library's own decoder reads.

Where it departs from the library, measured in ``scripts/eval_watermark.py``:

- The mark is laid on a grid of fixed size, the largest of :data:`GRIDS` (long sides of 512 and 256 pixels) that
  does not exceed the image's long side, and added to the image as a resampled residual (twice: the second pass
  corrects what resampling, clipping and colour conversion moved). The grid is never larger than the image: a mark
  finer than the image's pixels would not survive JPEG's chroma subsampling. A resized copy is read on each grid in
  turn, so rescaling does not lose the mark. Images whose long side is under 256 pixels are marked on their own
  pixels.
- Both chroma channels carry bits (the library uses U only). Bits are spread over the blocks by a fixed
  permutation and whitened with a fixed key, so a flat or periodic image reads as noise, not as a constant word.
- Float in, float out: the library truncates to 8 bits after each step.
- Soft decoding: each bit is the mean soft score of its blocks. A word is found when the marker is read with at
  most :data:`MARKER_TOLERANCE` wrong bits and the CRC holds, trying the words within two flips of the eight least
  reliable other bits (Chase decoding).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> image = rng.integers(0, 256, (256, 256, 3)).astype(np.uint8)
    >>> payload = Payload(generator_id=7, content_tag=content_tag(image))
    >>> marked = embed(image, payload)
    >>> found = detect(marked.round().astype(np.uint8))
    >>> found.found, found.payload == payload, found.confidence > 0.9
    (True, True, True)
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from dataclasses import dataclass

import cv2
import numpy as np

from safeguard.errors import InputError

__all__ = [
    "GRIDS",
    "MARKER",
    "MIN_BLOCKS_PER_BIT",
    "PAYLOAD_BITS",
    "READ_GRIDS",
    "STEP",
    "Detection",
    "Payload",
    "block_scores",
    "can_mark",
    "content_tag",
    "detect",
    "embed",
    "read_bits",
    "reads_back",
]

MARKER = 0x5347  # "SG"
PAYLOAD_BITS = 64
#: Width of a quantisation cell of a block's largest singular value; invisible-watermark's default scale.
STEP = 36.0
#: Long sides, in pixels, of the grids a mark is laid on: the largest that fits the image; none fits under 256 px.
GRIDS = (512, 256)
#: Where :func:`detect` looks, in order: each grid, then the image's own pixels.
READ_GRIDS = ("512", "256", "native")
#: Fewest blocks per payload bit an image must offer; a 64 x 64 image has exactly this many.
MIN_BLOCKS_PER_BIT = 2
#: Wrong marker bits a found word may have.
MARKER_TOLERANCE = 2
_BLOCK = 4  # side of an LL block, as in the library: 8 x 8 pixels
_PASSES = 2
_POWER_STEPS = 8
_CHASE_BITS = 8  # least reliable bits tried for flips
_CHASE_FLIPS = 2
_SEED = 0x5347_0001  # fixes the permutation and the whitening key; changing it breaks every mark made so far

# BT.601 RGB -> YUV with the offsets OpenCV uses for 8-bit images.
_RGB_TO_YUV = np.array(
    [[0.299, 0.587, 0.114], [-0.14714119, -0.28886916, 0.43601035], [0.61497538, -0.51496512, -0.10001026]]
)
_YUV_TO_RGB = np.linalg.inv(_RGB_TO_YUV)
_OFFSET = np.array([0.0, 128.0, 128.0])


@dataclass(frozen=True)
class Payload:
    """What a mark carries besides the fixed marker: ``generator_id`` and ``content_tag``, 16 bits each."""

    generator_id: int
    content_tag: int

    def __post_init__(self) -> None:
        for name in ("generator_id", "content_tag"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
                raise InputError(f"watermark {name} must be an integer in 0..65535, got {value!r}")

    def bits(self) -> np.ndarray:
        """The 64-bit word: marker, generator id, content tag, CRC-16."""
        head = (MARKER << 32) | (self.generator_id << 16) | self.content_tag
        word = (head << 16) | _crc16(head.to_bytes(6, "big"))
        return np.array([(word >> (63 - i)) & 1 for i in range(PAYLOAD_BITS)], dtype=np.uint8)

    def hex(self) -> str:
        """The whole 64-bit word as 16 hex digits."""
        return np.packbits(self.bits()).tobytes().hex()


@dataclass(frozen=True)
class Detection:
    """What :func:`detect` read.

    Attributes:
        found: a valid word was read.
        payload: its generator id and content tag, or None.
        confidence: for a found mark, the mean agreement of the block scores with the word read (1: every block
            agrees, 0: chance); otherwise the mean strength of the best hard read, a few hundredths on an unmarked
            image.
        bit_errors: wrong bits corrected (marker bits plus flipped bits), or None.
        grid: where it was read: ``"512"`` or ``"256"`` (the grid with that long side) or ``"native"`` (the image's
            own pixels); None when nothing was found.
    """

    found: bool
    payload: Payload | None
    confidence: float
    bit_errors: int | None
    grid: str | None

    def to_dict(self) -> dict[str, object]:
        payload = None
        if self.payload is not None:
            payload = {
                "marker": f"{MARKER:04x}",
                "generator_id": self.payload.generator_id,
                "content_tag": f"{self.payload.content_tag:04x}",
                "word": self.payload.hex(),
            }
        return {
            "found": self.found,
            "payload": payload,
            "confidence": round(self.confidence, 4),
            "bit_errors": self.bit_errors,
            "grid": self.grid,
        }


def _crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def content_tag(rgb: np.ndarray) -> int:
    """The first 16 bits of the SHA-256 of an image's pixels rounded to 8 bits.

    Example:
        >>> content_tag(np.zeros((8, 8, 3), dtype=np.uint8))
        23945
    """
    pixels = np.ascontiguousarray(np.clip(np.round(rgb), 0, 255).astype(np.uint8))
    return int.from_bytes(hashlib.sha256(pixels.tobytes()).digest()[:2], "big")


# -- the transform -------------------------------------------------------------------------------------
@functools.cache
def _dct_matrix() -> np.ndarray:
    """The orthonormal DCT-II matrix that ``cv2.dct`` applies to a 4 x 4 block (``C @ X @ C.T``)."""
    n = _BLOCK
    k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    matrix = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    matrix[0] /= np.sqrt(2.0)
    return matrix


def _grid_shape(height: int, width: int, side: int) -> tuple[int, int]:
    """The shape of the grid with long side ``side`` for an image of this size."""
    scale = side / max(height, width)
    return max(8, round(height * scale)), max(8, round(width * scale))


def _marking_shape(height: int, width: int) -> tuple[int, int] | None:
    """The grid an image of this size is marked on (the largest of :data:`GRIDS` that fits), or None: natively."""
    side = next((side for side in GRIDS if side <= max(height, width)), None)
    return None if side is None else _grid_shape(height, width, side)


def _to_view(channel: np.ndarray, shape: tuple[int, int] | None) -> np.ndarray:
    """A channel on the grid it is read on: resampled to ``shape``, or as it is; cut to whole 8 x 8 blocks."""
    if shape is not None and shape != channel.shape:
        shrink = shape[0] * shape[1] < channel.shape[0] * channel.shape[1]
        channel = cv2.resize(channel, shape[::-1], interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    rows, cols = channel.shape[0] // 8 * 8, channel.shape[1] // 8 * 8
    return channel[:rows, :cols]


def _ll_blocks(view: np.ndarray) -> np.ndarray:
    """The Haar LL band of ``view`` (as ``pywt.dwt2(..., "haar")`` gives it) as ``(n, 4, 4)`` blocks, raster order."""
    rows, cols = view.shape
    ll = view.reshape(rows // 2, 2, cols // 2, 2).sum(axis=(1, 3)) / 2.0
    blocks = ll.reshape(rows // 8, _BLOCK, cols // 8, _BLOCK).swapaxes(1, 2)
    return blocks.reshape(-1, _BLOCK, _BLOCK)


def block_scores(view: np.ndarray) -> np.ndarray:
    """Soft scores in ``[-1, 1]`` of the blocks of one channel (rows and columns multiples of 8), raster order.

    A score's sign is the bit invisible-watermark's ``dwtDctSvd`` decoder reads from the same block.

    Example:
        >>> block_scores(np.full((16, 16), 128.0)).shape
        (4,)
    """
    c = _dct_matrix()
    top, _, _ = _top_singular(c @ _ll_blocks(view.astype(np.float64)) @ c.T)
    return np.cos(2 * np.pi * (np.mod(top, STEP) / STEP - 0.75))


def _top_singular(matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Largest singular value of each ``(n, 4, 4)`` matrix with its left and right vectors.

    Power iteration from the DC direction, which dominates these blocks (the chroma offset of 128 makes the top
    singular value several times the next); the few blocks where it has not converged get a full SVD.
    """
    gram = np.swapaxes(matrices, 1, 2) @ matrices
    right = np.zeros(matrices.shape[:2])
    right[:, 0] = 1.0
    previous = np.zeros(len(matrices))
    for _ in range(_POWER_STEPS):
        right = np.einsum("nij,nj->ni", gram, right)
        norm = np.linalg.norm(right, axis=1)
        right /= norm[:, None]
        norm, previous = np.sqrt(norm), norm
    left = np.einsum("nij,nj->ni", matrices, right)
    top = np.linalg.norm(left, axis=1)
    slow = np.abs(np.sqrt(previous) - top) > 1e-9 * np.maximum(top, 1.0)
    slow |= top < 1e-9
    if slow.any():
        u, s, vt = np.linalg.svd(matrices[slow])
        top[slow], left[slow], right[slow] = s[:, 0], u[:, :, 0] * s[:, :1], vt[:, 0, :]
    left = left / np.maximum(top, 1e-12)[:, None]
    return top, left, right


def _quantised(view: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """The change to ``view`` that moves block ``i``'s largest singular value into the quarter for ``bits[i]``."""
    c = _dct_matrix()
    top, left, right = _top_singular(c @ _ll_blocks(view) @ c.T)
    target = (np.floor(top / STEP) + 0.25 + 0.5 * bits) * STEP
    change = (target - top)[:, None, None] * (left[:, :, None] * right[:, None, :])
    ll_change = c.T @ change @ c  # back from the DCT domain: the change of the LL block
    rows, cols = view.shape
    ll = ll_change.reshape(rows // 8, cols // 8, _BLOCK, _BLOCK).swapaxes(1, 2).reshape(rows // 2, cols // 2)
    # An LL coefficient is the sum of its 2 x 2 pixels over 2: each pixel moves by half the coefficient's change.
    return np.repeat(np.repeat(ll / 2.0, 2, axis=0), 2, axis=1)


@functools.cache
def _layout(blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """For ``blocks`` blocks (U then V, raster order): the payload bit each carries, and its whitening bit."""
    rng = np.random.default_rng([_SEED, blocks])
    carried = rng.permutation(blocks) % PAYLOAD_BITS
    key = rng.integers(0, 2, blocks).astype(np.uint8)
    carried.setflags(write=False)
    key.setflags(write=False)
    return carried, key


def _as_rgb(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise InputError(f"the watermark works on (H, W, 3) RGB arrays, got {type(image).__name__} of shape {shape}")
    return image.astype(np.float64)


def _views(yuv: np.ndarray, shape: tuple[int, int] | None) -> list[np.ndarray]:
    return [_to_view(np.ascontiguousarray(yuv[..., channel]), shape) for channel in (1, 2)]


def can_mark(height: int, width: int) -> bool:
    """Whether an image of this size offers at least :data:`MIN_BLOCKS_PER_BIT` blocks per payload bit.

    Example:
        >>> can_mark(64, 64), can_mark(32, 32)
        (True, False)
    """
    shape = _marking_shape(height, width) or (height, width)
    blocks = 2 * (shape[0] // 8) * (shape[1] // 8)
    return blocks >= MIN_BLOCKS_PER_BIT * PAYLOAD_BITS


def embed(image: np.ndarray, payload: Payload) -> np.ndarray:
    """Mark an ``(H, W, 3)`` RGB image (uint8, or float in ``[0, 255]``); returns float64 in ``[0, 255]``.

    Raises:
        InputError: not an RGB array, or too small to carry the payload (see :func:`can_mark`).
    """
    rgb = _as_rgb(image)
    height, width = rgb.shape[:2]
    if not can_mark(height, width):
        raise InputError(
            f"a {width}x{height} image is too small to carry the watermark: it needs at least "
            f"{MIN_BLOCKS_PER_BIT * PAYLOAD_BITS} blocks of 8 x 8 pixels over its two colour channels (64x64 or larger)"
        )
    shape = _marking_shape(height, width)
    word = payload.bits()
    for _ in range(_PASSES):
        yuv = rgb @ _RGB_TO_YUV.T + _OFFSET
        views = _views(yuv, shape)
        carried, key = _layout(sum(v.size // 64 for v in views))
        bits = word[carried] ^ key
        start = 0
        for channel, view in zip((1, 2), views, strict=True):
            count = view.size // 64
            change = _quantised(view, bits[start : start + count])
            start += count
            if shape is not None:
                change = cv2.resize(change, (width, height), interpolation=cv2.INTER_LINEAR)
                yuv[..., channel] += change
            else:
                yuv[: change.shape[0], : change.shape[1], channel] += change
        rgb = np.clip((yuv - _OFFSET) @ _YUV_TO_RGB.T, 0.0, 255.0)
    return rgb


def reads_back(image: np.ndarray, payload: Payload) -> bool:
    """Whether ``image`` (as :func:`embed` returned it, rounded to 8 bits here) reads back as ``payload`` on the
    grid it was marked on: the one read a marked image needs, cheaper than :func:`detect`'s search.

    Example:
        >>> flat = np.zeros((128, 128, 3))
        >>> flat[..., 2] = 255.0  # pure blue leaves the mark no room
        >>> reads_back(embed(flat, Payload(1, 2)), Payload(1, 2))
        False
    """
    rgb = np.round(_as_rgb(image))
    height, width = rgb.shape[:2]
    side = next((side for side in GRIDS if side <= max(height, width)), None)
    decoded = _decode_word(read_bits(rgb, "native" if side is None else str(side)))
    return decoded is not None and decoded[0] == payload


def read_bits(image: np.ndarray, grid: str) -> np.ndarray:
    """Mean soft score of each of the 64 payload bits, read on ``grid`` (one of :data:`READ_GRIDS`).

    A positive mean reads as a 1. Raises InputError for a non-RGB array or an image with fewer blocks than bits.
    """
    rgb = _as_rgb(image)
    height, width = rgb.shape[:2]
    if grid not in READ_GRIDS:
        raise InputError(f"grid must be one of {', '.join(READ_GRIDS)}, got {grid!r}")
    shape = None if grid == "native" else _grid_shape(height, width, int(grid))
    views = _views(rgb @ _RGB_TO_YUV.T + _OFFSET, shape)
    scores = np.concatenate([block_scores(v) for v in views]) if all(v.size for v in views) else np.zeros(0)
    if scores.size < PAYLOAD_BITS:
        raise InputError(f"a {width}x{height} image has too few blocks to read a watermark")
    carried, key = _layout(scores.size)
    signed = np.where(key == 1, -scores, scores)
    return np.bincount(carried, weights=signed, minlength=PAYLOAD_BITS) / np.bincount(carried, minlength=PAYLOAD_BITS)


_MARKER_BITS = np.array([(MARKER >> (15 - i)) & 1 for i in range(16)], dtype=np.uint8)


@functools.cache
def _flip_sets() -> tuple[tuple[int, ...], ...]:
    return tuple(
        combo for size in range(_CHASE_FLIPS + 1) for combo in itertools.combinations(range(_CHASE_BITS), size)
    )


def _decode_word(means: np.ndarray) -> tuple[Payload, int, np.ndarray] | None:
    """(payload, corrected bits, the 64-bit word) when ``means`` decode to a valid word."""
    hard = (means > 0).astype(np.uint8)
    marker_errors = int(np.count_nonzero(hard[:16] != _MARKER_BITS))
    if marker_errors > MARKER_TOLERANCE:
        return None
    rest = hard[16:].copy()
    weakest = np.argsort(np.abs(means[16:]), kind="stable")[:_CHASE_BITS]
    for flips in _flip_sets():
        trial = rest.copy()
        trial[weakest[list(flips)]] ^= 1
        value = int("".join(map(str, trial)), 2)
        generator_id, tag, crc = value >> 32, (value >> 16) & 0xFFFF, value & 0xFFFF
        if _crc16(((MARKER << 32) | (generator_id << 16) | tag).to_bytes(6, "big")) == crc:
            payload = Payload(generator_id, tag)
            return payload, marker_errors + len(flips), payload.bits()
    return None


def detect(image: np.ndarray) -> Detection:
    """Look for a mark in an ``(H, W, 3)`` RGB image (uint8, or float in ``[0, 255]``) on each of :data:`READ_GRIDS`.

    Raises:
        InputError: not an RGB array, or an image too small to hold the payload's bits.
    """
    best_strength, tried = 0.0, 0
    for grid in READ_GRIDS:
        try:
            means = read_bits(image, grid)
        except InputError:
            continue
        tried += 1
        decoded = _decode_word(means)
        if decoded is not None:
            payload, errors, word = decoded
            agreement = float(np.mean(np.where(word == 1, means, -means)))
            return Detection(True, payload, max(0.0, agreement), errors, grid)
        best_strength = max(best_strength, float(np.mean(np.abs(means))))
    if not tried:
        rgb = _as_rgb(image)
        raise InputError(f"a {rgb.shape[1]}x{rgb.shape[0]} image has too few blocks to read a watermark")
    return Detection(False, None, best_strength, None, None)
