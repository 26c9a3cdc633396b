"""The soak's TCP proxy (bench/soak_proxy.py) in front of a real Redis: it carries a
client's commands, a drop cuts its connections and refuses new ones for a while, a delay
holds every chunk, and both end by themselves."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tunecluster.cluster import RedisServer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from soak_proxy import Proxy  # noqa: E402 - bench/soak_proxy.py, from the checkout


@pytest.fixture
def proxied() -> Iterator[tuple[Proxy, RedisServer]]:
    with RedisServer(password="pw") as server:
        proxy = Proxy(lambda: server.port).start()
        try:
            yield proxy, server
        finally:
            proxy.close()


def _client(proxy: Proxy, server: RedisServer) -> redis.Redis:
    url = proxy.url(server.url)
    assert f":{proxy.port}/0" in url and url.startswith("redis://:pw@127.0.0.1:")
    return redis.Redis.from_url(url, socket_timeout=3, retry_on_timeout=False)


def test_commands_pass_through(proxied: tuple[Proxy, RedisServer]) -> None:
    proxy, server = proxied
    client = _client(proxy, server)
    client.set("k", "v" * 200_000)  # several chunks each way
    assert client.get("k") == b"v" * 200_000
    assert proxy.carried == 1


def test_a_drop_cuts_connections_and_refuses_new_ones_for_its_length(
        proxied: tuple[Proxy, RedisServer]) -> None:
    proxy, server = proxied
    client = _client(proxy, server)
    assert client.ping()
    assert proxy.drop(1.5) == 1
    with pytest.raises(redis.ConnectionError):
        client.ping()  # the old connection is gone, and a new one is refused
    time.sleep(1.7)
    assert client.ping()
    direct = redis.Redis.from_url(server.url)
    assert direct.ping()  # Redis itself never saw a fault


def test_a_delay_holds_each_round_trip_then_ends(proxied: tuple[Proxy, RedisServer]) -> None:
    proxy, server = proxied
    client = _client(proxy, server)
    client.ping()
    proxy.delay(0.2, 1.0)
    t0 = time.monotonic()
    client.ping()
    assert time.monotonic() - t0 >= 0.35  # the request and the reply held 0.2 s each
    time.sleep(1.0)
    t0 = time.monotonic()
    client.ping()
    assert time.monotonic() - t0 < 0.15
