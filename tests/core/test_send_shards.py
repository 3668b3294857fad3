"""Send by shard: merged batches end every member record, a refused merged batch dead-letters each member's
part, a retry skips the keys an earlier try delivered, and the ledger parts a shard reads."""

from __future__ import annotations

import copy
from collections import Counter
from datetime import date

import pytest

from mparticle_backfill.accounting import Summary
from mparticle_backfill.coalesce import CoalesceSettings, coalesce, ledger_part_may_hold
from mparticle_backfill.model import DEAD_LETTERED, REPLAYED
from mparticle_backfill.send import ACCEPTED_BY_EARLIER_TRY, SendTracker, pack_groups, skip_accepted
from mparticle_backfill.settings import StatePaths, ledger_part_wanted
from tests.core.test_replay_stages import replay_of


def replays_of_one_user(real_record, count: int):
    """``count`` records of the same user and device (as one SDK's uploads of a day), each its own batch."""
    replays = []
    for n in range(count):
        record = copy.deepcopy(real_record)
        record["batch_id"] = str(7000 + n)
        for index, event in enumerate(record["events"]):
            old, new = event["data"]["event_id"], str((7000 + n) * 10 + index)
            event["data"]["event_id"] = new
            block = record["context"]["data_plan"]["block_metadata"]
            block["blocked_event_ids"] = [new if i == old else i for i in block["blocked_event_ids"]]
            for entry in block["blocked_event_attributes"]:
                entry["event_id"] = new if entry["event_id"] == old else entry["event_id"]
        replay, _, _ = replay_of(record)
        replay.ref = replay.ref.__class__(f"object-{n}.txt", 1)
        replays.append(replay)
    return replays


def summary_outcomes(summary: Summary) -> Counter:
    return Counter({outcome: summary.total(outcome) for outcome in (REPLAYED, DEAD_LETTERED)})


def test_a_merged_batch_ends_every_member_when_accepted(real_record):
    replays = replays_of_one_user(real_record, 5)
    keys = {key for replay in replays for batch in replay.batches for key in batch.replay_keys}
    summary = Summary()
    tracker = SendTracker(summary, lambda letter: pytest.fail("nothing is refused"))
    groups = coalesce(replays, CoalesceSettings(), summary.counts)
    requests = list(pack_groups(groups, tracker))
    sent = [batch for request in requests for batch in request.batches]
    assert len(sent) < 5  # merged: one user, one envelope
    assert sorted(key for batch in sent for key in batch.replay_keys) == sorted(keys)
    for batch in sent[:-1]:
        tracker.accepted(batch)
    assert tracker.waiting  # the members of the last batch still wait for its answer
    tracker.accepted(sent[-1])
    assert tracker.waiting == 0
    assert summary_outcomes(summary)[REPLAYED] == 5


def test_a_refused_merged_batch_dead_letters_each_members_own_part(real_record):
    replays = replays_of_one_user(real_record, 3)
    summary, letters = Summary(), []
    tracker = SendTracker(summary, letters.append)
    (request,) = pack_groups(coalesce(replays, CoalesceSettings(), summary.counts), tracker)
    (batch,) = request.batches
    tracker.rejected(batch, "400 bad")
    assert tracker.waiting == 0 and summary_outcomes(summary)[DEAD_LETTERED] == 3
    assert sorted(letter.ref.object_key for letter in letters) == ["object-0.txt", "object-1.txt", "object-2.txt"]
    for letter in letters:  # each letter holds that record's events only, never another user's record
        prefix = 7000 + int(letter.ref.object_key.split("-")[1].split(".")[0])
        assert letter.content["events"]
        assert all(str(event["data"]["event_id"]).startswith(str(prefix)) for event in letter.content["events"])


def test_a_retry_sends_only_the_keys_no_earlier_try_delivered(real_record):
    replays = replays_of_one_user(real_record, 2)
    first = replays[0].batches[0]
    accepted = {first.replay_keys[0]}  # one event of the first record rode in a merged batch that was accepted
    summary = Summary()
    kept = list(skip_accepted(replays, accepted, summary))
    assert len(kept) == 2
    remaining = kept[0].batches[0]
    assert first.replay_keys[0] not in remaining.replay_keys
    assert set(remaining.replay_keys) == set(first.replay_keys) - accepted
    assert remaining.payload["source_request_id"] != first.payload["source_request_id"]  # new content, new id
    assert summary.counts[f"keys_skipped:{ACCEPTED_BY_EARLIER_TRY}"] == 1
    assert (REPLAYED, ACCEPTED_BY_EARLIER_TRY) in kept[0].trail


@pytest.mark.parametrize(("writers", "readers"), [(4, 4), (4, 6), (1, 8), (8, 1), (5, 7), (12, 18)])
def test_a_shard_reads_every_ledger_part_that_may_hold_its_keys_and_no_other(writers, readers):
    paths = StatePaths("state", date(2026, 11, 20), "manual__x")
    parts = {shard: paths.ledger_part(shard, writers, "try1-abcd", 0) for shard in range(writers)}
    for reader in range(readers):
        wanted = {shard for shard, key in parts.items() if ledger_part_wanted(key, reader, readers)}
        # A key of context hash h sits in part h % writers and is looked for by shard h % readers.
        needed = {h % writers for h in range(writers * readers * 3) if h % readers == reader}
        assert wanted == needed
        assert all(ledger_part_may_hold(writers, shard, readers, reader) for shard in wanted)
    if writers == readers:
        assert [ledger_part_wanted(parts[s], s, readers) for s in range(writers)] == [True] * writers


def test_parts_written_before_shards_are_read_by_every_shard():
    legacy = "state/2026-11-20/ledger/manual__x/chunk-00000-try1-abcd-00000.txt"
    assert all(ledger_part_wanted(legacy, shard, 3) for shard in range(3))
    assert ledger_part_wanted("state/2026-11-20/ledger/part.txt", 1, 2)


def big_replays(real_record, count: int):
    """One user's records with events large enough that their merge needs several batches."""
    replays = replays_of_one_user(real_record, count)
    for replay in replays:
        for batch in replay.batches:
            for event in batch.payload["events"]:
                event["data"].setdefault("custom_attributes", {})["note"] = "x" * 20_000
    return replays
