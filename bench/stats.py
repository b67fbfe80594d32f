"""Medians, ratios, percentiles and table rendering (plain text and Markdown) for benchmark results."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

Cell = str | int | float | None


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (pct in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def slowdown(bare_rate: float | None, rate: float | None) -> float | None:
    """How many times slower than bare (bare rate / this rate): 1.00 is no overhead."""
    if not bare_rate or not rate:
        return None
    return bare_rate / rate


def paired_slowdown(bare_rates: Sequence[float], rates: Sequence[float]) -> str | None:
    """Each round's slowdown (that round's bare rate / this configuration's rate in the same round), as
    "median (lowest-highest)": rounds interleave the configurations, so a drift of the machine's speed moves a
    round's bare run and its tracers' runs together and the pairing cancels it; the range is the noise left."""
    per_round = [b / r for b, r in zip(bare_rates, rates, strict=False) if b and r]
    if not per_round:
        return None
    return f"{statistics.median(per_round):.2f} ({min(per_round):.2f}-{max(per_round):.2f})"


def ratio(part: float | None, whole: float | None) -> float | None:
    if part is None or not whole:
        return None
    return part / whole


def fmt(value: Cell, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return value


def render_text(headers: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    """A fixed-width table: first column left-aligned, the others right-aligned."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))

    def line(items: Sequence[str]) -> str:
        return "  ".join(s.ljust(widths[i]) if i == 0 else s.rjust(widths[i]) for i, s in enumerate(items))

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in cells)
    return "\n".join(out)


def render_markdown(headers: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
    out.extend("| " + " | ".join(fmt(c) for c in row) + " |" for row in rows)
    return "\n".join(out)
