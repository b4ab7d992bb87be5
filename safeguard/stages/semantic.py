"""The semantic prompt stage: per-category scores from MiniLM sentence embeddings and calibrated heads.

Each category the calibration covered has a logistic head over a text's embedding; its output in ``[0, 1]`` is
compared with the thresholds calibrated with the heads (``steer`` and ``block``) at the preset's
``prompt.strictness``, unless ``prompt.thresholds`` names the category (its ``default`` is the keyword rules').
Every text is first scored with the static MiniLM encoder (tens of microseconds); only those whose static score
reaches the calibrated ``settle`` score for some category are scored again with the full tier (a two-layer
student distilled from MiniLM, run by ONNX Runtime, ~2 ms a text on two cores), whose score then decides.

A whole prompt is scored as before, and where it does not already block, its parts are scored too, each
category taking the highest score that counts: benign words around an unsafe request ("masterpiece, best
quality, 8k, ...") then cannot dilute its mean-pooled embedding into an allow, and nothing past the 46 tokens the
student reads of a text (or the 256 the static tier reads) goes unscored. The parts (:func:`prompt_parts`) are
runs of one to three clauses (split at commas, semicolons, full stops, line breaks, ``|`` and the like), windows
of 8 and 12 words across a prompt that has a run of more than 14 words without a separator, and 46-token windows
of a prompt longer than that. Parts go through the same two tiers, batched across the prompts of a call, each
distinct text scored once; of the parts the static tier leaves unsettled, the student scores the four it ranks
highest per category.

Fragments read alone are noisy ("which are struck by hammers" from a description of a piano), so a part counts
only when it has at least seven words, reaches the block threshold on its own and, read together with its
neighbours (the adjacent clause, or three more words for a window), still reaches the steer threshold on every
side that has one; the steer band is left to the whole prompt. So a clause run that blocks alone still blocks
with benign clauses around it, at the score it has alone, as long as the static tier ranks it among the four and
the run with each adjacent clause still reaches steer. Padding joined by plain spaces is only read through the
windows, which is weaker; but most padding is quality and rendering tags ("masterpiece best quality 8k"), so each
prompt is also read, whole and in parts, with the tags of ``configs/semantic/style_tags.txt`` cut out, and the
higher score of the two readings counts. A finding that a part decided quotes the part in its ``detail`` ("whole
prompt" otherwise; "... without style tags" when that reading decided).

The heads and their thresholds live in the file the policy names under ``semantic_heads`` (for the bundled
policy ``configs/semantic/minilm-student-heads.npz``), written with their provenance by
``scripts/calibrate_prompts.py``. A policy that names none gets no semantic stage; one that names a missing file
does not load.

Example:
    >>> from safeguard.policy import load_policy
    >>> from safeguard.config import resolve_settings
    >>> stage = SemanticPromptStage.for_policy(load_policy(), resolve_settings().prompt)
    >>> stage.check(["a watercolor painting of a lighthouse at dawn"])[0].flagged
    False
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from safeguard._files import bundled_file
from safeguard.config import PROMPT_STRICTNESS, PromptSettings
from safeguard.errors import ConfigError
from safeguard.normalize import normalize
from safeguard.policy import Policy
from safeguard.semantic import STUDENT_MAX_TOKENS, OnnxMiniLMEncoder, StaticMiniLMEncoder, Tokens, tokenize
from safeguard.stages.keywords import PhraseMatcher, stem
from safeguard.verdict import Action, Finding, Verdict

__all__ = ["Part", "SemanticHeads", "SemanticPromptStage", "prompt_parts"]

#: Tokens the static tier reads of a whole prompt (its parts cover the rest).
STATIC_MAX_TOKENS = 256
#: Tokens the student reads of a text, without its [CLS] and [SEP].
STUDENT_SPAN = STUDENT_MAX_TOKENS - 2
#: Fewer words than this are no part of their own, only within longer runs: short fragments read alone are noise
#: (with five, benign look-alikes such as "black smoke, heroic news photo" blocked on their own).
MIN_PART_WORDS = 7
#: The most clauses a run that is a part may have; longer stretches are read by the windows and the whole prompt.
MAX_RUN_CLAUSES = 3
#: A part must leave out at least this many words of the prompt; otherwise it is the whole read a second time.
MIN_WORDS_LEFT_OUT = 3
#: Word windows (sizes and stride) for runs without separators, which clauses cannot split.
WINDOW_WORDS = (8, 12)
WINDOW_STRIDE_DIVISOR = 3
#: Windows are only laid over a prompt with a separator-free run of more than this many words: a sentence of
#: ordinary length is scored by its clauses, whose windows would only add noisy fragments.
LONG_RUN_WORDS = 14
#: How far a window's neighbourhood reaches on each side when it is confirmed.
NEIGHBOUR_WORDS = 3
#: Single-character tokens that end a clause; a hyphen does only with spaces on both sides ("ruins - dawn").
SEPARATORS = ",;.|!?:()[]{}\u2014\u2013\u2022\u00b7\u2026\u3001\u3002"
_LINE_BREAK = re.compile(r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+")
#: The word pattern of :attr:`safeguard.normalize.NormalizedText.tokens`, to find the words' positions.
_WORD = re.compile(r"[^\W_]+")
#: Parts of one prompt the student scores per category: those the static tier ranks highest among the unsettled.
MAX_STUDENT_PARTS = 4
#: How many characters of a part a finding's detail quotes.
DETAIL_CHARS = 80


class SemanticHeads:
    """Calibrated per-category logistic heads for the static and the full encoder."""

    def __init__(self, path: Path) -> None:
        data = np.load(path)
        self.path = path
        # Heads fit to one encoder's embeddings score another's wrongly, without any error to show for it.
        encoder = str(data["full_encoder"]) if "full_encoder" in data else "(not recorded)"
        expected = OnnxMiniLMEncoder.load_student().name
        if encoder != expected:
            raise ConfigError(
                f"{path}: heads calibrated for encoder {encoder!r}, not {expected!r}; run scripts/calibrate_prompts.py"
            )
        self.categories = tuple(str(c) for c in data["categories"])
        self.static_weights, self.static_bias = data["static_weights"], data["static_bias"]
        self.full_weights, self.full_bias = data["full_weights"], data["full_bias"]
        self.settle = data["settle"]
        self.idf = data["idf"]
        self.center = data["center"]
        self.provenance = json.loads(str(data["provenance"]))
        if "thresholds" not in data:
            raise ConfigError(f"{path}: heads without their thresholds; run scripts/calibrate_prompts.py")
        #: ``{strictness: {category: (steer, block)}}``: the thresholds chosen with these heads, on their scale.
        self.thresholds: dict[str, dict[str, tuple[float, float]]] = {
            level: {c: (float(t["steer"]), float(t["block"])) for c, t in table.items()}
            for level, table in json.loads(str(data["thresholds"])).items()
        }
        missing = [level for level in PROMPT_STRICTNESS if set(self.thresholds.get(level, {})) != set(self.categories)]
        if missing:
            raise ConfigError(f"{path}: no thresholds for every category at strictness {missing}")

    def thresholds_for(self, category: str, settings: PromptSettings) -> tuple[float | None, float]:
        """(steer, block) for ``category``: the settings' own entry when ``prompt.thresholds`` names the category
        (a host opening or closing a steer band), else these heads' thresholds at ``prompt.strictness``.

        The ``default`` entry of ``prompt.thresholds`` is the keyword rules' (a hit scores 1.0) and never reaches
        the heads, whose scores are on another scale.
        """
        if category in settings.thresholds.per_category:
            return settings.thresholds.for_category(category)
        return self.thresholds[settings.strictness][category]

    @staticmethod
    def score(x: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-np.clip(x @ weights.T + bias, -30, 30)))


@functools.lru_cache(maxsize=1)
def _style_tags() -> tuple[str, ...]:
    path = bundled_file("semantic", "style_tags.txt")
    if path is None:
        raise ConfigError("configs/semantic/style_tags.txt is missing from the installed package")
    lines = path.read_text(encoding="utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))


@functools.lru_cache(maxsize=4)
def _heads(path: Path) -> SemanticHeads:
    return SemanticHeads(path)


@functools.lru_cache(maxsize=4)
def _static_encoder(path: Path) -> StaticMiniLMEncoder:
    heads = _heads(path)
    table = StaticMiniLMEncoder.load().table
    return StaticMiniLMEncoder(table - heads.center, heads.idf)


@functools.lru_cache(maxsize=1)
def _separator_table() -> np.ndarray:
    """Per vocabulary id: whether the token is one of :data:`SEPARATORS`."""
    table = np.zeros(len(StaticMiniLMEncoder.load().table), bool)  # one row per vocabulary id
    table[[t.ids[0] for t in tokenize(list(SEPARATORS)) if len(t.ids) == 1]] = True
    return table


@functools.lru_cache(maxsize=1)
def _hyphen_id() -> int:
    return int(tokenize(["-"])[0].ids[0])


@dataclass(frozen=True)
class Part:
    """A span ``[start, end)`` of a prompt's tokens that is scored on its own.

    ``neighbours`` are the spans that confirm it: the part with the adjacent clause, or with a few more words, on
    each side that has one. Of the whole prompt (``whole``), the static tier reads the first 256 tokens and the
    student the first 46, as of any text.
    """

    start: int
    end: int
    neighbours: tuple[tuple[int, int], ...] = ()
    whole: bool = False


@dataclass(frozen=True)
class _Winner:
    """The part of reading ``reading`` (an index into the texts scored) that set a category's score."""

    reading: int
    part: Part
    from_student: bool
    without_style_tags: bool = False


def _cut_phrases(matcher: PhraseMatcher, text: str) -> str:
    """``text`` (normalised) without the words of the phrases ``matcher`` finds, its punctuation kept (it separates
    clauses), spaces collapsed."""
    words = [m.span() for m in _WORD.finditer(text)]
    matches = matcher.find([stem(text[a:b]) for a, b in words])
    for i in sorted({i for m in matches for i in range(m.start, m.end)}, reverse=True):
        text = text[: words[i][0]] + text[words[i][1] :]
    return " ".join(text.split())


def prompt_parts(tokens: Tokens) -> list[Part]:
    """The whole prompt (first) and the parts of it that are scored on their own, as token spans.

    Example:
        >>> from safeguard.semantic import tokenize
        >>> text = "masterpiece, best quality, a man firing a rifle into a crowd, 8k"
        >>> tokens = tokenize([text])[0]
        >>> [text[tokens.starts[p.start] : tokens.ends[p.end - 1]] for p in prompt_parts(tokens)][1:]
        ['a man firing a rifle into a crowd', 'a man firing a rifle into a crowd, 8k']
    """
    n = len(tokens.ids)
    parts = {(0, n): Part(0, n, whole=True)}
    if n == 0:
        return list(parts.values())
    word_start = np.ones(n, bool)
    word_start[1:] = tokens.starts[1:] > tokens.ends[:-1]
    words = np.concatenate([[0], np.cumsum(word_start)])
    most_words = int(words[-1]) - MIN_WORDS_LEFT_OUT

    def fits(start: int, end: int) -> bool:
        count = int(words[end] - words[start]) + (0 if word_start[start] else 1)
        return end - start <= STUDENT_SPAN and MIN_PART_WORDS <= count <= most_words

    separator = _is_separator(tokens)
    clauses = _clauses(separator)
    for i in range(len(clauses)):
        for j in range(i, min(len(clauses), i + MAX_RUN_CLAUSES)):
            start, end = clauses[i][0], clauses[j][1]
            if end - start > STUDENT_SPAN:
                break
            if fits(start, end) and (start, end) not in parts:
                sides = []
                if i > 0:
                    sides.append((max(clauses[i - 1][0], end - STUDENT_SPAN), end))
                if j + 1 < len(clauses):
                    sides.append((start, min(clauses[j + 1][1], start + STUDENT_SPAN)))
                parts[start, end] = Part(start, end, tuple(sides))

    word_at = np.flatnonzero(word_start)
    longest_run = max(int(words[b] - words[a]) for a, b in clauses) if clauses else 0
    if longest_run > LONG_RUN_WORDS:
        bounds = [*word_at.tolist(), n]  # token index where each word starts, then the end
        total = len(word_at)
        for size in WINDOW_WORDS:
            stride = max(1, size // WINDOW_STRIDE_DIVISOR)
            for k in sorted({*range(0, total - size, stride), total - size}):
                if k < 0:
                    continue
                start, end = _strip(separator, bounds[k], bounds[k + size])
                if end <= start or (start, end) in parts or not fits(start, end):
                    continue
                sides = []
                if k > 0:
                    sides.append((bounds[max(0, k - NEIGHBOUR_WORDS)], end))
                if k + size < total:
                    sides.append((start, bounds[min(total, k + size + NEIGHBOUR_WORDS)]))
                parts[start, end] = Part(start, end, tuple(sides))

    # What lies past the student's reach is read in overlapping windows of what it can read.
    if n > STUDENT_SPAN:
        step = STUDENT_SPAN // 2
        for start in sorted({*range(step, n - STUDENT_SPAN, step), n - STUDENT_SPAN}):
            parts.setdefault((start, start + STUDENT_SPAN), Part(start, start + STUDENT_SPAN))
    return list(parts.values())


def _is_separator(tokens: Tokens) -> np.ndarray:
    ids = tokens.ids
    separator = _separator_table()[ids]
    hyphens = np.flatnonzero(ids == _hyphen_id())
    for i in hyphens.tolist():
        spaced_before = i == 0 or tokens.starts[i] > tokens.ends[i - 1]
        spaced_after = i + 1 == len(ids) or tokens.starts[i + 1] > tokens.ends[i]
        separator[i] = spaced_before and spaced_after
    return separator


def _clauses(separator: np.ndarray) -> list[tuple[int, int]]:
    """Token spans of the runs between separators."""
    edges = np.flatnonzero(np.diff(np.concatenate([[1], separator.astype(np.int8), [1]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _strip(separator: np.ndarray, start: int, end: int) -> tuple[int, int]:
    """``[start, end)`` without separators at its edges, so that a window and a clause run can coincide."""
    while start < end and separator[start]:
        start += 1
    while end > start and separator[end - 1]:
        end -= 1
    return start, end


class SemanticPromptStage:
    """Scores prompts by semantic similarity to each category's calibrated examples."""

    name = "semantic"

    def __init__(self, policy: Policy, settings: PromptSettings, heads_path: Path) -> None:
        self.policy = policy
        self.settings = settings
        self.heads = _heads(heads_path)
        self._heads_path = heads_path
        # Built here (a minute on first use, then cached on disk), not in check(), which runs under a deadline.
        _static_encoder(heads_path)
        unknown = [c for c in self.heads.categories if c not in policy]
        if unknown:
            raise ConfigError(f"{heads_path}: heads for categories {unknown} that policy {policy.id!r} lacks")
        # Allow-phrases name benign readings of words a category watches ("al gore"); they are taken out of the
        # text before embedding, so the name does not pull the prompt towards the category either.
        self._allowed = PhraseMatcher(("allow", phrase) for c in policy for phrase in c.allow_phrases)
        self._style_tags = PhraseMatcher(("style", tag) for tag in _style_tags())
        pairs = [self.heads.thresholds_for(c, settings) for c in self.heads.categories]
        self._block = np.array([block for _, block in pairs])
        self._steer = np.array([block if steer is None else steer for steer, block in pairs])
        #: Prompts the student (second tier) has scored, whole or in parts, since construction: their share
        #: sets the throughput.
        self.full_scored = 0

    @property
    def categories(self) -> tuple[str, ...]:
        """The categories this stage scores: those its calibrated heads were fit for."""
        return self.heads.categories

    @classmethod
    def for_policy(cls, policy: Policy, settings: PromptSettings) -> SemanticPromptStage | None:
        """The stage with the heads ``policy`` names (``semantic_heads``), or None for a policy that names none."""
        return None if policy.semantic_heads is None else cls(policy, settings, policy.semantic_heads)

    def check(self, prompts: Sequence[str]) -> list[Verdict]:
        """One verdict per prompt: each category scored on the whole prompt and on its parts, the highest counting.

        Example:
            >>> from safeguard.policy import load_policy
            >>> from safeguard.config import resolve_settings
            >>> stage = SemanticPromptStage.for_policy(load_policy(), resolve_settings().prompt)
            >>> [v.flagged for v in stage.check(["a red bicycle", "a red bicycle, a knife stabbed into a man's chest"])]
            [False, True]
        """
        texts = [self._scored_text(p) for p in prompts]
        # Each prompt is also read without its style tags, and the higher score of the two readings counts.
        bare = [_cut_phrases(self._style_tags, text) for text in texts]
        extra = [i for i, (text, cut) in enumerate(zip(texts, bare, strict=True)) if cut != text and _WORD.search(cut)]
        readings = texts + [bare[i] for i in extra]
        best, winners, all_tokens, full = self._score(readings)
        for k, i in enumerate(extra, start=len(texts)):
            for c in np.flatnonzero(best[k] > best[i]).tolist():
                best[i, c] = best[k, c]
                winners[i][c] = dataclasses.replace(winners[k][c], without_style_tags=True)
            full[i] |= full[k]
        self.full_scored += int(full[: len(texts)].sum())
        return [self._verdict(best[i], winners[i], readings, all_tokens) for i in range(len(texts))]

    def _score(self, texts: list[str]) -> tuple[np.ndarray, list[list[_Winner]], list[Tokens], np.ndarray]:
        """Each text's category scores (whole and parts), the part that set each, the tokens, and which texts
        the student scored."""
        heads = self.heads
        all_tokens = tokenize(texts)
        student = _StudentScores(heads, all_tokens)
        static = _static_encoder(self._heads_path)
        sums = []  # per text: running sums of its weighted token vectors, so any span's static vector is a difference
        for tokens in all_tokens:
            weighted = static.token_weights[tokens.ids, None] * static.table[tokens.ids]
            sums.append(np.concatenate([np.zeros((1, weighted.shape[1]), np.float32), np.cumsum(weighted, axis=0)]))

        def static_scores(spans: list[tuple[int, int, int]]) -> np.ndarray:
            x = np.asarray([sums[i][end] - sums[i][start] for i, start, end in spans], np.float32)
            x = x.reshape(len(spans), -1) / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True).reshape(-1, 1), 1e-8)
            return heads.score(x, heads.static_weights, heads.static_bias)

        # The whole texts, as before parts existed: the static tier, then the student where it does not settle.
        wholes = [Part(0, len(tokens.ids), whole=True) for tokens in all_tokens]
        best = static_scores([(i, 0, min(p.end, STATIC_MAX_TOKENS)) for i, p in enumerate(wholes)])
        full = (best >= heads.settle).any(axis=1)
        student.add((i, 0, wholes[i].end) for i in np.flatnonzero(full).tolist())
        for i in np.flatnonzero(full).tolist():
            best[i] = student.score(i, 0, wholes[i].end)
        winners: list[list[_Winner]] = [
            [_Winner(i, wholes[i], bool(full[i]))] * len(heads.categories) for i in range(len(texts))
        ]

        # Parts can only add to a text that its whole does not already block.
        open_texts = np.flatnonzero((best < self._block).all(axis=1)).tolist()
        rows = [(i, part) for i in open_texts for part in prompt_parts(all_tokens[i])[1:]]
        if rows:
            scores = static_scores([(i, p.start, p.end) for i, p in rows])
            chosen = self._student_parts(rows, scores)
            student.add((rows[r][0], rows[r][1].start, rows[r][1].end) for r in chosen)
            for r in chosen:
                i, part = rows[r]
                scores[r] = student.score(i, part.start, part.end)
                full[i] = True
            self._count_parts([rows[r] for r in chosen], scores[chosen], best, winners, student)
        return best, winners, all_tokens, full

    def _student_parts(self, rows: list[tuple[int, Part]], scores: np.ndarray) -> list[int]:
        """The rows whose static score leaves them unsettled, at most the best few per prompt and category."""
        settle = self.heads.settle
        picked: dict[tuple[int, int], list[int]] = {}
        unsettled = scores >= settle
        for r in np.flatnonzero(unsettled.any(axis=1)).tolist():
            for c in np.flatnonzero(unsettled[r]).tolist():
                picked.setdefault((rows[r][0], c), []).append(r)
        chosen = set()
        for (_, c), candidates in picked.items():
            candidates.sort(key=lambda r, c=c: -scores[r, c])
            chosen.update(candidates[:MAX_STUDENT_PARTS])
        return sorted(chosen)

    def _count_parts(
        self,
        rows: list[tuple[int, Part]],
        scores: np.ndarray,
        best: np.ndarray,
        winners: list[list[_Winner]],
        student: _StudentScores,
    ) -> None:
        """Raise each prompt's category scores to its best part that blocks alone and holds with its neighbours.

        Candidates are tried from the highest score down, a round at a time for all prompts together, so that
        neighbours are scored only for the candidates that could still raise a score.
        """
        queues: dict[tuple[int, int], list[int]] = {}
        for r, (i, _) in enumerate(rows):
            for c in np.flatnonzero(scores[r] >= self._block).tolist():
                queues.setdefault((i, c), []).append(r)
        for (_, c), queue in queues.items():
            queue.sort(key=lambda r, c=c: scores[r, c])  # best last, for pop()
        while queues:
            trying = {}
            for (i, c), queue in list(queues.items()):
                while queue and scores[queue[-1], c] <= best[i, c]:
                    queue.pop()
                if queue:
                    trying[i, c] = queue.pop()
                else:
                    del queues[i, c]
            student.add((i, a, b) for (i, _), r in trying.items() for a, b in rows[r][1].neighbours)
            for (i, c), r in trying.items():
                part = rows[r][1]
                if all(student.score(i, a, b)[c] >= self._steer[c] for a, b in part.neighbours):
                    best[i, c] = scores[r, c]
                    winners[i][c] = _Winner(i, part, True)
                    del queues[i, c]

    def _scored_text(self, prompt: str) -> str:
        """The normalised prompt without its allow-phrases, its lines joined by ``|`` (a separator)."""
        lines = [line for line in _LINE_BREAK.split(prompt) if line.strip()] or [prompt]
        return " | ".join(self._without_allow_phrases(line) for line in lines)

    def _without_allow_phrases(self, prompt: str) -> str:
        return _cut_phrases(self._allowed, normalize(prompt).text)

    def _verdict(self, row: np.ndarray, winners: list[_Winner], readings: list[str], tokens: list[Tokens]) -> Verdict:
        findings = []
        for category, score, winner in zip(self.heads.categories, row.tolist(), winners, strict=True):
            steer, block = self.heads.thresholds_for(category, self.settings)
            if score >= block:
                action, threshold = Action.BLOCK, block
            elif steer is not None and score >= steer:
                action, threshold = Action.STEER, steer
            else:
                continue
            source = "minilm-student" if winner.from_student else "minilm-static"
            detail = _detail(winner, readings, tokens)
            findings.append(Finding(category, score, threshold, "prompt", action, source, detail))
        return Verdict.for_stage(
            findings, dict(zip(self.heads.categories, row.tolist(), strict=True)), self.policy, "prompt"
        )


def _detail(winner: _Winner, readings: list[str], all_tokens: list[Tokens]) -> str:
    part, tokens, text = winner.part, all_tokens[winner.reading], readings[winner.reading]
    of = " of the prompt without style tags" if winner.without_style_tags else ""
    if part.whole:
        return "whole prompt without style tags" if of else "whole prompt"
    quoted = text[tokens.starts[part.start] : tokens.ends[part.end - 1]]
    if len(quoted) > DETAIL_CHARS:
        quoted = quoted[: DETAIL_CHARS - 3] + "..."
    return f'part "{quoted}"{of} (tokens {part.start}-{part.end})'


class _StudentScores:
    """The student's head scores of token spans of the prompts in one check, each distinct text scored once."""

    def __init__(self, heads: SemanticHeads, all_tokens: list[Tokens]) -> None:
        self._heads = heads
        self._tokens = all_tokens
        self._scores: dict[tuple[int, ...], np.ndarray] = {}

    def _key(self, prompt: int, start: int, end: int) -> tuple[int, ...]:
        return tuple(self._tokens[prompt].ids[start : min(end, start + STUDENT_SPAN)].tolist())

    def add(self, spans) -> None:
        """Score the spans ``(prompt, start, end)`` not scored yet, in one batch."""
        missing = list(dict.fromkeys(k for k in (self._key(*s) for s in spans) if k not in self._scores))
        if missing:
            heads = self._heads
            embedded = OnnxMiniLMEncoder.load_student().encode_tokens(missing)
            for key, row in zip(missing, heads.score(embedded, heads.full_weights, heads.full_bias), strict=True):
                self._scores[key] = row

    def score(self, prompt: int, start: int, end: int) -> np.ndarray:
        return self._scores[self._key(prompt, start, end)]
