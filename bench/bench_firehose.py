"""Benchmark: reading a Kinesis Firehose object (records concatenated, no newlines) against NDJSON.

Both go through ``extract.iter_records`` in the same run; the old reader (before the one-pass scanner)
is timed on smaller objects to show the quadratic cost it had.

    .venv/bin/python bench/bench_firehose.py --mb 100 --gzip --old 4000 8000 16000
"""

from __future__ import annotations

import argparse
import gc
import gzip
import io
import random
import re
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mparticle_backfill import jsonio  # noqa: E402
from mparticle_backfill.extract import INVALID_JSON, iter_records, open_object, parse_document  # noqa: E402
from mparticle_backfill.model import BadRecord, QuarantineRecord, RecordRef  # noqa: E402
from tools import synthetic  # noqa: E402

DAY_MS = 1_763_596_800_000  # 2025-11-20T00:00:00Z
KEY = "fh/2025/11/20/12/mparticle-quarantine-1-2025-11-20-12-00-00-00000001"


# The reader as it was before the one-pass scanner (jsonio.iter_documents and extract.parse_line at
# c4cf4c9), copied verbatim but for names, so that both can be timed in one run.
_old_decoder = msgspec.json.Decoder()
_OLD_TRAILING = re.compile(r"trailing characters \(byte (\d+)\)")


def _old_iter_documents(raw: bytes) -> Iterator[Any]:
    rest = raw
    while rest:
        try:
            yield _old_decoder.decode(rest)
            return
        except msgspec.DecodeError as error:
            match = _OLD_TRAILING.search(str(error))
            if match is None:
                raise
            end = int(match.group(1)) - 1  # msgspec counts bytes from 1
            yield _old_decoder.decode(rest[:end])
            rest = rest[end:].lstrip()


def _old_parse_line(object_key: str, line_number: int, raw: bytes) -> list[QuarantineRecord | BadRecord]:
    try:
        return [parse_document(RecordRef(object_key, line_number), jsonio.loads(raw), raw)]
    except jsonio.DecodeError:
        pass
    try:
        documents = list(_old_iter_documents(raw))
    except jsonio.DecodeError as error:
        detail = str(error).replace("JSON is malformed: ", "")
        return [BadRecord(RecordRef(object_key, line_number), INVALID_JSON, detail, raw.decode("utf-8", "replace"))]
    return [
        parse_document(RecordRef(object_key, line_number, part), document, jsonio.dumps(document))
        for part, document in enumerate(documents, start=1)
    ]


def old_iter_records(object_key: str, stream: Any) -> Iterator[QuarantineRecord | BadRecord]:
    reader, _ = open_object(stream)
    for line_number, raw_line in enumerate(reader, start=1):
        raw = raw_line.strip()
        if raw:
            yield from _old_parse_line(object_key, line_number, raw)


def records(count: int, seed: int = 42) -> list[bytes]:
    """``count`` synthetic quarantine records (1 to 6 events, 0 to 8 attributes), each encoded."""
    return list(synthetic.partition_lines(random.Random(seed), DAY_MS, count))


def records_of_size(megabytes: float) -> list[bytes]:
    rng = random.Random(42)
    found: list[bytes] = []
    size = 0
    while size < megabytes * 1_000_000:
        found.extend(synthetic.partition_lines(rng, DAY_MS, 1000))
        size += sum(len(record) for record in found[-1000:])
    return found


def cpu_seconds(reader: Any, body: bytes) -> tuple[float, int]:
    """CPU seconds to read every record of ``body`` through ``reader``; and how many there were."""
    gc.collect()
    started = time.process_time()
    count = sum(1 for item in reader(KEY, io.BytesIO(body)) if type(item) is QuarantineRecord)
    return time.process_time() - started, count


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100, help="size of the Firehose object, MB")
    parser.add_argument("--rounds", type=int, default=3, help="alternate NDJSON and Firehose this many times")
    parser.add_argument("--gzip", action="store_true", help="also read both objects gzip-compressed")
    parser.add_argument("--old", type=int, nargs="*", default=[4000, 8000, 16000], help="record counts for old vs new")
    args = parser.parse_args()

    lines = records_of_size(args.mb)
    ndjson = b"\n".join(lines) + b"\n"
    firehose = b"".join(lines)
    del lines
    print(f"{len(firehose) / 1e6:.1f} MB Firehose object, {len(ndjson) / 1e6:.1f} MB as NDJSON")
    print(f"peak RSS with both objects in memory: {peak_rss_mb():.0f} MB")

    bodies = {"ndjson": ndjson, "firehose": firehose}
    if args.gzip:
        bodies |= {"ndjson.gz": gzip.compress(ndjson, 5), "firehose.gz": gzip.compress(firehose, 5)}
    best = dict.fromkeys(bodies, float("inf"))
    counts = {}
    for round_number in range(1, args.rounds + 1):
        for name, body in bodies.items():
            seconds, counts[name] = cpu_seconds(iter_records, body)
            best[name] = min(best[name], seconds)
            print(f"  round {round_number} {name:11s} {seconds:6.2f} s CPU  {counts[name] / seconds:9,.0f} records/s")
    assert len(set(counts.values())) == 1, counts
    print(f"peak RSS after reading: {peak_rss_mb():.0f} MB")
    for suffix in ("", ".gz") if args.gzip else ("",):
        plain, concatenated = best["ndjson" + suffix], best["firehose" + suffix]
        print(
            f"best of {args.rounds}{' (gzip)' if suffix else ''}: NDJSON {counts['ndjson'] / plain:,.0f} records/s, "
            f"Firehose {counts['firehose'] / concatenated:,.0f} records/s ({counts['firehose']:,} records): "
            f"Firehose takes {concatenated / plain:.2f}x the time of NDJSON (target: at most 1.5x)"
        )

    if args.old:
        print("old reader (re-slicing the rest of the line after each record) against the one-pass scanner:")
        for count in args.old:
            body = b"".join(records(count, seed=count))
            old, old_count = cpu_seconds(old_iter_records, body)
            new, new_count = cpu_seconds(iter_records, body)
            assert old_count == new_count == count, (old_count, new_count, count)
            print(
                f"  {count:6,} records ({len(body) / 1e6:5.1f} MB, one line): old {old:7.2f} s "
                f"({old / count * 1e6:7.0f} µs/record), new {new:5.2f} s ({new / count * 1e6:4.0f} µs/record)"
            )


if __name__ == "__main__":
    main()
