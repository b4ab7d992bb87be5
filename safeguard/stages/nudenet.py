"""Image stage backed by the NudeNet detector (``320n.onnx``, shipped in the ``nudenet`` wheel, ONNX Runtime).

NudeNet detects 18 body-part classes with boxes. Only the exposed genitals, exposed female breasts and exposed
anus count as the policy's ``sexual`` category: covered parts, faces, feet, bellies, armpits, exposed male
chests and buttocks are ordinary in benign photos and say nothing about a policy violation.

The detector also reports body parts on abstract graphics (colour wheels, logos, microscopy), so a detection
counts only when (a) its confidence reaches ``output.nudenet.min_score`` and (b) at least
``output.nudenet.min_skin`` of the pixels inside its box have a skin tone (a fixed YCbCr range). The price of
(b): nudity in monochrome images is left to the other backends (open_nsfw sees it).

The boxes of the detections that counted are reported in the finding's ``regions`` so a ``pixelate``
redaction can cover just them. Preprocessing (pad to square, resize to 320, scale) is done in torch for the
whole batch; the detector itself runs on the CPU.

Example:
    >>> import torch
    >>> from safeguard.policy import load_policy
    >>> from safeguard.config import resolve_settings
    >>> stage = NudeNetStage(load_policy(), resolve_settings().output)
    >>> stage.check(torch.full((1, 3, 64, 64), 0.5))[0].blocked
    False
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from safeguard.config import OutputSettings
from safeguard.policy import Policy
from safeguard.verdict import Action, Finding, Verdict

__all__ = ["LABELS", "SEXUAL_LABELS", "Detection", "NudeNetStage", "detect"]

#: NudeNet 3.4's class order in ``320n.onnx``.
LABELS = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
    "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED", "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED",
)  # fmt: skip
#: The labels that score the policy's ``sexual`` category.
SEXUAL_LABELS = frozenset(
    {"FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED", "ANUS_EXPOSED"}
)
_INPUT = 320
_CANDIDATE_SCORE = 0.2  # the detector's own candidate and NMS settings, as NudeNet applies them
_NMS_SCORE, _NMS_IOU = 0.25, 0.45


@dataclass(frozen=True)
class Detection:
    """One detected body part: its label, confidence and box ``(x0, y0, x1, y1)`` in image pixels."""

    label: str
    score: float
    box: tuple[int, int, int, int]


@functools.lru_cache(maxsize=1)
def _session() -> Any:
    # Loaded once per process; the model file ships inside the nudenet wheel.
    import importlib.util

    import onnxruntime

    spec = importlib.util.find_spec("nudenet")
    if spec is None or spec.origin is None:
        raise RuntimeError("the nudenet package is not installed (pip install nudenet)")
    model = Path(spec.origin).parent / "320n.onnx"
    return onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])


def _prepare(images: torch.Tensor) -> np.ndarray:
    """Pad each image to a square at the bottom and right (as NudeNet does), resize to 320, as float32 NCHW.

    The channels go in BGR order: NudeNet's own reader hands the network ``cv2.imread`` (BGR) pixels after a
    pair of colour conversions that cancel out, so that is what the model was trained on.
    """
    height, width = images.shape[-2:]
    side = max(height, width)
    padded = F.pad(images.float().flip(1), (0, side - width, 0, side - height))
    resized = F.interpolate(padded, size=(_INPUT, _INPUT), mode="bilinear", align_corners=False)
    return resized.clamp(0, 1).contiguous().cpu().numpy()


def _nms(boxes: np.ndarray, scores: np.ndarray) -> list[int]:
    order = [i for i in np.argsort(-scores) if scores[i] >= _NMS_SCORE]
    keep: list[int] = []
    for i in order:
        if all(_iou(boxes[i], boxes[j]) <= _NMS_IOU for j in keep):
            keep.append(i)
    return keep


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def detect(images: torch.Tensor) -> list[list[Detection]]:
    """NudeNet detections for a ``(B, 3, H, W)`` batch in ``[0, 1]``, boxes in the images' pixels.

    Example:
        >>> detect(torch.zeros(1, 3, 64, 64))
        [[]]
    """
    height, width = images.shape[-2:]
    side = max(height, width)
    session = _session()
    output = session.run(None, {session.get_inputs()[0].name: _prepare(images)})[0]  # (B, 4 + classes, N)
    results = []
    for rows in output:
        rows = rows.T  # (N, 4 + classes)
        class_scores = rows[:, 4:]
        best = class_scores.max(axis=1)
        keep = best >= _CANDIDATE_SCORE
        rows, best, labels = rows[keep], best[keep], class_scores[keep].argmax(axis=1)
        scale = side / _INPUT
        cx, cy, w, h = (rows[:, k] * scale for k in range(4))
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1) if len(rows) else np.zeros((0, 4))
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
        found = []
        for i in _nms(boxes, best):
            x0, y0, x1, y1 = (round(float(v)) for v in boxes[i])
            found.append(Detection(LABELS[int(labels[i])], float(best[i]), (x0, y0, x1, y1)))
        results.append(found)
    return results


def skin_fraction(image: torch.Tensor, box: tuple[int, int, int, int]) -> float:
    """Fraction of pixels inside ``box`` of a ``(3, H, W)`` image in ``[0, 1]`` whose colour is a skin tone.

    Uses a fixed chroma range in YCbCr (Cb 77-127, Cr 133-173 on the 0-255 scale), which holds across skin
    tones because it ignores brightness.

    Example:
        >>> skin = torch.tensor([0.85, 0.64, 0.52]).view(3, 1, 1).expand(3, 8, 8)
        >>> skin_fraction(skin, (0, 0, 8, 8))
        1.0
    """
    x0, y0, x1, y1 = box
    crop = image[:, y0:y1, x0:x1].float() * 255
    if crop.numel() == 0:
        return 0.0
    r, g, b = crop[0], crop[1], crop[2]
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    skin = (cb >= 77) & (cb <= 127) & (cr >= 133) & (cr <= 173)
    return float(skin.float().mean())


class NudeNetStage:
    """Scores the ``sexual`` category with NudeNet's exposed-genitals/breast/anus detections."""

    name = "nudenet"
    categories = ("sexual",)

    def __init__(self, policy: Policy, settings: OutputSettings) -> None:
        self.policy = policy
        self.settings = settings

    def to(self, device: torch.device | str) -> NudeNetStage:
        return self  # ONNX Runtime on the CPU; nothing to move

    def check(self, images: torch.Tensor) -> list[Verdict]:
        threshold = self.settings.nudenet_min_score
        min_skin = self.settings.nudenet_min_skin
        host = images.detach().float().cpu()
        verdicts = []
        for image, detections in zip(host, detect(host), strict=True):
            counted = [
                d
                for d in detections
                if d.label in SEXUAL_LABELS and d.score >= threshold and skin_fraction(image, d.box) >= min_skin
            ]
            # The reported score is the best sexual-label confidence that passed the skin test, 0 when none.
            plausible = [d for d in detections if d.label in SEXUAL_LABELS and skin_fraction(image, d.box) >= min_skin]
            score = max((d.score for d in plausible), default=0.0)
            findings = []
            if counted:
                labels = ", ".join(sorted({f"{d.label} {d.score:.2f}" for d in counted}))
                findings.append(
                    Finding(
                        "sexual",
                        score,
                        threshold,
                        "image",
                        Action.BLOCK,
                        self.name,
                        f"NudeNet: {labels}",
                        regions=tuple(d.box for d in counted),
                    )
                )
            verdicts.append(Verdict.for_stage(findings, {"sexual": score}, self.policy, "output"))
        return verdicts
