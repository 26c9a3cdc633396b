"""A worker's side of gang trials (``resources.workers_per_trial`` > 1): where its gang
trial processes listen, how they find each other, and how the members agree to stop.

- The claim names an address per slot (``advertise host:port``) where this slot's gang
  trial process would listen. The port is held bound (``PortReservation``) until that
  process starts, so two workers on one host never advertise the same port.
- The advertise host defaults to this host's address on the route to Redis: the
  container's address on a compose network, the pod's IP on Kubernetes, 127.0.0.1 for a
  local cluster. ``--advertise-host`` overrides it (NAT, several interfaces).
- ``tf_config`` is the ``TF_CONFIG`` of one member: every member's address in rank
  order, and its own index. TensorFlow's collective runtime is configured once per
  process, so each gang attempt runs in a fresh trial process (worker/loop.py).
- Rank 0 reports every epoch, writes the checkpoints and the model; the others train.
  A stop (the chief's, a cancel, early stopping) is decided by rank 0 alone after each
  epoch and read by the others before their next step (``GangLeader``/``GangFollower``):
  members that stopped at different epochs would wait on each other's collectives.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

DEFAULT_PORTS = "29500-29599"
PORTS_ENV = "TUNECLUSTER_GANG_PORTS"
ADVERTISE_ENV = "TUNECLUSTER_ADVERTISE_HOST"
# A member whose worker has not beaten for this long is lost: the others end the attempt.
PEER_TIMEOUT_S = float(os.environ.get("TUNECLUSTER_GANG_PEER_TIMEOUT_S", "6"))
CHECK_S = 1.0  # how often a running member's worker checks on the others
DECISION_POLL_S = 0.02  # how often a follower looks for rank 0's decision
# A member whose collectives failed because a peer went waits this long for the member
# that knows why (its process crashed: its worker sees that within a poll) to end the
# attempt, so the trial's errors name the cause rather than its echo in the survivors.
CAUSE_GRACE_S = 1.0


def parse_ports(text: str) -> tuple[int, int]:
    """``LOW-HIGH`` (or one port) as a range of TCP ports, with a one-line error."""
    low, _, high = text.strip().partition("-")
    try:
        lo, hi = int(low), int(high or low)
    except ValueError:
        raise ValueError(f"--gang-ports: {text!r} is not LOW-HIGH (e.g. {DEFAULT_PORTS})") from None
    if not 1024 <= lo <= hi <= 65535:
        raise ValueError(f"--gang-ports: {text!r} must be ports between 1024 and 65535,"
                         " low before high")
    return lo, hi


def advertise_host(redis_url: str, explicit: str | None = None) -> str:
    """The address other workers reach this one at: ``explicit``, else this host's
    address on its route to Redis (no packet is sent: a UDP socket only picks a route)."""
    if explicit:
        return explicit
    host = urlparse(redis_url).hostname
    if not host or urlparse(redis_url).scheme == "unix":
        return "127.0.0.1"
    try:
        port = urlparse(redis_url).port or 6379
    except ValueError:  # a Sentinel URL's host list: the route to its first host will do
        port = 26379
    try:
        family = socket.getaddrinfo(host, port, proto=socket.IPPROTO_UDP)[0]
        with socket.socket(family[0], socket.SOCK_DGRAM) as probe:
            probe.connect(family[4])
            return str(probe.getsockname()[0])
    except OSError:
        return socket.gethostname()


class PortReservation:
    """A port of the gang range held bound by this worker until its gang trial process
    needs it (``release``), so that no other worker on the host advertises it too."""

    def __init__(self, host: str, ports: tuple[int, int]) -> None:
        self.host, self.ports = host, ports
        self.sock: socket.socket | None = None
        self.port = 0

    @property
    def address(self) -> str:
        """``host:port`` to advertise; reserves a port first if none is held."""
        if self.sock is None:
            self._reserve()
        return f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"

    def _reserve(self) -> None:
        lo, hi = self.ports
        start = lo + (os.getpid() + id(self)) % (hi - lo + 1)  # spread workers of one host
        for i in range(hi - lo + 1):
            port = lo + (start - lo + i) % (hi - lo + 1)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("", port))
            except OSError:
                sock.close()
                continue
            self.sock, self.port = sock, port
            return
        raise RuntimeError(f"--gang-ports: no free port in {lo}-{hi} on this host")

    def release(self) -> None:
        """Free the port for the gang trial process that is about to listen on it."""
        if self.sock is not None:
            self.sock.close()
        self.sock = None


def tf_config(members: list[Mapping[str, str]], rank: int) -> str:
    """``TF_CONFIG`` for the member of ``rank``: every member's address in rank order."""
    return json.dumps({"cluster": {"worker": [m["address"] for m in members]},
                       "task": {"type": "worker", "index": rank}})


class GangLeader:
    """Rank 0's reporter: reports each epoch to Redis like a single worker, and publishes
    its decision to stop or go on for the other members."""

    def __init__(self, reporter: Any, store: Any, claim: Any) -> None:
        self.reporter, self.store, self.claim = reporter, store, claim

    @property
    def cancelled(self) -> bool:
        return bool(self.reporter.cancelled)

    def epoch(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        return bool(self.reporter.epoch(epoch, metrics))

    def decide(self, epoch: int, stop: bool) -> bool:
        self.store.queue.gang_publish(self.claim, epoch, stop)
        return stop


class GangFollower:
    """The reporter of ranks above 0: reports nothing, stops when rank 0 did."""

    cancelled = False

    def __init__(self, store: Any, claim: Any) -> None:
        self.store, self.claim = store, claim

    def epoch(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        return False

    def decide(self, epoch: int, stop: bool) -> bool:
        """Rank 0's decision after ``epoch`` (this member's own is ignored). Raises
        ``LostLease`` when the attempt ends meanwhile (rank 0 is gone: the worker kills
        this process soon after anyway)."""
        from tunecluster.store import LostLease

        checked = time.monotonic()
        while True:
            decision = self.store.queue.gang_decision(self.claim, epoch)
            if decision is not None:
                return decision
            if time.monotonic() - checked >= CHECK_S:
                checked = time.monotonic()
                if not self.store.queue.attempt_running(self.claim):
                    raise LostLease(f"trial {self.claim.member} attempt {self.claim.attempt}"
                                    f" ended before its rank 0 decided on epoch {epoch}")
            time.sleep(DECISION_POLL_S)


def release_lost_peer(store: Any, claim: Any, worker: str, reason: str, *,
                      grace_s: float = CAUSE_GRACE_S) -> bool:
    """End ``claim``'s attempt for a retry, with ``reason``, after TensorFlow's
    collectives in this member saw a peer go; unless another member (or a worker's peer
    check) ends it within ``grace_s``. True when this call recorded the reason."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not store.queue.attempt_running(claim):
            return False
        time.sleep(DECISION_POLL_S)
    return bool(store.queue.release(claim.job, claim.trial, reason, worker=worker,
                                    attempt=claim.attempt))
