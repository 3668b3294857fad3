"""Stage files between tasks: replays survive the msgpack frames exactly, and a cut file is refused."""

from __future__ import annotations

import copy
import io

import msgspec
import pytest

from mparticle_backfill import jsonio
from mparticle_backfill.stage_codec import CorruptStageFile, encode_replay, iter_replays, iter_replays_for_send
from tests.core.test_replay_stages import replay_of


def test_a_replay_comes_back_as_it_was_written_its_batches_carried_as_their_bodies(real_record):
    replay, _, _ = replay_of(real_record)
    replay.trail.append(("dead_lettered", "invalid_event"))
    assert replay.batches
    replay.batches.append(replay.batches[0])
    replay.batches[1] = msgspec.structs.replace(replay.batches[0], body=None)  # as the dedupe check re-cuts one
    expected = replay.to_json()
    frame = encode_replay(replay)
    written = msgspec.msgpack.decode(frame[5:])  # the frame's fields as written
    assert [batch["payload"] for batch in written["batches"]] == [None, None]  # the body only, as sent
    assert [batch["body"] for batch in written["batches"]] == [jsonio.dumps(replay.batches[0].payload)] * 2
    (back,) = iter_replays(io.BytesIO(frame))
    assert back.to_json() == expected
    sent = jsonio.dumps(replay.batches[0].payload)
    for batch in back.batches:
        assert batch.body == sent and batch.size == len(sent)
        assert batch.payload == jsonio.loads(sent)

    (lean,) = iter_replays_for_send(io.BytesIO(frame))  # the send stage: bodies only, never decoded
    assert [batch.payload for batch in lean.batches] == [None, None]
    assert [batch.body for batch in lean.batches] == [sent, sent]
    assert [batch.decoded_payload() for batch in lean.batches] == [back.batches[0].payload] * 2


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


@pytest.mark.parametrize("force", [False, True], ids=["ledger", "force"])
def test_dedupe_on_frames_keeps_and_counts_exactly_what_dedupe_on_replays_does(real_record, force):
    from mparticle_backfill.accounting import Summary
    from mparticle_backfill.dedupe_check import DedupeCheck, dedupe_frames, dedupe_replays
    from mparticle_backfill.stage_codec import decode_frame, frame_keys

    def replays():
        # Batch ids: 1-5 once, 6 three times (copies in the partition), 7 with one key in the ledger, 8 with
        # all of them, 9 as a JSON frame (an integer beyond 64 bits), 10 with no batch left.
        out = []
        for batch_id in (1, 2, 6, 3, 7, 6, 4, 8, 5, 9, 10, 6):
            record = copy.deepcopy(real_record)
            record["batch_id"] = batch_id
            replay, _, _ = replay_of(record)
            if batch_id == 9:
                replay.batch["custom_big"] = 2**70
            if batch_id == 10:
                replay.batches = []
            out.append(replay)
        return out

    ledger = {"7:-7778608565459706417", *replays()[7].batches[0].replay_keys}
    expected_summary, summary = Summary(), Summary()
    expected = [r.to_json() for r in dedupe_replays(replays(), DedupeCheck(ledger, force=force), expected_summary)]
    frames = [encode_replay(replay) for replay in replays()]
    assert frame_keys(frames[0]) == ("1", [replays()[0].batches[0].replay_keys])
    assert frame_keys(frames[9]) is None  # a JSON frame is decoded whole
    out = list(dedupe_frames(frames, DedupeCheck(ledger, force=force), summary))
    assert [decode_frame(frame).to_json() for frame in out] == expected
    assert summary.to_json() == expected_summary.to_json()
    # Dropped: 6's two copies and 10 (nothing left to send); without force, 8 (all in the ledger) too.
    assert len(out) == (9 if force else 8)
    # Passed on as they were read (the same objects): all but the JSON frame and, without force, 7 (rebuilt).
    passed_whole = sum(any(frame is read for read in frames) for frame in out)
    assert passed_whole == len(out) - (1 if force else 2)


def test_send_reads_what_it_uses_and_coalesces_exactly_as_from_whole_replays(real_record):
    from collections import Counter

    from mparticle_backfill.coalesce import CoalesceSettings, coalesce
    from mparticle_backfill.model import RecordRef
    from mparticle_backfill.stage_codec import iter_replays_for_send

    def replays():
        out = []
        for n in range(4):
            record = copy.deepcopy(real_record)
            record["batch_id"] = 100 + n
            received = int(record["timestamp_unixtime_ms"]) + (3 - n) * 1000  # received in another order
            record["timestamp_unixtime_ms"] = str(received)  # as the real record carries it
            record["user_attributes"]["$gender"] = f"value-{n}"
            replay, _, _ = replay_of(record)
            replay.ref = RecordRef("k.txt", n + 1)
            replay.trail.append(("dead_lettered", "invalid_event"))
            out.append(replay)
        return out

    whole = replays()
    assert whole[0].batch.get("user_identities") and whole[0].batch.get("device_info")
    data = b"".join(encode_replay(replay) for replay in replays())
    lean = list(iter_replays_for_send(io.BytesIO(data), "s3://b/k"))
    for got, full in zip(lean, whole, strict=True):
        assert got.batch == {"timestamp_unixtime_ms": full.batch["timestamp_unixtime_ms"]}  # nothing else
        expected = full.to_json()
        assert {**got.to_json(), "batch": expected["batch"]} == expected
    # Coalescing reads the received time: the same merged batches (bodies, ids, members) either way.
    settings = CoalesceSettings(True, "salt")

    def merged(replays):
        return [(g.route, [b.body for b in g.batches], [b.members for b in g.batches]) for g in replays]

    built = merged(coalesce(whole, settings, Counter()))
    got = merged(coalesce(lean, settings, Counter()))
    assert got == built and len(built[0][1]) == 1 and len(built[0][2][0]) == 4
    assert jsonio.loads(built[0][1][0])["user_attributes"] == {"$gender": "value-0"}  # received last


def test_send_decodes_whole_a_frame_it_cannot_read_lean(real_record):
    from mparticle_backfill.stage_codec import iter_replays_for_send

    big, _, _ = replay_of(real_record)
    big.batch["custom_big"] = 2**70  # a JSON frame
    unsent, _, _ = replay_of(real_record)
    unsent.user_attributes = {"tier": "gold"}  # not emptied by a transform: nothing may be dropped unseen
    data = encode_replay(big) + encode_replay(unsent)
    first, second = iter_replays_for_send(io.BytesIO(data))
    assert first.batch["custom_big"] == 2**70
    assert second.to_json() == unsent.to_json()
    with pytest.raises(CorruptStageFile, match="ends inside a frame"):
        list(iter_replays_for_send(io.BytesIO(data[:-3]), "s3://b/k"))
