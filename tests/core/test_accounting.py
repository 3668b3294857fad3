"""The summary's tables: order, content, and the task logs rendered without pandas."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter

from mparticle_backfill.accounting import Summary
from mparticle_backfill.model import ALREADY_REPLAYED, DEAD_LETTERED, HELD, REPLAYED, TOO_OLD


def summary() -> Summary:
    return Summary(
        records_read=18,
        outcomes=Counter(
            {
                (TOO_OLD, "older_than_window"): 3,
                (REPLAYED, "sent"): 9,
                (DEAD_LETTERED, "invalid_json"): 1,
                (DEAD_LETTERED, "rejected_by_api"): 2,
                (HELD, "plan_would_block"): 2,
                (ALREADY_REPLAYED, "in_ledger"): 1,
                (REPLAYED, "dry_run"): 0,  # a zero count is no row
            }
        ),
        counts=Counter({"batches_accepted": 4, "retries": 0}),
    )


def test_rows_in_report_order_largest_reason_first() -> None:
    assert summary().outcome_rows() == [
        (REPLAYED, "sent", 9),
        (HELD, "plan_would_block", 2),
        (DEAD_LETTERED, "rejected_by_api", 2),
        (DEAD_LETTERED, "invalid_json", 1),
        (ALREADY_REPLAYED, "in_ledger", 1),
        (TOO_OLD, "older_than_window", 3),
    ]


def test_render_shows_totals_reasons_and_mismatch() -> None:
    text = summary().render("extract")
    lines = text.splitlines()
    assert lines[:3] == ["extract", "=======", "records read                            18"]
    assert "  dead-lettered                          3" in lines
    assert lines.index("      rejected_by_api                    2") < lines.index(
        "      invalid_json                       1"
    )
    assert "  nothing to replay                      0" in lines
    assert lines[-3].startswith("reconciled") and lines[-3].endswith("OK")
    assert "batches_accepted" in text and "retries" not in text  # zero figures are left out
    short = Summary(records_read=19, outcomes=summary().outcomes)
    assert "MISMATCH: +1 unaccounted" in short.render()


def test_markdown_and_dataframe_agree_with_rows() -> None:
    table = summary().outcome_table()
    assert list(table.itertuples(index=False, name=None)) == summary().outcome_rows()
    markdown = summary().render_markdown("Backfill 2025-11-20")
    assert "| held (plan would block) | plan_would_block | 2 |" in markdown
    assert markdown.index("| replayed | sent | 9 |") < markdown.index("| too old | older_than_window | 3 |")
    assert "**Reconciled:** yes" in markdown


def test_task_logs_do_not_import_pandas() -> None:
    """Every task instance renders its summary: importing pandas would cost each one ~1-2 s of CPU."""
    code = textwrap.dedent(
        """
        import sys
        from collections import Counter
        from mparticle_backfill.accounting import Summary
        summary = Summary(records_read=1, outcomes=Counter({("replayed", "sent"): 1}))
        summary.render("send")
        summary.render_markdown("report")
        print("pandas" in sys.modules)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
