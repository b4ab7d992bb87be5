"""`safeguard scan`: image files and folders through the output stage, the table, JSON, exit codes and --redact-to."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from safeguard.cli import EXIT_ALLOWED, EXIT_BLOCKED, EXIT_ERROR, main
from safeguard.reports.commands import EXIT_UNCHECKED
from safeguard.toy import POLICY_PATH, make_batch

TOY_POLICY = str(POLICY_PATH)
PHOTOS = {
    "astronaut.png": skimage.data.astronaut,
    "coffee.jpg": skimage.data.coffee,
    "chelsea.webp": skimage.data.chelsea,
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Photographs, toy-world renders (two red, two not), a red frame in an animation, a corrupt PNG, a text file."""
    root = tmp_path_factory.mktemp("scan") / "mixed"
    (root / "photos").mkdir(parents=True)
    (root / "toy").mkdir()
    for name, load in PHOTOS.items():
        Image.fromarray(load()).save(root / "photos" / name)
    batch = make_batch(300, seed=3)
    plain = [i for i, s in enumerate(batch.scenes) if len(s.shapes) == 1 and s.background in ("white", "grey", "black")]
    red = [i for i in plain if batch.scenes[i].main_colour == "red"][:2]
    other = [i for i in plain if batch.scenes[i].main_colour in ("blue", "green")][:2]
    for k, i in enumerate(red):
        Image.fromarray(batch.images[i]).save(root / "toy" / f"red_{k}.png")
    for k, i in enumerate(other):
        Image.fromarray(batch.images[i]).save(root / "toy" / f"{batch.scenes[i].main_colour}_{k}.png")
    frames = [Image.fromarray(batch.images[other[0]]), Image.fromarray(batch.images[red[0]])]
    frames[0].save(root / "toy" / "animated.webp", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    (root / "broken.png").write_bytes((root / "photos" / "astronaut.png").read_bytes()[:300])
    (root / "notes.txt").write_text("not an image\n")
    return root


def _frames(path: Path) -> list[np.ndarray]:
    with Image.open(path) as image:
        frames = []
        for index in range(getattr(image, "n_frames", 1)):
            image.seek(index)
            frames.append(np.asarray(image.convert("RGB"), dtype=float))
        return frames


def _json_lines(text: str) -> dict[str, dict]:
    records = [json.loads(line) for line in text.splitlines()]
    return {Path(r["file"]).name: r for r in records}


def test_table_names_every_file_and_exit_code(folder, capsys):
    # The AUP policy's bundled backends (sexual content) allow photographs and coloured shapes alike.
    assert main(["scan", str(folder)]) == EXIT_UNCHECKED
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    for name in [*PHOTOS, "red_0.png", "red_1.png", "animated.webp"]:
        assert any(line.startswith("ALLOW") and line.split()[1].endswith(name) for line in lines), name
    assert "ERROR  " + str(folder / "broken.png") + ": corrupt or truncated PNG" in captured.out
    assert f"{folder / 'notes.txt'}: not a PNG, JPEG or WebP image" in captured.out
    assert "(WebP 32x32, 2 frames)" in captured.out
    assert lines[-1].startswith("10 files: 8 allowed, 0 blocked, 2 could not be checked; policy stability-aup")
    # Errors also go to stderr, each naming its file.
    errors = captured.err.splitlines()
    assert [e for e in errors if e.startswith("safeguard: scan: ")] == [
        f"safeguard: scan: {folder / 'broken.png'}: corrupt or truncated PNG (image file is truncated)",
        f"safeguard: scan: {folder / 'notes.txt'}: not a PNG, JPEG or WebP image"
        " (PIL recognises no image format in it)",
    ]


def test_json_one_moderation_record_per_file(folder, capsys):
    assert main(["scan", "--json", "--policy", TOY_POLICY, str(folder)]) == EXIT_BLOCKED
    records = _json_lines(capsys.readouterr().out)
    assert len(records) == 10
    for name in ("red_0.png", "red_1.png", "animated.webp"):
        verdict = records[name]["verdict"]
        assert verdict["blocked"] and verdict["categories"]["red"] is True, name
        assert verdict["category_scores"]["red"] >= 0.8 and verdict["policy"]["id"] == "toy-colours"
        finding = verdict["findings"][0]
        assert finding["category"] == "red" and finding["stage"] == "image" and finding["threshold"] == 0.8
    assert records["animated.webp"]["frames"] == 2  # the red second frame is what blocks it
    others = [n for n in records if n.startswith(("blue", "green"))]
    assert len(others) == 2 and all(not records[n]["verdict"]["flagged"] for n in others)
    assert records["broken.png"] == {
        "file": str(folder / "broken.png"),
        "error": f"{folder / 'broken.png'}: corrupt or truncated PNG (image file is truncated)",
        "copy": None,
    }
    assert "not a PNG, JPEG or WebP image" in records["notes.txt"]["error"]
    assert records["coffee.jpg"]["format"] == "JPEG" and records["coffee.jpg"]["width"] == 600


def test_redact_to_writes_only_redacted_copies(folder, tmp_path, capsys):
    out = tmp_path / "clean"
    stale = out / folder.name
    (stale / "toy").mkdir(parents=True)
    # Left by an earlier scan: a blocked file's original and a copy of a file that is now unreadable must not stay.
    shutil.copy(folder / "toy" / "red_1.png", stale / "toy" / "red_1.png")
    (stale / "broken.png").write_bytes(b"stale")
    code = main(["scan", "--json", "--policy", TOY_POLICY, str(folder), "--redact-to", str(out)])
    assert code == EXIT_BLOCKED
    records = _json_lines(capsys.readouterr().out)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    checked = sorted(f"mixed/{p.relative_to(folder).as_posix()}" for p in folder.rglob("*") if p.is_file())
    assert written == [p for p in checked if not p.endswith(("broken.png", "notes.txt"))]
    for name, record in records.items():
        if "error" in record:
            assert record["copy"] is None
            continue
        source, copy = Path(record["file"]), Path(record["copy"])
        if not record["verdict"]["blocked"]:
            assert copy.read_bytes() == source.read_bytes(), name  # allowed: the original, byte for byte
            continue
        assert copy.read_bytes() != source.read_bytes()
        originals, redacted = _frames(source), _frames(copy)
        assert [f.shape for f in redacted] == [f.shape for f in originals], name
        # The blocked frames are blurred, not the flagged original (in an animation, the red frame).
        changed = [(a, b) for a, b in zip(redacted, originals, strict=True) if np.abs(a - b).mean() > 5]
        assert changed, name
        assert all(a.std(axis=(0, 1)).mean() < b.std(axis=(0, 1)).mean() for a, b in changed), name
    with Image.open(out / "mixed" / "toy" / "animated.webp") as animation:
        assert animation.n_frames == 2


def test_redact_to_never_writes_a_flagged_original_under_flag_only(folder, tmp_path, capsys):
    # research flags without redacting: a copy of a blocked file would be the original, so none is written.
    out = tmp_path / "clean"
    args = ["scan", "--policy", TOY_POLICY, "--preset", "research", str(folder / "toy"), "--redact-to", str(out)]
    assert main(args) == EXIT_BLOCKED
    text = capsys.readouterr().out
    assert sorted(p.name for p in (out / "toy").iterdir()) == ["blue_1.png", "green_0.png"]
    assert f"{out}: 2 copied as they are, 0 redacted (flag), 3 withheld (not written)" in text


def test_exit_codes_allowed_and_bad_input(folder, tmp_path, capsys):
    blue = next((folder / "toy").glob("blue_*.png"))
    assert main(["scan", "--policy", TOY_POLICY, str(blue)]) == EXIT_ALLOWED
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["scan", str(empty)]) == EXIT_ERROR
    assert "no files found" in capsys.readouterr().err
    # Copies that would land on the scanned files themselves are refused before anything is written.
    assert main(["scan", str(folder), "--redact-to", str(folder.parent)]) == EXIT_ERROR
    assert "would write the copy of" in capsys.readouterr().err
    assert main(["scan", str(tmp_path / "missing.png")]) == EXIT_UNCHECKED
    assert "missing.png: no such file" in capsys.readouterr().err
