"""The console's HTML: one page, server-rendered from an :class:`~.overview.Overview` (pure: no I/O).

The page lives in an iframe of Airflow's DAG view (``external_views``), which Airflow sandboxes
(``allow-scripts allow-same-origin allow-forms``, no top navigation, no pop-ups). So a link to an
Airflow page moves the parent UI's router (same origin: its history, then a ``popstate``), a link to
S3 opens in a new tab through the parent document, and "Trigger" opens Airflow's own trigger dialog
above the tab. Opened on its own, the page's links are ordinary links.

Only counts, dates, reasons and links are shown: never identities or other personal data.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from html import escape

from .chart import STATE_COLOURS, outcome_colours, render_chart, render_legend
from .overview import (
    BACKFILLED,
    FAILED,
    NEVER,
    PARTLY,
    RUNNING,
    STATE_LABELS,
    URGENT_DAYS,
    WAITING_OUTCOMES,
    DateRow,
    Overview,
    RunSummary,
    outcome_label,
)

TITLE = "Backfill console"


def _n(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def days_left_text(days: float) -> str:
    """``12 days``, ``1 day``, ``18 h``, or ``passed`` once the oldest data is outside the window."""
    if days <= 0:
        return "passed"
    if days < 1:
        return f"{max(1, int(days * 24))} h"
    whole = int(days)
    return f"{whole} day" if whole == 1 else f"{whole} days"


def _link(url: str | None, text: str, *, kind: str, title: str = "") -> str:
    """A link; ``kind`` is ``airflow`` (a page of Airflow's UI) or ``s3`` (opens in a new tab)."""
    if not url:
        return ""
    extra = ' target="_blank" rel="noopener noreferrer"' if kind == "s3" else ""
    tip = f' title="{escape(title)}"' if title else ""
    return f'<a href="{escape(url)}" data-nav="{kind}"{extra}{tip}>{escape(text)}</a>'


def _reasons(run: RunSummary, outcomes: Iterable[str]) -> str:
    """Reasons of the outcomes that wait for someone (dead letters, held), biggest first; then the parts of
    replayed records that were held back."""
    parts = []
    for outcome in outcomes:
        reasons = run.report.reasons.get(outcome, {})
        for reason, count in sorted(reasons.items(), key=lambda item: (-item[1], item[0])):
            if count and outcome in WAITING_OUTCOMES:
                prefix = "" if outcome == "dead_lettered" else f"{outcome_label(outcome)}: "
                parts.append(f'<span class="reason">{escape(prefix + reason[:80])} <b>{count:,}</b></span>')
    report = run.report
    held = [(report.held_events, "event"), (report.held_user_attributes, "user attribute")]
    if report.held_back:
        what = ", ".join(f"<b>{n:,}</b> {name}{'s' if n != 1 else ''}" for n, name in held if n)
        tip = "not sent: in the held objects, sent by a later run of the date once the plan (or a route) allows them"
        parts.append(f'<span class="reason" title="{tip}">held back: {what}</span>')
    return " ".join(parts)


def _run_label(run_id: str) -> str:
    """A short name for a run (``manual run``, ``backfill run``); the full run id is its link's title."""
    kind = run_id.split("__", 1)[0] if "__" in run_id else ""
    return f"{kind} run" if kind else "run"


def _state_cell(row: DateRow) -> str:
    colour = STATE_COLOURS.get(row.state, "#90a4ae")
    badge = f'<span class="badge state-{row.state}" style="--c:{colour}">{escape(STATE_LABELS[row.state])}</span>'
    notes = []
    for run_id, url in zip(row.active_run_ids, row.active_run_urls, strict=True):
        notes.append(_link(url, _run_label(run_id), kind="airflow", title=run_id))
    if row.lock_run_id is not None and row.lock_run_id not in row.active_run_ids:
        holder = f'<span title="{escape(row.lock_run_id)}">{escape(_run_label(row.lock_run_id))}</span>'
        notes.append(
            f'<span class="note">{"stale " if row.lock_stale else ""}lock: {holder if row.lock_run_id else "unreadable"}</span>'
        )
    if row.state == FAILED and row.latest_airflow_run:
        run_id = row.latest_airflow_run.run_id
        notes.append(f"{_link(row.latest_airflow_run_url, _run_label(run_id), kind='airflow', title=run_id)} failed")
    if row.latest and row.latest.report.dry_run:
        notes.append('<span class="note">latest report: dry run</span>')
    if row.latest and not row.latest.report.reconciled:
        notes.append('<span class="note warn">counts do not reconcile</span>')
    return badge + "".join(f'<div class="note">{note}</div>' for note in notes)


def _row(row: DateRow, overview: Overview) -> str:
    latest = row.latest
    dry = " dry" if latest and latest.report.dry_run else ""
    cells = [
        f'<th scope="row" id="{row.anchor}"><span class="date">{row.day.isoformat()}</span>'
        + ("" if row.has_quarantine_data else '<div class="note">no quarantine objects</div>')
        + "</th>",
        f'<td class="state">{_state_cell(row)}</td>',
    ]
    left_class = "left urgent" if row.urgent else "left passed" if row.expired and not row.done else "left"
    cells.append(f'<td class="{left_class}" data-days="{row.days_left:.2f}">{days_left_text(row.days_left)}</td>')
    cells.append(
        f'<td class="num{dry}" data-outcome="records_read">{_n(latest.report.records_read if latest else None)}</td>'
    )
    for outcome in overview.outcomes:
        value = row.total(outcome)
        warn = " waiting" if value and outcome in WAITING_OUTCOMES else " zero" if value == 0 else ""
        cells.append(f'<td class="num{dry}{warn}" data-outcome="{escape(outcome)}">{_n(value)}</td>')
    cells.append(f'<td class="reasons">{_reasons(latest, overview.outcomes) if latest else ""}</td>')
    runs = len(row.history)
    label = f"{runs} run{'s' if runs != 1 else ''}" if runs else "re-run"
    toggle = (
        f'<button type="button" class="toggle" aria-expanded="false" aria-controls="h-{row.anchor}" '
        f'title="every run of this date, and how to run it again">{label} \u25b8</button>'
    )
    trigger = (
        f'<button type="button" class="trigger" data-conf="{escape(row.trigger_conf)}" '
        f'data-date="{row.day.isoformat()}" data-dag-url="{escape(overview.dag_url)}" '
        f'title="Opens Airflow\'s trigger form for this date">Trigger\u2026</button>'
    )
    links = []
    if latest:
        links.append(_link(latest.grid_url, "run", kind="airflow", title=latest.run_id or latest.report.run_key))
        links.append(_link(latest.report_url, "report", kind="s3", title="the latest report (Markdown, in S3)"))
        links.append(_link(latest.dead_letters_url, "dead letters", kind="s3", title="the latest run's dead letters"))
        links.append(_link(latest.held_url, "held", kind="s3", title="what the latest run's plan check held back"))
        links.append(
            _link(latest.payloads_url, "payloads", kind="s3", title="the requests the dry run would have sent")
        )
    shown = " \u00b7 ".join(link for link in links if link)
    cells.append(f'<td class="links"><div>{toggle} {trigger}</div><div class="small">{shown}</div></td>')
    classes = f"row state-{row.state}" + (" is-urgent" if row.urgent else "")
    main = f'<tr class="{classes}" data-date="{row.day.isoformat()}" data-state="{row.state}">{"".join(cells)}</tr>'
    width = 6 + len(overview.outcomes)
    detail = f'<tr class="history" id="h-{row.anchor}" hidden><td colspan="{width}">{_history(row, overview)}</td></tr>'
    return main + detail


def _history(row: DateRow, overview: Overview) -> str:
    """Every run of the date (its reports, newest first), and how to run the date again."""
    head = "".join(f"<th>{escape(outcome_label(o))}</th>" for o in overview.outcomes)
    lines = []
    for run in row.history:
        report = run.report
        written = report.written_at.strftime("%Y-%m-%d %H:%M UTC") if report.written_at else ""
        name = _link(run.grid_url, run.run_id, kind="airflow") if run.grid_url else escape(run.run_id or report.run_key)
        flags = " ".join(
            flag
            for flag in (
                "dry run" if report.dry_run else "",
                "" if report.reconciled else "not reconciled",
                run.airflow_state or "",
                f"plan check: {report.plan_check}" if report.plan_check not in (None, "off") else "",
            )
            if flag
        )
        counts = "".join(f'<td class="num">{_n(report.total(o))}</td>' for o in overview.outcomes)
        links = " ".join(
            link
            for link in (
                _link(run.report_url, "report", kind="s3"),
                _link(run.report_json_url, "json", kind="s3"),
                _link(run.dead_letters_url, "dead letters", kind="s3"),
                _link(run.held_url, "held", kind="s3"),
                _link(run.payloads_url, "payloads", kind="s3"),
            )
            if link
        )
        lines.append(
            f"<tr><td>{written}</td><td>{name}</td><td>{escape(flags)}</td>"
            f'<td class="num">{_n(report.records_read)}</td>{counts}'
            f'<td class="reasons">{_reasons(run, overview.outcomes)}</td><td class="links">{links}</td></tr>'
        )
    table = (
        f'<table class="runs-table"><thead><tr><th>report written</th><th>run</th><th></th><th>read</th>{head}'
        f"<th>waiting, by reason</th><th></th></tr></thead><tbody>{''.join(lines)}</tbody></table>"
        if lines
        else '<p class="note">No run of this date has written a report yet.</p>'
    )
    rerun = (
        '<div class="rerun"><div><span class="label">Trigger form</span> set <b>Partition date</b> to '
        f"<code>{row.day.isoformat()}</code>, or paste this conf: <code>{escape(row.trigger_conf)}</code> "
        f'<button type="button" class="copy" data-copy="{escape(row.trigger_conf)}">copy</button></div>'
        f'<div><span class="label">CLI</span> <code>{escape(row.backfill_cli)}</code> '
        f'<button type="button" class="copy" data-copy="{escape(row.backfill_cli)}">copy</button></div></div>'
    )
    return table + rerun


def _summary(overview: Overview) -> str:
    chips = [f'<span class="chip"><b>{len(overview.rows):,}</b> dates</span>']
    for state in (BACKFILLED, PARTLY, NEVER, RUNNING, FAILED):
        count = overview.count(state)
        chips.append(
            f'<span class="chip" style="--c:{STATE_COLOURS[state]}"><i></i><b>{count:,}</b> '
            f"{escape(STATE_LABELS[state])}</span>"
        )
    urgent = overview.urgent
    if urgent:
        dates = ", ".join(
            f'<a href="#{row.anchor}">{row.day.isoformat()}</a> ({days_left_text(row.days_left)}, '
            f"{escape(STATE_LABELS[row.state])})"
            for row in urgent
        )
        alert = (
            f'<div class="alert" role="alert"><b>{len(urgent)} date{"s" if len(urgent) != 1 else ""} '
            f"leave{'s' if len(urgent) == 1 else ''} the replay window in under {URGENT_DAYS} days and "
            f"{'is' if len(urgent) == 1 else 'are'} not done:</b> {dates}</div>"
        )
    else:
        alert = (
            f'<div class="ok">No date that is not done leaves the replay window in the next {URGENT_DAYS} days.</div>'
        )
    return f'<div class="chips">{"".join(chips)}</div>{alert}'


def render_page(
    overview: Overview,
    *,
    source: str,
    loaded_at: datetime,
    refresh_url: str,
    json_url: str,
    notice: str = "",
) -> str:
    """The whole page.

    :param source: where the data comes from, e.g. ``s3://bucket/prefix`` (no credentials).
    :param loaded_at: when S3 was last read (the listing is cached for a short while).
    """
    age = max(0, int((overview.now - loaded_at).total_seconds()))
    head_cells = "".join(
        f'<th class="num" style="--c:{colour}"><i></i>{escape(outcome_label(outcome))}</th>'
        for outcome, colour in outcome_colours(overview.outcomes).items()
    )
    rows = "".join(_row(row, overview) for row in overview.rows)
    table = (
        '<table class="dates"><thead><tr><th>date</th><th>state</th><th title="before the oldest data of the '
        'date leaves the replay window">days left</th><th class="num">read</th>'
        f"{head_cells}<th>waiting, by reason</th><th>runs and links</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        if overview.rows
        else '<p class="empty">No quarantine date found under the configured prefix, and no report.</p>'
    )
    chart = render_chart(overview)
    body = f"""
<header>
  <h1>{TITLE} <span class="dag">{escape(overview.dag_id)}</span></h1>
  <div class="meta">Quarantine <code>{escape(source)}</code> · replay window <b>{overview.max_age_days} days</b>
    (<code>max_age_days</code>) · S3 read {age} s ago ({loaded_at.strftime("%H:%M:%S")} UTC) ·
    <a href="{escape(refresh_url)}" class="refresh">refresh now</a> ·
    <a href="{escape(json_url)}" target="_blank" rel="noopener">JSON</a></div>
</header>
{f'<div class="alert">{escape(notice)}</div>' if notice else ""}
<section class="summary">{_summary(overview)}</section>
<section class="chart-box">{chart}{render_legend(overview) if chart else ""}</section>
<section class="table-box">{table}</section>
<footer>
  <p><b>State</b>: <i>running</i> a run of the date is queued or running, or holds its lock;
  <i>failed</i> its latest run failed before writing a report; <i>never backfilled</i> no report of a run that
  sent (dry runs do not count); <i>partly</i> the latest report has dead-lettered or held records, held back
  events or user attributes of replayed records (a data plan would block them again), or does not reconcile;
  <i>backfilled</i> everything else was replayed, already replayed, too old or had nothing to replay.
  Figures are the latest report's (history: every run's report of the date). <b>Days left</b>: until the date's
  oldest data (its midnight, UTC) is older than <code>max_age_days</code>; highlighted under {URGENT_DAYS} days
  when the date is not done.</p>
  <p><b>Trigger\u2026</b> opens Airflow's own trigger form above this tab with <i>Partition date</i> filled in, and
  copies the date's conf (Airflow 3.3 has no URL that pre-fills the form): check the form, then trigger.</p>
</footer>
<div id="toast" role="status" aria-live="polite" hidden></div>
"""
    return _DOCUMENT.format(title=escape(f"{TITLE} · {overview.dag_id}"), style=_STYLE, body=body, script=_SCRIPT)


def render_message(title: str, message: str) -> str:
    """A page with one message (e.g. the settings Variable is missing, or another DAG's tab)."""
    body = f'<header><h1>{escape(title)}</h1></header><p class="empty">{escape(message)}</p>'
    return _DOCUMENT.format(title=escape(title), style=_STYLE, body=body, script=_SCRIPT)


_DOCUMENT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{style}</style></head>
<body>{body}<script>{script}</script></body></html>"""

_STYLE = """
:root { --fg:#1a202c; --muted:#5f6b7a; --bg:#fff; --panel:#f7f9fb; --line:#e2e8f0; --link:#0b63c4;
  --urgent-bg:#fde8e8; --urgent-fg:#a61b1b; --warn:#b7791f; color-scheme: light; }
html.dark { --fg:#e2e8f0; --muted:#a0aec0; --bg:#1a202c; --panel:#232b38; --line:#2d3748; --link:#63b3ed;
  --urgent-bg:#4a1d1d; --urgent-fg:#feb2b2; --warn:#f6ad55; color-scheme: dark; }
* { box-sizing: border-box; }
body { margin:0; padding:14px 14px 40px; font:13px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
  color:var(--fg); background:var(--bg); }
a { color:var(--link); text-decoration:none; } a:hover { text-decoration:underline; }
h1 { font-size:20px; margin:0 0 4px; font-weight:600; } h1 .dag { font-weight:400; color:var(--muted); font-size:15px; }
.meta { color:var(--muted); font-size:13px; } code { font:12px ui-monospace,Menlo,Consolas,monospace;
  background:var(--panel); border:1px solid var(--line); border-radius:4px; padding:1px 4px; }
section { margin-top:14px; }
.chips { display:flex; flex-wrap:wrap; gap:8px; }
.chip { border:1px solid var(--line); border-radius:16px; padding:3px 12px; background:var(--panel); font-size:13px; }
.chip i { display:inline-block; width:9px; height:9px; border-radius:50%; background:var(--c); margin-right:6px; }
.alert { margin-top:10px; padding:8px 12px; border-radius:6px; background:var(--urgent-bg); color:var(--urgent-fg); }
.alert a { color:inherit; text-decoration:underline; } .ok { margin-top:10px; color:var(--muted); }
.chart-box { border:1px solid var(--line); border-radius:8px; padding:8px 8px 4px; background:var(--panel); }
.chart { width:100%; height:auto; display:block; } .chart .grid { stroke:var(--line); }
.chart .axis { font-size:11px; fill:var(--muted); } .chart .window { stroke:var(--urgent-fg); stroke-dasharray:4 3; }
.chart .window-label { font-size:11px; fill:var(--urgent-fg); } .chart a.bar:hover rect { opacity:.75; }
.legend { display:flex; flex-wrap:wrap; gap:4px 14px; font-size:12px; color:var(--muted); padding:4px 6px; }
.legend .legend-title { font-weight:600; color:var(--fg); } .legend .legend-title + .key { margin-left:-6px; }
.key i { display:inline-block; width:10px; height:10px; margin-right:5px; border-radius:2px; vertical-align:-1px; }
.key i.strip { height:5px; vertical-align:2px; }
table.dates { border-collapse:collapse; width:100%; font-size:12.5px; }
table.dates > thead th { position:sticky; top:0; background:var(--bg); z-index:1; text-align:left; font-weight:600;
  border-bottom:2px solid var(--line); padding:6px 6px; vertical-align:bottom; line-height:1.2; }
table.dates > thead th.num { white-space:normal; max-width:70px; }
table.dates > thead th i { display:inline-block; width:8px; height:8px; border-radius:2px; background:var(--c); margin-right:4px; }
table.dates > tbody > tr.row > * { border-bottom:1px solid var(--line); padding:5px 5px; vertical-align:top; text-align:left; }
.num.zero { color:var(--muted); opacity:.6; } button.toggle { white-space:nowrap; }
.num { text-align:right !important; font-variant-numeric:tabular-nums; white-space:nowrap; }
.num.dry { font-style:italic; color:var(--muted); } .num.waiting { color:var(--urgent-fg); font-weight:600; }
.date { font-weight:600; white-space:nowrap; font-variant-numeric:tabular-nums; }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600; white-space:nowrap;
  color:#fff; background:var(--c); }
.badge.state-partly { color:#3d2c00; } .badge.state-never { color:#1a202c; }
.note { color:var(--muted); font-size:12px; } .note.warn { color:var(--warn); }
td.left { white-space:nowrap; font-variant-numeric:tabular-nums; }
td.left.urgent { background:var(--urgent-bg); color:var(--urgent-fg); font-weight:700; }
td.left.passed { color:var(--muted); text-decoration:line-through; }
tr.is-urgent > th { box-shadow: inset 3px 0 0 var(--urgent-fg); }
.reason { display:block; white-space:nowrap; font-size:12px; }
td.links { white-space:nowrap; } td.links button { margin:0 4px 3px 0; } .small { font-size:12px; }
button { font:inherit; font-size:12px; border:1px solid var(--line); background:var(--panel); color:var(--fg);
  border-radius:5px; padding:1px 8px; cursor:pointer; } button:hover { border-color:var(--link); }
button.trigger { border-color:var(--link); color:var(--link); }
tr.history > td { background:var(--panel); padding:8px 12px 12px; border-bottom:1px solid var(--line); }
table.runs-table { border-collapse:collapse; font-size:12px; margin-bottom:8px; }
table.runs-table th, table.runs-table td { padding:3px 8px; border-bottom:1px solid var(--line); text-align:left; }
.rerun { display:grid; gap:6px; font-size:12px; } .rerun code { white-space:normal; word-break:break-all; } .rerun .label { font-weight:600; display:inline-block; min-width:90px; }
footer { margin-top:20px; color:var(--muted); font-size:12px; max-width:1100px; }
.empty { color:var(--muted); margin:30px 0; }
#toast { position:fixed; right:16px; bottom:16px; max-width:480px; background:var(--fg); color:var(--bg);
  padding:10px 14px; border-radius:8px; font-size:13px; box-shadow:0 4px 14px rgba(0,0,0,.25); }
"""

# Links out of Airflow's sandboxed iframe (no top navigation, no pop-ups): an Airflow page moves the parent's
# router; S3 opens in a new tab through the parent document; "Trigger" clicks Airflow's own Trigger button.
_SCRIPT = """
(function () {
  function parentUi() {
    try { if (window.top !== window && window.top.location.origin === window.location.origin) return window.top; }
    catch (e) {}
    return null;
  }
  var top = parentUi();
  try { if (top && top.document.documentElement.classList.contains("dark")) document.documentElement.classList.add("dark"); }
  catch (e) {}
  function toast(text) {
    var box = document.getElementById("toast"); if (!box) return;
    box.textContent = text; box.hidden = false; clearTimeout(toast.timer);
    toast.timer = setTimeout(function () { box.hidden = true; }, 9000);
  }
  function copy(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).then(function () { return true; }, function () { return fallback(text); });
    }
    return Promise.resolve(fallback(text));
  }
  function fallback(text) {
    var area = document.createElement("textarea"); area.value = text; document.body.appendChild(area); area.select();
    var ok = false; try { ok = document.execCommand("copy"); } catch (e) {} area.remove(); return ok;
  }
  // Fills a field of Airflow's trigger form (its inputs are named element_<param>), as typing would;
  // if the form has no such field (another Airflow version), the toast still says what to set.
  function prefill(ui, name, value, tries) {
    var input = ui.document.getElementById("element_" + name);
    if (!input) { if (tries > 0) setTimeout(function () { prefill(ui, name, value, tries - 1); }, 100); return; }
    var setter = Object.getOwnPropertyDescriptor(ui.HTMLInputElement.prototype, "value").set;
    setter.call(input, value);
    input.dispatchEvent(new ui.Event("input", {bubbles: true}));
    input.dispatchEvent(new ui.Event("change", {bubbles: true}));
    input.scrollIntoView({block: "center"});
  }
  function navigateUi(url) {
    if (!top) { window.location.href = url; return; }
    var state = top.history.state || {};
    top.history.pushState({usr: null, key: Math.random().toString(36).slice(2, 10), idx: (state.idx || 0) + 1}, "", url);
    top.dispatchEvent(new PopStateEvent("popstate", {state: top.history.state}));
  }
  document.addEventListener("click", function (event) {
    var target = event.target;
    var toggle = target.closest("button.toggle");
    if (toggle) {
      var detail = document.getElementById(toggle.getAttribute("aria-controls"));
      var open = toggle.getAttribute("aria-expanded") !== "true";
      detail.hidden = !open; toggle.setAttribute("aria-expanded", String(open));
      toggle.textContent = toggle.textContent.replace(open ? "\\u25b8" : "\\u25be", open ? "\\u25be" : "\\u25b8");
      return;
    }
    var button = target.closest("button.copy");
    if (button) {
      copy(button.dataset.copy).then(function (ok) { toast(ok ? "Copied." : "Select the text and copy it."); });
      return;
    }
    var trigger = target.closest("button.trigger");
    if (trigger) {
      var conf = trigger.dataset.conf, day = trigger.dataset.date;
      copy(conf).then(function (ok) {
        var found = top && top.document.querySelector('[data-testid="trigger-dag-button"]');
        if (found && found.disabled) { toast("Airflow does not let you trigger this DAG."); return; }
        if (found) { found.click(); prefill(top, "partition_date", day, 40); } else { navigateUi(trigger.dataset.dagUrl); }
        toast("Trigger form for " + day + ": Partition date " + day + (ok ? " (the conf " : " (conf ") + conf +
              (ok ? " is copied" : "") + ")." + (found ? "" : " Click Trigger on the DAG page."));
      });
      return;
    }
    var link = target.closest("a[data-nav]");
    if (!link || !top || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    if (link.dataset.nav === "airflow") { navigateUi(link.href); return; }
    var out = top.document.createElement("a");
    out.href = link.href; out.target = "_blank"; out.rel = "noopener noreferrer";
    top.document.body.appendChild(out); out.click(); out.remove();
  });
})();
"""
