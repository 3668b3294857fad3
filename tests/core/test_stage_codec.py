"""Stage files between tasks: replays survive the msgpack frames exactly, and a cut file is refused."""

from __future__ import annotations

import io

import pytest

from mparticle_backfill import jsonio
from mparticle_backfill.stage_codec import CorruptStageFile, encode_replay, iter_replays
from tests.core.test_replay_stages import replay_of


def test_a_replay_comes_back_as_it_was_written_without_the_cached_body(real_record):
    replay, _, _ = replay_of(real_record)
    replay.trail.append(("dead_lettered", "invalid_event"))
    assert replay.batches
    replay.batches[0].body = jsonio.dumps(replay.batches[0].payload)  # a cache some stages fill
    expected = replay.to_json()
    (back,) = iter_replays(io.BytesIO(encode_replay(replay)))
    assert back.to_json() == expected
    assert all(batch.body is None for batch in back.batches)  # re-encoded when needed, not carried


def test_an_integer_beyond_64_bits_falls_back_to_exact_json(real_record):
    replay, _, _ = replay_of(real_record)
    replay.batch["custom_big"] = 2**70
    frame = encode_replay(replay)
    assert frame[:1] == b"J"
    (back,) = iter_replays(io.BytesIO(frame))
    assert back.batch["custom_big"] == 2**70
    assert jsonio.dumps(back.to_json()) == jsonio.dumps(replay.to_json())


def test_several_frames_in_order_and_a_cut_file_is_refused(real_record):
    replays = []
    for n in range(3):
        replay, _, _ = replay_of(real_record)
        replay.identity = f"id-{n}"
        replays.append(replay)
    data = b"".join(encode_replay(replay) for replay in replays)
    assert [r.identity for r in iter_replays(io.BytesIO(data))] == ["id-0", "id-1", "id-2"]
    with pytest.raises(CorruptStageFile, match="ends inside a frame"):
        list(iter_replays(io.BytesIO(data[:-5]), "s3://b/k"))
    with pytest.raises(CorruptStageFile, match="unknown frame kind"):
        list(iter_replays(io.BytesIO(b"X" + data[1:])))


def test_frames_are_copied_whole_and_tell_their_context_hash_without_decoding(real_record):
    from mparticle_backfill.coalesce import replay_context_hash, user_context_hash
    from mparticle_backfill.stage_codec import decode_frame, frame_context_hash, iter_frames

    kept, _, _ = replay_of(real_record)
    expected = replay_context_hash(kept)  # the transform's sharding computes and keeps it
    assert kept.context_hash == expected == user_context_hash(kept.batch)
    older, _, _ = replay_of(real_record)  # a replay of a version that did not keep it
    big, _, _ = replay_of(real_record)
    big.batch["custom_big"] = 2**70  # a JSON frame
    replay_context_hash(big)
    data = b"".join(encode_replay(replay) for replay in (kept, older, big))
    frames = list(iter_frames(io.BytesIO(data)))
    assert b"".join(frames) == data  # undecoded, header and body
    assert [frame_context_hash(frame) for frame in frames] == [expected, None, big.context_hash]
    assert decode_frame(frames[0]).to_json() == kept.to_json()
    assert decode_frame(frames[2]).batch["custom_big"] == 2**70
    with pytest.raises(CorruptStageFile, match="ends inside a frame"):
        list(iter_frames(io.BytesIO(data[:-1])))
    with pytest.raises(CorruptStageFile, match="unknown frame kind"):
        list(iter_frames(io.BytesIO(b"Z" + data[1:])))
