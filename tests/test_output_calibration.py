"""scripts/calibrate_image_thresholds.py writes per-category thresholds at the target false-positive rate."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
from PIL import Image
from test_output_clip import tiny_clip

from safeguard.config import resolve_settings
from safeguard.testing.tiny import clip_tokenizer

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "calibrate_image_thresholds.py"


def _script():
    spec = importlib.util.spec_from_file_location("calibrate_image_thresholds", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_threshold_at_fpr():
    calibrate = _script()
    assert calibrate.threshold_at_fpr([0.1, 0.2, 0.3, 0.9], 0.25) > 0.3
    assert calibrate.threshold_at_fpr([0.1, 0.2, 0.3, 0.9], 0.0) > 0.9
    assert calibrate.threshold_at_fpr([0.5] * 10, 0.05) > 0.5


def test_calibration_writes_a_loadable_preset_with_its_data(tmp_path):
    weights = tmp_path / "clip"
    tiny_clip(seed=3).save_pretrained(weights)
    clip_tokenizer().save_pretrained(weights)
    rng = np.random.default_rng(0)
    for label, count in (("violence", 3), ("gore", 2), ("benign", 6)):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / label / f"{i}.png")
    out = tmp_path / "calibrated.yaml"
    assert _script().main(["--weights", str(weights), "--data", str(tmp_path / "data"), "--target-fpr", "0.1",
                           "--out", str(out)]) == 0  # fmt: skip
    record = json.loads(out.with_suffix(".calibration.json").read_text())
    assert record["counts"] == {"benign": 6, "gore": 2, "violence": 3}
    assert set(record["categories"]) == {"violence", "gore"}
    assert all(c["fpr"] <= 0.1 for c in record["categories"].values())
    assert out.read_text().startswith("# Calibrated by")
    settings = resolve_settings(out, image_model=str(weights))
    assert "clip" in settings.output.backends
    assert settings.output.thresholds.for_category("violence")[1] == record["categories"]["violence"]["threshold"]
