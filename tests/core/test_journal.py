"""The send journal and refused merged batches: a refused batch is cut by its records, deterministically, and a
batch sent before is resent as it was (or as the parts its refusal was cut into), never rebuilt."""

from __future__ import annotations

from collections import Counter

import pytest

from mparticle_backfill import jsonio
from mparticle_backfill.accounting import Summary
from mparticle_backfill.coalesce import (
    CoalescedBatch,
    CoalesceSettings,
    coalesce,
    parts_to_resend,
    request_id_of,
    split_members,
)
from mparticle_backfill.journal import (
    HASH_VERSION,
    JournalEntry,
    JournalError,
    decode_part,
    encode_part,
    owner_shard,
    to_resend,
)
from mparticle_backfill.model import DEAD_LETTERED, REPLAYED
from mparticle_backfill.send import REJECTED_BY_API, RESENT_FROM_JOURNAL, SendTracker, pack_groups, skip_accepted
from tests.core.test_send_shards import big_replays, replays_of_one_user


def merged(real_record, count: int) -> CoalescedBatch:
    (group,) = coalesce(replays_of_one_user(real_record, count), CoalesceSettings(), Counter())
    (batch,) = group.batches
    assert len(batch.members) == count
    return batch


def leaves(batch: CoalescedBatch) -> list[CoalescedBatch]:
    halves = split_members(batch)
    return [batch] if halves is None else [leaf for half in halves for leaf in leaves(half)]


def test_a_refused_merged_batch_is_cut_by_its_records_into_valid_batches(real_record):
    batch = merged(real_record, 5)
    first, second = split_members(batch)
    assert [len(first.members), len(second.members)] == [2, 3]
    assert first.members + second.members == batch.members
    for half in (first, second):
        payload = jsonio.loads(half.body)
        assert half.body == jsonio.dumps(payload) and half.size == len(half.body) <= batch.size
        assert list(payload)[-1] == "source_request_id" and request_id_of(half) == payload["source_request_id"]
        assert [e["data"]["event_id"] for e in payload["events"]] == [
            e["data"]["event_id"] for k, e in zip(batch.replay_keys, batch.payload["events"], strict=False)
            if k in set(half.replay_keys)
        ]  # fmt: skip
        envelope = {k: v for k, v in payload.items() if k not in ("events", "user_attributes", "source_request_id")}
        assert envelope == {
            k: v for k, v in batch.payload.items() if k not in ("events", "user_attributes", "source_request_id")
        }
    assert sorted(first.replay_keys + second.replay_keys) == sorted(batch.replay_keys)
    # Down to one record each, every record's keys in exactly one leaf, and no id twice.
    parts = leaves(batch)
    assert [len(leaf.members) for leaf in parts] == [1] * 5
    ids = [request_id_of(leaf) for leaf in parts] + [request_id_of(batch), request_id_of(first), request_id_of(second)]
    assert len(set(ids)) == len(ids)
    assert split_members(parts[0]) is None


def test_cutting_is_deterministic_whatever_run_does_it(real_record):
    one, other = merged(real_record, 7), merged(real_record, 7)
    assert one.body == other.body
    assert [leaf.body for leaf in leaves(one)] == [leaf.body for leaf in leaves(other)]


def test_user_attributes_go_with_the_record_that_carried_them(real_record):
    batch = merged(real_record, 4)
    assert batch.payload.get("user_attributes")
    names = dict(batch.attribute_names)
    for leaf in leaves(batch):
        ((_ref, keys),) = leaf.members
        expected = {name for key in keys for name in names.get(key, ())}
        assert set(leaf.payload.get("user_attributes") or {}) == expected


def test_nothing_answered_resends_the_batch_verbatim_and_everything_answered_nothing(real_record):
    batch = merged(real_record, 4)
    assert parts_to_resend(batch, set()) == [batch]
    assert parts_to_resend(batch, set(batch.replay_keys)) == []
    # A refusal elsewhere (another batch) changes nothing for this one.
    assert parts_to_resend(batch, set(), {"00000000-0000-5000-8000-000000000000"}) == [batch]


def test_a_batch_whose_refusal_was_cut_resends_the_same_parts_minus_those_answered(real_record):
    batch = merged(real_record, 6)
    parts = leaves(batch)
    # The first try: the batch refused, cut; leaf 0 refused, leaves 1-2 accepted, then the worker died.
    accepted = {key for leaf in parts[1:3] for key in leaf.replay_keys}
    refused = {request_id_of(parts[0])}
    again = parts_to_resend(batch, accepted, refused)
    sent = {key for part in again for key in part.replay_keys}
    assert sent == set(batch.replay_keys) - accepted - set(parts[0].replay_keys)
    known = (
        {request_id_of(part) for part in [batch, *parts]}
        | {request_id_of(half) for half in split_members(batch)}
        | {request_id_of(q) for half in split_members(batch) for q in (split_members(half) or ())}
    )
    assert all(request_id_of(part) in known for part in again)  # only parts the first try could have sent
    # Refused whole and dead-lettered: nothing to resend.
    assert parts_to_resend(batch, set(), {request_id_of(batch)}) == []


def test_a_part_round_trips_and_a_broken_part_is_named():
    entry = JournalEntry("", 12345, CoalescedBatch((), ("b:1",), b'{"events":[]}', 13))
    assert decode_part(encode_part([entry, entry]), "s3://b/k") == [entry, entry]
    with pytest.raises(JournalError, match="s3://b/broken: not a send journal part"):
        decode_part(b"\x93garbage", "s3://b/broken")


def test_each_entry_is_resent_by_the_one_shard_of_its_user_context(real_record):
    batches = [merged(real_record, 2), merged(real_record, 3)]
    entries = [JournalEntry("", 41, batches[0]), JournalEntry("", 42, batches[1]), JournalEntry("", 42, batches[1])]
    for shards in (1, 2, 3, 7):
        resent = [b for shard in range(shards) for _, b in to_resend(entries, set(), set(), shard, shards)]
        # each once (the repeated entry too), whatever the shard count
        assert sorted(b.body for b in resent) == sorted(b.body for b in batches)
    assert owner_shard(JournalEntry("", 41, batches[0], HASH_VERSION + 1), 5) == 0


def test_resent_answers_end_the_records_they_deliver_without_coalescing_them_again(real_record):
    replays = replays_of_one_user(real_record, 3)
    keys = [key for batch in replays[0].batches for key in batch.replay_keys]
    refused_keys = [key for batch in replays[1].batches for key in batch.replay_keys]
    answered = {key: (REPLAYED, RESENT_FROM_JOURNAL) for key in keys}
    answered.update({key: (DEAD_LETTERED, REJECTED_BY_API) for key in refused_keys})
    summary = Summary()
    kept = list(skip_accepted(replays, set(), summary, "", answered))
    assert [replay.ref.object_key for replay in kept] == ["object-2.txt"]
    assert summary.outcomes == Counter({(REPLAYED, RESENT_FROM_JOURNAL): 1, (DEAD_LETTERED, REJECTED_BY_API): 1})


def test_a_refused_half_dead_letters_only_its_record_with_the_message_pointing_into_it(real_record):
    replays = replays_of_one_user(real_record, 4)
    summary, letters = Summary(), []
    tracker = SendTracker(summary, letters.append)
    (request,) = pack_groups(coalesce(replays, CoalesceSettings(), summary.counts), tracker)
    (batch,) = request.batches
    first, second = batch.split()
    a, b = first.split()
    tracker.accepted(a)
    tracker.rejected(b, "batch 0: $.events[1].data: value refused")
    tracker.accepted(second)
    assert tracker.waiting == 0
    assert summary.total(REPLAYED) == 3 and summary.total(DEAD_LETTERED) == 1
    (letter,) = letters
    assert letter.ref == b.ref and letter.content == jsonio.loads(b.body)
    assert f"replay key {b.replay_keys[1]}" in letter.detail
    assert "apart from the 3 other records" in letter.detail


def test_big_merged_batches_are_cut_within_the_limits(real_record):
    (group,) = coalesce(big_replays(real_record, 12), CoalesceSettings(), Counter())
    for batch in group.batches:
        for leaf in leaves(batch):
            assert leaf.size <= batch.size
