"""Account: every record read ends in exactly one outcome, and the counts reconcile."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .model import DEAD_LETTERED, OUTCOMES, BadRecord, Replay

if TYPE_CHECKING:
    import pandas as pd

_LABELS = {
    "replayed": "replayed",
    "held": "held (plan would block)",
    "nothing_to_replay": "nothing to replay",
    "too_old": "too old",
    "already_replayed": "already replayed",
    "dead_lettered": "dead-lettered",
}
_RANK = {outcome: rank for rank, outcome in enumerate(OUTCOMES)}


@dataclass(slots=True)
class Summary:
    """Counts of one stage, chunk or whole run; summaries add up with :meth:`merge`.

    ``outcomes`` counts records by (outcome, reason); ``counts`` holds every other figure (events,
    batches, requests, retries, fixes per rule, blocked identity types).
    """

    records_read: int = 0
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)

    def read(self, number: int = 1) -> None:
        self.records_read += number

    def bad_record(self, bad: BadRecord) -> None:
        self.outcomes[(DEAD_LETTERED, bad.reason)] += 1

    def finish(self, replay: Replay) -> None:
        """Count the final outcome of a record that has nothing left to do."""
        self.outcomes[replay.outcome()] += 1

    def merge(self, other: Summary) -> Summary:
        self.records_read += other.records_read
        self.outcomes.update(other.outcomes)
        self.counts.update(other.counts)
        return self

    def total(self, outcome: str) -> int:
        return sum(n for (name, _), n in self.outcomes.items() if name == outcome)

    @property
    def accounted(self) -> int:
        return sum(self.outcomes.values())

    def reconciles(self) -> bool:
        """read == replayed + nothing to replay + too old + already replayed + dead-lettered."""
        return self.records_read == self.accounted

    def to_json(self) -> dict[str, Any]:
        return {
            "records_read": self.records_read,
            "outcomes": [[o, r, n] for (o, r), n in sorted(self.outcomes.items())],
            "counts": dict(sorted(self.counts.items())),
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Summary:
        return cls(
            records_read=int(value.get("records_read", 0)),
            outcomes=Counter({(o, r): int(n) for o, r, n in value.get("outcomes", [])}),
            counts=Counter({k: int(v) for k, v in (value.get("counts") or {}).items()}),
        )

    def outcome_rows(self) -> list[tuple[str, str, int]]:
        """Records by outcome and reason, ``(outcome, reason, records)``: outcomes in report order, then the
        most frequent reason first (ties by name)."""
        rows = [(o, r, n) for (o, r), n in self.outcomes.items() if n]
        return sorted(rows, key=lambda row: (_RANK[row[0]], -row[2], row[1]))

    def outcome_table(self) -> pd.DataFrame:
        """:meth:`outcome_rows` as a pandas DataFrame (columns outcome, reason, records), for analysis in a
        notebook: ``Summary.from_json(report["summary"]).outcome_table()``.

        The task logs and reports are rendered from :meth:`outcome_rows` instead: importing pandas costs
        ~1-2 s of CPU, and every task instance (a process of its own on a worker) renders its summary.
        """
        import pandas as pd

        return pd.DataFrame(self.outcome_rows(), columns=["outcome", "reason", "records"])

    def render(self, title: str = "Backfill summary") -> str:
        """A one-screen plain-text table a person can read at a glance."""
        rows = self.outcome_rows()
        width = max(8, len(str(self.records_read)))
        lines = [title, "=" * len(title), f"{'records read':<34}{self.records_read:>{width}}"]
        for outcome in OUTCOMES:
            lines.append(f"  {_LABELS[outcome]:<32}{self.total(outcome):>{width}}")
            for row_outcome, reason, records in rows:
                if row_outcome == outcome and reason != outcome:
                    lines.append(f"      {reason:<28}{records:>{width}}")
        status = "OK" if self.reconciles() else f"MISMATCH: {self.records_read - self.accounted:+d} unaccounted"
        lines.append(f"{'reconciled':<34}{status:>{width}}")
        details = {k: v for k, v in self.counts.items() if v}
        if details:
            lines.append("")
            for name in sorted(details):
                lines.append(f"{name:<50}{details[name]:>{width}}")
        return "\n".join(lines)

    def render_markdown(self, title: str) -> str:
        """The same report as Markdown, for the report object in S3."""
        lines = [f"# {title}", "", f"**Records read:** {self.records_read}  ", ""]
        lines += ["| outcome | reason | records |", "|---|---|---:|"]
        for outcome, reason, records in self.outcome_rows():
            lines.append(f"| {_LABELS[outcome]} | {reason} | {records} |")
        lines += ["", f"**Reconciled:** {'yes' if self.reconciles() else 'NO'}", ""]
        if self.counts:
            lines += ["| figure | value |", "|---|---:|"]
            lines += [f"| {name} | {value} |" for name, value in sorted(self.counts.items()) if value]
        return "\n".join(lines) + "\n"


def merge_all(summaries: Iterable[Summary]) -> Summary:
    """Add summaries up (e.g. those of every mapped chunk of every stage)."""
    total = Summary()
    for summary in summaries:
        total.merge(summary)
    return total


Step = Callable[[Replay], object]


def advance(replays: Iterable[Replay], steps: tuple[Step, ...], summary: Summary) -> Iterator[Replay]:
    """Apply stage steps to each record in turn; a record with nothing left ends there and is counted."""
    for replay in replays:
        for step in steps:
            step(replay)
            if replay.empty:
                summary.finish(replay)
                break
        else:
            yield replay
