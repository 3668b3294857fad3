"""QuarantineS3Hook against S3 (moto over HTTP): stage files by shard and send's slices (buffered, flushed as zstd
frames, read back whole), and its client's user agent."""

from __future__ import annotations

import glob
import os
import tempfile

import pytest

from tests.airflow.conftest import BUCKET
from tests.core.test_replay_stages import replay_of

pytestmark = pytest.mark.airflow


@pytest.fixture(autouse=True)
def own_tempdir(tmp_path, monkeypatch):
    """Local stage files go to a folder of this test's own: leftovers are counted there, not in /tmp, where
    another process's tasks (a run beside the suite) may create and remove their own at any time."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


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


def slice_leftovers() -> list[str]:
    return glob.glob(os.path.join(tempfile.gettempdir(), "mparticle-send-slices-*"))


def test_send_cuts_a_shard_into_slices_by_user_context_in_bounded_buffers(store, real_record, monkeypatch):
    """ShardSlices (send): every replay of the shard in exactly one slice, the one its context hash names,
    in the shard's order; only slices with replays are read; the local files go with the context."""
    from mparticle_backfill.coalesce import slice_of
    from mparticle_backfill_airflow.operators import ShardSlices
    from mparticle_backfill_airflow.s3_hook import LocalFrameFiles

    monkeypatch.setattr(LocalFrameFiles, "FRAME_BYTES", 12_000)
    monkeypatch.setattr(LocalFrameFiles, "BUFFER_BYTES", 30_000)
    shards, shard, slice_count = 8, 3, 16
    written = []
    with store.shard_stage_files(BUCKET, key_of) as out:
        for n, replay in enumerate(replays(real_record, 300)):
            replay.context_hash = shard + shards * ((n * 7) % 11)  # 11 user contexts, all in shard 3
            out.write_replay(shard, replay)
            written.append((replay.identity, replay.context_hash))
    before = set(slice_leftovers())
    expected: dict[int, list[str]] = {}
    for identity, context_hash in written:
        expected.setdefault(slice_of(context_hash, shards, slice_count), []).append(identity)
    assert 1 < len(expected) < slice_count  # some slices are empty
    with ShardSlices(store, BUCKET, key_of(shard), shards, slice_count) as cut:
        assert len(set(slice_leftovers()) - before) == 1
        got = [[replay.identity for replay in replays_of_slice] for replays_of_slice in cut.slices()]
        assert max(cut._files.frames.values()) > 1  # slices flushed several times: the buffers are bounded
    assert got == [expected[index] for index in sorted(expected)]
    assert set(slice_leftovers()) == before


def test_a_shard_that_cannot_be_read_leaves_no_slice_files(store):
    from botocore.exceptions import ClientError

    from mparticle_backfill_airflow.operators import ShardSlices

    before = set(slice_leftovers())
    with pytest.raises(ClientError), ShardSlices(store, BUCKET, key_of(99), 8, 4):
        pass
    assert set(slice_leftovers()) == before


def test_the_client_user_agent_names_the_calling_operator_without_inspect_stack(store, monkeypatch):
    """QuarantineS3Hook finds the user agent's caller by walking frames, not with inspect.stack()."""
    import inspect

    def no_stack(*args, **kwargs):
        raise AssertionError("inspect.stack() reads the source of every frame: too slow for every task")

    monkeypatch.setattr(inspect, "stack", no_stack)

    class SomeOperator:
        def execute(self):
            return store._get_config().user_agent_extra

    agent = SomeOperator().execute()
    assert "Caller/SomeOperator" in agent.split()
    assert "Caller/Unknown" in store._get_config().user_agent_extra.split()
