"""A worker's side of gang trials: ports, addresses, TF_CONFIG, and how the members
agree to stop (against a real Redis where the members talk through it)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from tunecluster.store import LostLease, Store
from tunecluster.worker.gang import (
    GangFollower,
    GangLeader,
    PortReservation,
    advertise_host,
    parse_ports,
    release_lost_peer,
    tf_config,
)
from tunecluster.worker.trial import agreed_stop

SPEC = {"name": "job", "data": {"dataset": "digits"}, "model": {"builtin": "mlp"}}


def test_gang_ports_parse_or_name_the_option() -> None:
    assert parse_ports("29500-29599") == (29500, 29599)
    assert parse_ports("30000") == (30000, 30000)
    for bad in ("a-b", "29599-29500", "80-90", "29500-70000", ""):
        with pytest.raises(ValueError, match="--gang-ports") as err:
            parse_ports(bad)
        assert "\n" not in str(err.value)


def test_the_advertised_host_is_the_route_to_redis_unless_given() -> None:
    assert advertise_host("redis://127.0.0.1:6379/0") == "127.0.0.1"
    assert advertise_host("redis://:secret@localhost:6390/0") in ("127.0.0.1", "::1")
    assert advertise_host("unix:///tmp/redis.sock") == "127.0.0.1"
    assert advertise_host("redis://127.0.0.1:6379/0", "worker-3.example") == "worker-3.example"


def test_tf_config_lists_every_member_in_rank_order() -> None:
    members = [{"worker": "a", "address": "10.0.0.1:29500"},
               {"worker": "b", "address": "10.0.0.2:29501"}]
    config = json.loads(tf_config(members, 1))
    assert config == {"cluster": {"worker": ["10.0.0.1:29500", "10.0.0.2:29501"]},
                      "task": {"type": "worker", "index": 1}}


def test_reserved_ports_are_never_advertised_twice_on_one_host() -> None:
    held = [PortReservation("127.0.0.1", (29700, 29702)) for _ in range(3)]
    addresses = {r.address for r in held}
    assert len(addresses) == 3
    with pytest.raises(RuntimeError, match="no free port in 29700-29702"):
        _ = PortReservation("127.0.0.1", (29700, 29702)).address
    port = held[0].port
    held[0].release()  # the gang's trial process can listen there now
    with socket.socket() as s:
        s.bind(("", port))
    for r in held:
        r.release()


def _running_gang(store: Store) -> tuple:
    job = store.jobs.submit("job", json.dumps(SPEC), {}, 0, "native")
    store.queue.enqueue(job, "0", {}, 1, "{}", gang_size=2)
    for w in ("w1", "w2"):
        store.workers.heartbeat(w, {"slots": 1}, ttl_s=10)
    first = store.queue.claim("w1", 10, address="h:1")
    follower_claim = store.queue.claim("w2", 10, address="h:2")
    leader_claim = store.queue.gang_wait(first, "w1")
    return job, leader_claim, follower_claim


class _Reports:
    cancelled = False

    def __init__(self, answers: list[bool]) -> None:
        self.answers = answers

    def epoch(self, epoch: int, metrics: object) -> bool:
        return self.answers.pop(0)


def test_members_stop_at_the_epoch_rank_zero_decided(store: Store) -> None:
    _, leader_claim, follower_claim = _running_gang(store)
    leader = GangLeader(_Reports([False, True]), store, leader_claim)
    follower = GangFollower(store, follower_claim)
    seen: list[bool] = []

    def follow() -> None:
        for epoch in (1, 2):
            # the follower's own view (patience) never decides: rank 0's does
            seen.append(agreed_stop(follower, epoch, epoch == 1))

    thread = threading.Thread(target=follow)
    thread.start()
    time.sleep(0.2)
    assert seen == []  # waits for rank 0
    for epoch in (1, 2):
        stop = leader.epoch(epoch, {})
        assert agreed_stop(leader, epoch, stop) == stop
    thread.join(5)
    assert seen == [False, True]
    assert agreed_stop(_Reports([]), 3, True) is True  # one worker: its own decision


def test_a_follower_stops_waiting_once_the_attempt_ends(store: Store) -> None:
    job, leader_claim, follower_claim = _running_gang(store)
    store.queue.release(job, "0", "rank 0 crashed", worker="w1", attempt=leader_claim.attempt)
    with pytest.raises(LostLease):
        GangFollower(store, follower_claim).decide(1, False)


def test_a_member_that_saw_a_peer_go_leaves_the_cause_to_the_member_that_knows_it(
        store: Store) -> None:
    """A survivor's collective error is a consequence: when the member whose process
    crashed records why within the grace, that cause is the attempt's reason."""
    job, leader_claim, follower_claim = _running_gang(store)

    def crash_recorded_late() -> None:
        time.sleep(0.3)  # the crashed member's worker notices its process a bit later
        store.queue.release(job, "0", "rank 1: trial process crashed: killed by SIGKILL",
                            worker="w2", attempt=follower_claim.attempt)

    thread = threading.Thread(target=crash_recorded_late)
    thread.start()
    recorded = release_lost_peer(store, leader_claim, "w1", "rank 0: a gang member was lost",
                                 grace_s=5.0)
    thread.join(5)
    assert recorded is False
    assert store.client.lrange(store.keys.trial_errors(job, "0"), 0, -1) == [
        "rank 1: trial process crashed: killed by SIGKILL"]


def test_a_member_that_saw_a_peer_go_ends_the_attempt_when_nobody_else_does(
        store: Store) -> None:
    job, leader_claim, _ = _running_gang(store)
    started = time.monotonic()
    assert release_lost_peer(store, leader_claim, "w1", "rank 0: a gang member was lost",
                             grace_s=0.3) is True
    assert 0.3 <= time.monotonic() - started < 2.0
    assert store.jobs.trial(job, "0")["state"] == "READY"  # retried
    assert store.client.lrange(store.keys.trial_errors(job, "0"), 0, -1) == [
        "rank 0: a gang member was lost"]


def test_collective_failures_are_told_from_the_trials_own_errors() -> None:
    import tensorflow as tf

    from tunecluster.worker.strategy import lost_a_peer

    gone = tf.errors.UnavailableError(None, None, "Collective ops is aborted by: ...")
    assert lost_a_peer(gone)
    assert lost_a_peer(tf.errors.DeadlineExceededError(None, None, "collective timed out"))
    try:
        try:
            raise gone
        except tf.errors.UnavailableError as inner:
            raise RuntimeError("fit failed") from inner
    except RuntimeError as outer:
        assert lost_a_peer(outer)  # wrapped (Keras re-raises with context)
    assert not lost_a_peer(ValueError("Input 0 of layer dense is incompatible"))
    assert not lost_a_peer(tf.errors.InvalidArgumentError(None, None, "a bad shape"))
