"""Benchmark: what the Airflow path adds to the one-process pipeline, per record.

Between the DAG's tasks, records travel as stage files in S3 (extract -> filter_by_age -> transform ->
dedupe_check -> send: four hops). This times one hop, writing and then reading back the replays that
leave the extract stage, streamed, without S3 itself, in both encodings in the same run: the gzip NDJSON
of before (``Replay.to_json`` + gzip level 3; gunzip + ``Replay.from_json``) and the msgpack frames in
zstd level 1 the tasks write now (``stage_codec``).

    .venv/bin/python bench/bench_stage_files.py --records 20000 --per-object 5000 --data bench/out/small
"""

from __future__ import annotations

import argparse
import gzip
import io
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_pipeline import generate  # noqa: E402

from mparticle_backfill import jsonio  # noqa: E402
from mparticle_backfill.accounting import Summary  # noqa: E402
from mparticle_backfill.extract import extract_records  # noqa: E402
from mparticle_backfill.model import Replay  # noqa: E402
from mparticle_backfill.select import SelectionSettings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--per-object", type=int, default=5_000)
    parser.add_argument("--data", type=Path, default=ROOT / "bench" / "out" / "small")
    args = parser.parse_args()
    paths = generate(args.data, args.records, args.per_object)
    summary = Summary()
    selection = SelectionSettings(replay_blocked_event_attributes=True)

    buffer = io.BytesIO()
    replays = 0
    started = time.process_time()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=3) as out:
        for replay in extract_records(((p.name, p.open("rb")) for p in paths), selection, summary, lambda _: None):
            out.write(jsonio.dumps(replay.to_json()) + b"\n")
            replays += 1
    extract_and_write = time.process_time() - started

    started = time.process_time()
    raw = 0
    for line in io.BufferedReader(gzip.GzipFile(fileobj=io.BytesIO(buffer.getvalue()))):  # type: ignore[arg-type]
        raw += len(line)
        Replay.from_json(jsonio.loads(line))
    read = time.process_time() - started

    started = time.process_time()
    for _ in extract_records(((p.name, p.open("rb")) for p in paths), selection, Summary(), lambda _: None):
        pass
    extract_only = time.process_time() - started
    write = extract_and_write - extract_only

    import zstandard

    from mparticle_backfill.stage_codec import encode_replay, iter_replays

    replays_list = list(extract_records(((p.name, p.open("rb")) for p in paths), selection, Summary(), lambda _: None))
    packed = io.BytesIO()
    started = time.process_time()
    with zstandard.ZstdCompressor(level=1).stream_writer(packed, closefd=False) as out:
        for replay in replays_list:
            out.write(encode_replay(replay))
    frames_write = time.process_time() - started
    started = time.process_time()
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(packed.getvalue()))
    for _ in iter_replays(io.BufferedReader(reader, 1 << 20)):  # type: ignore[arg-type]
        pass
    frames_read = time.process_time() - started

    print("gzip NDJSON (before)")
    print(f"records read          {summary.records_read:>10,}")
    print(f"replays in the file   {replays:>10,}")
    print(f"bytes per replay      {raw / replays:>10,.0f} ({buffer.tell() / replays:,.0f} gzip)")
    print(f"write per replay      {write / replays * 1e6:>10.1f} us (encode + gzip)")
    print(f"read per replay       {read / replays * 1e6:>10.1f} us (gunzip + decode)")
    print(f"extract per record    {extract_only / summary.records_read * 1e6:>10.1f} us (for scale, same run)")
    print("msgpack frames, zstd 1 (now)")
    print(f"bytes per replay      {packed.tell() / replays:>10,.0f} (zstd)")
    print(f"write per replay      {frames_write / replays * 1e6:>10.1f} us (encode + zstd)")
    print(f"read per replay       {frames_read / replays * 1e6:>10.1f} us (unzstd + decode)")
    before = (write + read) / replays
    now = (frames_write + frames_read) / replays
    print(f"one hop               {before * 1e6:>10.1f} us before, {now * 1e6:.1f} us now ({before / now:.2f}x)")


if __name__ == "__main__":
    main()
