"""The console's chart: records per quarantine date, stacked by outcome, as an SVG string (no JS library).

Pure: an :class:`~.overview.Overview` in, SVG out. Each day is a bar of its latest report's outcomes
(linked to its row of the table), with the date's state as a strip under it, and a dashed line where the
replay window starts.
"""

from __future__ import annotations

from datetime import date, timedelta
from html import escape

from .overview import BACKFILLED, FAILED, NEVER, PARTLY, RUNNING, STATE_LABELS, Overview, outcome_label

OUTCOME_COLOURS = {
    "replayed": "#2e7d32",
    "held": "#f9a825",
    "dead_lettered": "#c62828",
    "already_replayed": "#81c784",
    "too_old": "#9e9e9e",
    "nothing_to_replay": "#cfd8dc",
}
_SPARE_COLOURS = ("#6a1b9a", "#00838f", "#ef6c00", "#5d4037", "#283593", "#ad1457")
STATE_COLOURS = {
    BACKFILLED: "#2e7d32",
    PARTLY: "#f9a825",
    NEVER: "#90a4ae",
    RUNNING: "#1565c0",
    FAILED: "#c62828",
}

WIDTH, HEIGHT = 1100, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 14, 40
STRIP = 6  # the state strip under the bars
MAX_DAYS = 800  # at most this many days are drawn (the newest)


def outcome_colours(outcomes: tuple[str, ...]) -> dict[str, str]:
    """A colour per outcome: fixed for known ones, spare colours in turn for any other."""
    colours, spare = {}, iter(_SPARE_COLOURS * 4)
    for outcome in outcomes:
        colours[outcome] = OUTCOME_COLOURS.get(outcome) or next(spare, "#607d8b")
    return colours


def _nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten not below ``value``."""
    if value <= 0:
        return 1
    power = 1
    while power * 10 <= value:
        power *= 10
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power


def _thousands(value: int) -> str:
    return f"{value / 1_000_000:g}M" if value >= 1_000_000 else f"{value / 1000:g}k" if value >= 1000 else str(value)


def render_chart(overview: Overview) -> str:
    """The SVG: one stacked bar per day from the oldest to the newest date (gaps stay empty)."""
    rows = {row.day: row for row in overview.rows}
    if not rows:
        return ""
    newest, oldest = max(rows), min(rows)
    oldest = max(oldest, newest - timedelta(days=MAX_DAYS - 1))
    days = [oldest + timedelta(days=n) for n in range((newest - oldest).days + 1)]
    colours = outcome_colours(overview.outcomes)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM - STRIP - 4
    slot = plot_w / len(days)
    bar = max(1.0, slot * 0.8) if slot >= 2 else slot
    peak = _nice_ceiling(max((row.latest.report.records_read for row in rows.values() if row.latest), default=0))
    scale = plot_h / peak
    base_y = TOP + plot_h
    label = f"Records per quarantine date by outcome, {days[0].isoformat()} to {days[-1].isoformat()}"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(label)}" class="chart" preserveAspectRatio="xMidYMid meet">',
        f"<title>{escape(label)}</title>",
    ]
    for fraction in (0, 0.5, 1):
        y = base_y - plot_h * fraction
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="axis">'
            f"{_thousands(int(peak * fraction))}</text>"
        )
    for index, day in enumerate(days):
        x = LEFT + index * slot + (slot - bar) / 2
        row = rows.get(day)
        if row is None:
            continue
        parts = [f"{day.isoformat()}: {STATE_LABELS[row.state]}"]
        segments = []
        y = base_y
        if row.latest:
            report = row.latest.report
            parts.append(f"read {report.records_read}")
            for outcome in overview.outcomes:
                count = report.total(outcome)
                if count:
                    parts.append(f"{outcome_label(outcome)} {count}")
                    height = count * scale
                    y -= height
                    segments.append(
                        f'<rect x="{x:.2f}" y="{y:.2f}" width="{bar:.2f}" height="{height:.2f}" '
                        f'fill="{colours[outcome]}"/>'
                    )
        strip = STATE_COLOURS.get(row.state, "#90a4ae")
        segments.append(
            f'<rect x="{x:.2f}" y="{base_y + 4}" width="{bar:.2f}" height="{STRIP}" fill="{strip}" class="state"/>'
        )
        out.append(
            f'<a href="#{row.anchor}" class="bar"><title>{escape(" · ".join(parts))}</title>{"".join(segments)}</a>'
        )
    out += _date_labels(days, slot)
    start = overview.window_start
    if days[0] <= start <= days[-1]:
        x = LEFT + (start - days[0]).days * slot
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{base_y + 4 + STRIP}" class="window"/>')
        anchor = "end" if x > WIDTH - 200 else "start"
        offset = -4 if anchor == "end" else 4
        out.append(
            f'<text x="{x + offset:.1f}" y="{TOP + 10}" text-anchor="{anchor}" class="window-label">'
            f"replay window ({overview.max_age_days} days) \u2192</text>"
        )
    out.append("</svg>")
    return "".join(out)


def _date_labels(days: list[date], slot: float) -> list[str]:
    """Tick labels: the first of each month, or every few days over a short range."""
    y = HEIGHT - 8
    if len(days) <= 45:
        every = max(1, round(60 / max(slot, 1)))
        picks = [i for i in range(len(days)) if i % every == 0]
        fmt = "%b %d"
    else:
        picks = [i for i, day in enumerate(days) if day.day == 1]
        fmt = "%b %Y" if len(days) > 400 else "%b"
    return [
        f'<text x="{LEFT + i * slot + slot / 2:.1f}" y="{y}" text-anchor="middle" class="axis">'
        f"{days[i].strftime(fmt)}</text>"
        for i in picks
    ]


def render_legend(overview: Overview) -> str:
    """The chart's legend, as HTML: one swatch per outcome and per state."""
    colours = outcome_colours(overview.outcomes)
    items = [
        f'<span class="key"><i style="background:{colours[o]}"></i>{escape(outcome_label(o))}</span>'
        for o in overview.outcomes
    ]
    states = [
        f'<span class="key"><i class="strip" style="background:{STATE_COLOURS[s]}"></i>{escape(STATE_LABELS[s])}</span>'
        for s in (BACKFILLED, PARTLY, NEVER, RUNNING, FAILED)
    ]
    return (
        f'<div class="legend"><span class="legend-title">Outcomes</span>{"".join(items)}'
        f'<span class="legend-title">State (strip)</span>{"".join(states)}</div>'
    )
