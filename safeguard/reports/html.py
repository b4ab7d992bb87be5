"""The HTML page of ``safeguard eval``: one self-contained file, tables, inline SVG charts and PNG contact sheets.

Nothing in it is fetched when it is viewed: no scripts, fonts, style sheets or images from anywhere; the
contact sheets are ``data:`` URIs. It is rendered from the same data as the JSON file, so the two agree.

Example:
    >>> page = render_report({"title": "t", "generated": "now", "command": "safeguard eval x", "seconds": 1.0})
    >>> page.startswith("<!DOCTYPE html>"), "<h1>t</h1>" in page
    (True, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Any

from safeguard.reports.sheets import FRAMES, data_uri
from safeguard.reports.svg import bar_chart, line_chart

__all__ = ["render_report"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1180px; color: #222; padding: 0 16px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ccc; }
h3 { font-size: 15px; margin-top: 20px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; }
.warning { color: #a00; font-weight: 600; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 8px 14px; min-width: 150px; }
.card b { display: block; font-size: 22px; }
.charts { display: flex; flex-wrap: wrap; gap: 8px; }
.note { color: #555; font-size: 13px; max-width: 900px; }
.key span { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px; vertical-align: middle; }
img.sheet { image-rendering: pixelated; border: 1px solid #ccc; }
code { background: #f5f5f5; padding: 0 3px; }
"""


def _pct(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{100 * value:.{digits}f}%"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _card(label: str, value: str) -> str:
    return f'<div class="card">{escape(label)}<b>{escape(value)}</b></div>'


def _key(outcomes: Sequence[str]) -> str:
    spans = "".join(f'<span style="background: rgb{FRAMES[o]}"></span>{escape(o)}' for o in outcomes)
    return f'<p class="key">frames:{spans}</p>'


def _prompt_section(p: dict[str, Any]) -> str:
    configs = p["configs"]
    full = configs[0]
    out = ["<h2>Prompts</h2>"]
    labels = ", ".join(f"{n} {label}" for label, n in p["labels"].items())
    out.append(
        f'<p class="note">{p["rows"]} labelled prompts ({labels}) from {escape(", ".join(p["files"]))}; stages '
        f"{escape(', '.join(p['stages']))}; the {escape(p['always_on'])}. Detected = flagged (block or steer) "
        "among unsafe prompts; false positives = flagged among benign ones; borderline rows enter neither.</p>"
    )
    failed = {c["name"]: c["stage_failures"] for c in configs if c["stage_failures"]}
    if failed:
        counts = ", ".join(f"{escape(name)}: {n}" for name, n in failed.items())
        out.append(
            f'<p class="warning">Stage failures (a deadline or an error) blocked prompts, which the figures count as '
            f"flagged: {counts}. Rerun on a quieter machine or with a longer <code>prompt.deadline_s</code>.</p>"
        )
    out.append('<div class="cards">')
    out.append(_card("unsafe detected (pooled)", _pct(full["pooled_detection"])))
    out.append(_card("mean over sources", _pct(full["mean_source_detection"])))
    out.append(_card("benign flagged (pooled)", _pct(full["pooled_false_positive"], 2)))
    worst = full["worst_false_positive"]
    out.append(_card(f"worst benign source ({worst['source']})", _pct(worst["rate"], 2)))
    out.append(_card("throughput, batched", f"{full['prompts_per_second']:.0f} prompts/s"))
    out.append(_card("single prompt, median", f"{p['single_median_ms']:.2f} ms"))
    out.append("</div>")

    out.append("<h3>Per-stage ablations</h3>")
    rows = [
        (
            c["name"],
            ", ".join(c["stages"]) or "(locked rules only)",
            _pct(c["pooled_detection"]),
            _pct(c["mean_source_detection"]),
            _pct(c["pooled_false_positive"], 2),
            _pct(c["worst_false_positive"]["rate"], 2),
            f"{c['prompts_per_second']:.0f}",
        )
        for c in configs
    ]
    out.append(
        _table(
            ["configuration", "stages run", "detected", "mean over sources", "benign flagged", "worst", "prompts/s"],
            rows,
        )
    )
    names = [c["name"] for c in configs]
    out.append('<div class="charts">')
    out.append(
        bar_chart(
            names,
            [
                ("unsafe detected", [c["pooled_detection"] for c in configs]),
                ("benign flagged", [c["pooled_false_positive"] for c in configs]),
            ],
            title="Detection and false positives per configuration",
        )
    )
    top = max(c["prompts_per_second"] for c in configs)
    out.append(
        bar_chart(
            names,
            [("prompts/s", [c["prompts_per_second"] for c in configs])],
            title="Throughput per configuration (prompts/s, batched)",
            y_max=_nice(top),
            percent=False,
            height=240,
        )
    )
    out.append("</div>")

    out.append("<h3>Per source</h3>")
    sources = sorted({s for label in ("unsafe", "benign") for s in full["by_source"].get(label, {})})
    headers = ["source", "label", "n", *names]
    table_rows = []
    for label in ("unsafe", "borderline", "benign"):
        for source, tally in sorted(full["by_source"].get(label, {}).items()):
            cells = [c["by_source"][label][source]["flagged_share"] for c in configs]
            table_rows.append((source, label, tally["n"], *(_pct(v) for v in cells)))
    out.append(_table(headers, table_rows))
    series = []
    for c in configs:
        values = []
        for source in sources:
            label = "unsafe" if source in full["by_source"].get("unsafe", {}) else "benign"
            values.append(c["by_source"][label][source]["flagged_share"])
        series.append((c["name"], values))
    out.append(
        bar_chart(sources, series, title="Flagged share per source (unsafe: detection; benign: false positives)")
    )

    out.append("<h3>Per label and source category</h3>")
    category_rows = [
        (label, category, t["n"], _pct(t["flagged_share"]), _pct(t["blocked_share"]))
        for label, categories in full["by_category"].items()
        for category, t in sorted(categories.items())
    ]
    out.append(_table(["label", "category (the source's own)", "n", "flagged", "blocked"], category_rows))
    if "by_language" in full:
        out.append("<h3>Per language</h3>")
        out.append(
            '<p class="note">Identified by py3langid among the languages the policy reads; <code>und</code>: '
            "no language reached 90% probability (short prompts, token soup).</p>"
        )
        language_rows = [
            (label, language, t["n"], *(_pct(c["by_language"][label][language]["flagged_share"]) for c in configs))
            for label, languages in full["by_language"].items()
            for language, t in sorted(languages.items(), key=lambda item: -item[1]["n"])
        ]
        out.append(_table(["label", "language", "n", *names], language_rows))
    if p["sweeps"]:
        out.append(_sweep_section(p["sweeps"]))
    return "".join(out)


def _sweep_section(sweeps: dict[str, Any]) -> str:
    out = ["<h3>Threshold sweeps per category</h3>"]
    out.append(
        '<p class="note">One curve per category with a semantic head: moving that category\'s flag threshold from 0 '
        "to 1 with every other setting as the preset has it. Detection is over the unsafe prompts whose source "
        "categories map to the category; false positives over all benign prompts (log scale; 0 is drawn on the "
        "axis). The ring is the preset's threshold, measured.</p>"
    )
    out.append('<div class="charts">')
    rows = []
    for category, sweep in sweeps.items():
        # A curve needs both axes: without unsafe or benign prompts in the data there is nothing to draw.
        points = [
            (pt["false_positive"], pt["detection"])
            for pt in sweep["points"]
            if pt["detection"] is not None and pt["false_positive"] is not None
        ]
        op = sweep["operating"]
        markers = (
            [("preset", op["false_positive"], op["detection"])]
            if op["detection"] is not None and op["false_positive"] is not None
            else []
        )
        out.append(
            line_chart(
                [(category, points)],
                title=f"{category} ({sweep['positives']} unsafe, {sweep['negatives']} benign)",
                x_label="benign flagged",
                y_label="unsafe detected",
                markers=markers,
            )
        )
        rows.append(
            (
                category,
                f"{sweep['operating_threshold']:.4g}",
                sweep["positives"],
                _pct(op["detection"]),
                _pct(op["false_positive"], 2),
                "yes" if sweep["consistent"] else "no",
            )
        )
    out.append("</div>")
    out.append(
        _table(
            ["category", "preset threshold", "unsafe prompts", "detected", "benign flagged", "curve = verdicts"], rows
        )
    )
    return "".join(out)


def _image_section(i: dict[str, Any]) -> str:
    configs = i["configs"]
    out = ["<h2>Images</h2>"]
    out.append(
        f'<p class="note">{i["images"]} labelled images from {escape(", ".join(i["folders"]))}; backends '
        f"{escape(', '.join(i['stages']))}. Detected = blocked among unsafe images; false positives = blocked among "
        "benign ones.</p>"
    )
    rows = [
        (
            c["name"],
            ", ".join(c["stages"]),
            _pct(c["detection"]),
            _pct(c["false_positive"], 2),
            f"{c['images_per_second']:.1f}" if c["images_per_second"] else "–",
        )
        for c in configs
    ]
    out.append(_table(["configuration", "backends", "unsafe blocked", "benign blocked", "images/s"], rows))
    out.append(
        bar_chart(
            [c["name"] for c in configs],
            [
                ("unsafe blocked", [c["detection"] for c in configs]),
                ("benign blocked", [c["false_positive"] for c in configs]),
            ],
            title="Images: detection and false positives per configuration",
        )
    )
    full = configs[0]
    category_rows = [
        (label, category, t["n"], _pct(t["blocked_share"]))
        for label, categories in full["by_category"].items()
        for category, t in categories.items()
    ]
    out.append(_table(["label", "category", "n", "blocked"], category_rows))
    if i["errors"]:
        out.append(_table(["file not checked", "why"], [(e["file"], e["error"]) for e in i["errors"]]))
    out.append("<h3>Contact sheets (all backends; blocked images shown blurred)</h3>")
    out.append(_key(["allowed", "blocked"]))
    for label, png in i["sheets"].items():
        out.append(f'<p>{escape(label)}</p><img class="sheet" alt="{escape(label)} images" src="{data_uri(png)}">')
    return "".join(out)


def _toy_section(t: dict[str, Any]) -> str:
    configs = t["configs"]
    out = ["<h2>Toy world: generated images</h2>"]
    out.append(
        f'<p class="note">The toy pipeline (coloured shapes, 32x32; red is prohibited), {t["images_per_prompt"]} '
        f"images per prompt, {t['steps']} steps, seed {t['seed']}, preset <code>research</code> with "
        f'<code>on_block="return"</code>, steering <code>{escape(t["steering_strength"])}</code> when on. Colours '
        "are judged by pixel statistics. Prohibited delivered: a red request came back red with no flag.</p>"
    )
    rows = [
        (
            c["name"],
            ", ".join(c["stages"]) or "(none)",
            _pct(c["prohibited_delivered"]),
            _pct(c["caught"]),
            _pct(c["steered_away"]),
            _pct(c["benign_delivered_as_asked"]),
            _pct(c["false_positive"]),
            f"{c['images_per_second']:.1f}",
        )
        for c in configs
    ]
    out.append(
        _table(
            [
                "configuration",
                "stages",
                "prohibited delivered",
                "caught (blocked or flagged)",
                "steered away",
                "benign as asked",
                "benign blocked/flagged",
                "images/s",
            ],
            rows,
        )
    )
    out.append(
        bar_chart(
            [c["name"] for c in configs],
            [
                ("prohibited delivered", [c["prohibited_delivered"] for c in configs]),
                ("caught", [c["caught"] for c in configs]),
                ("steered away", [c["steered_away"] for c in configs]),
                ("benign as asked", [c["benign_delivered_as_asked"] for c in configs]),
            ],
            title="Toy world: what reaches the user, per configuration",
            width=1100,
            height=300,
        )
    )
    out.append("<h3>Image grids</h3>")
    out.append(
        f'<p class="note">Rows: {escape(", ".join(t["sheet_rows"]))}; the first 8 images of each.</p>'
        + _key(["allowed", "flagged", "prompt blocked"])
    )
    out.append('<div class="charts">')
    for c in configs:
        out.append(
            f'<figure><img class="sheet" width="{_sheet_width(c["sheet"])}" alt="{escape(c["name"])}" '
            f'src="{data_uri(c["sheet"])}"><figcaption>{escape(c["name"])}</figcaption></figure>'
        )
    out.append("</div>")
    return "".join(out)


def _sheet_width(png: bytes) -> int:
    # PNG header: the width is the big-endian integer at bytes 16-20; shown at twice its size.
    return 2 * int.from_bytes(png[16:20], "big")


def _nice(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value``."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= value)


def render_report(result: dict[str, Any]) -> str:
    """The whole page for a ``safeguard eval`` result (with its PNG sheets as bytes, which the JSON omits)."""
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{escape(result['title'])}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(result['title'])}</h1>",
        f'<p class="note">Generated {escape(result["generated"])} by <code>{escape(result["command"])}</code> '
        f"in {result['seconds']:.0f} s.</p>",
    ]
    if result.get("prompts"):
        out.append(_prompt_section(result["prompts"]))
    if result.get("images"):
        out.append(_image_section(result["images"]))
    if result.get("toy_world"):
        out.append(_toy_section(result["toy_world"]))
    out.append("</body></html>")
    return "".join(out)
