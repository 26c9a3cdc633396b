"""The chief's own keys: its lock, its beat, its commit counter and its round commit.

The chief decides; this part owns how its decisions reach Redis: the lock a chief
takes or renews in one script, the fenced beat, and the round commit that applies
everything a round decided at once, fenced by the lock, conditional on the commit
counter (``StaleState`` when Redis lost commits) and idempotent under a retry (a
request key), with the round's duration as telemetry in the same step.
"""

from __future__ import annotations

import secrets

import redis

from tunecluster.store import telemetry
from tunecluster.store.connection import script
from tunecluster.store.fence import Fence, Writes
from tunecluster.store.inbox import ChiefInbox
from tunecluster.store.keys import Keys
from tunecluster.store.queue import server_ms

# Take the lock when free, or extend it when this token holds it; 1 when held after.
_HOLD_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""


class ChiefControl:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.r = client
        self.k = keys
        self._hold = script(client, _HOLD_LOCK)

    def fence(self, chief_id: str) -> Fence:
        """The fence of chief ``chief_id``: its writes land only while it holds the lock."""
        return Fence(self.k.chief_lock, chief_id)

    def hold(self, fence: Fence, ttl_ms: int) -> bool:
        """Take the lock, or extend it if ``fence``'s chief holds it; whether it does now."""
        return bool(self._hold(keys=[fence.lock_key], args=[fence.token, ttl_ms]))

    def extend(self, fence: Fence, ttl_ms: int) -> bool:
        """Extend the lock only while ``fence``'s chief holds it (never takes it)."""
        return fence.extend(self.r, ttl_ms)

    def release(self, fence: Fence) -> bool:
        return fence.release(self.r)

    def beat(self, fence: Fence, ttl_ms: int) -> None:
        """The active chief's beat, in Redis time (what `health --role chief` reads)."""
        Writes().set(self.k.chief_beat, server_ms(self.r), px=ttl_ms).apply(self.r, fence)

    def seq(self) -> int:
        """How many rounds the chiefs committed, as Redis counts them."""
        return int(self.r.get(self.k.chief_seq) or 0)

    def run_id(self) -> str:
        """The Redis server's run id: another one means Redis restarted."""
        return str(self.r.info("server").get("run_id", ""))

    def inbox(self, consumer: str) -> ChiefInbox:
        return ChiefInbox(self.r, self.k, consumer)

    def commit(self, writes: Writes, fence: Fence, seq: int, round_s: float) -> None:
        """Apply a round's ``writes`` at once: fenced, only if Redis holds ``seq``
        commits (``StaleState`` otherwise), once under a retry; the round's duration is
        recorded in the same step."""
        writes.extend(telemetry.observe_ops(self.k, telemetry.CHIEF_ROUND, round_s))
        writes.apply(self.r, fence, request_key=self.k.request(secrets.token_hex(12)),
                     sequence=(self.k.chief_seq, seq))
