"""Stage files by shard against S3 (moto over HTTP): buffered, flushed as zstd frames, read back whole."""

from __future__ import annotations

import glob
import os
import tempfile

import pytest

from tests.airflow.conftest import BUCKET
from tests.core.test_replay_stages import replay_of

pytestmark = pytest.mark.airflow


@pytest.fixture
def store(s3, connections):
    from mparticle_backfill_airflow.s3_hook import QuarantineS3Hook

    return QuarantineS3Hook()


def key_of(shard: int) -> str:
    return f"state/transform/shard-{shard:05d}/chunk-00000.msgpack.zst"


def replays(real_record, count: int):
    for n in range(count):
        replay, _, _ = replay_of(real_record)
        replay.identity = f"replay-{n:04d}"
        yield replay


def leftovers() -> list[str]:
    return glob.glob(os.path.join(tempfile.gettempdir(), "shard-stage-*"))


def test_many_shards_with_small_buffers_come_back_whole_in_order(store, real_record, monkeypatch):
    from mparticle_backfill_airflow.s3_hook import ShardStageWriters

    # Small enough that shards are flushed many times, both alone (frame) and all together (buffer).
    monkeypatch.setattr(ShardStageWriters, "FRAME_BYTES", 12_000)
    monkeypatch.setattr(ShardStageWriters, "BUFFER_BYTES", 30_000)
    before = set(leftovers())
    expected: dict[int, list[str]] = {}
    with store.shard_stage_files(BUCKET, key_of) as out:
        for n, replay in enumerate(replays(real_record, 400)):
            shard = (n * n) % 37  # uneven: some shards get many replays, some few, some none
            out.write_replay(shard, replay)
            expected.setdefault(shard, []).append(replay.identity)
            assert out._buffered <= ShardStageWriters.BUFFER_BYTES  # bounded at every step
    assert len(out) == len(expected) < 37
    assert max(out.frames.values()) > 3 and min(out.frames.values()) >= 1
    listed = store.list_keys(bucket_name=BUCKET, prefix="state/transform/")
    assert sorted(listed) == [key_of(shard) for shard in sorted(expected)]  # no empty shard uploaded
    for shard, identities in expected.items():
        assert [r.identity for r in store.read_replays(BUCKET, key_of(shard))] == identities
        assert len(list(store.read_frames(BUCKET, key_of(shard)))) == len(identities)
        assert out.lines[shard] == len(identities)
    assert set(leftovers()) == before  # the local files are gone


def test_a_failed_stage_uploads_nothing_and_leaves_no_local_file(store, real_record):
    before = set(leftovers())
    with pytest.raises(RuntimeError, match="transform failed"), store.shard_stage_files(BUCKET, key_of) as out:
        for n, replay in enumerate(replays(real_record, 5)):
            out.write_replay(n, replay)
        out._flush(0)  # something reached the local file before the failure
        raise RuntimeError("transform failed")
    assert store.list_keys(bucket_name=BUCKET, prefix="state/") == []
    assert set(leftovers()) == before
