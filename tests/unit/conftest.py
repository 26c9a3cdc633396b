"""Fixtures shared by the unit tests that need a real Redis: one server per module on a
free loopback port, and a clean database for each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tunecluster.cluster import RedisServer
from tunecluster.store import Store


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


@pytest.fixture
def store(server: RedisServer) -> Store:
    s = Store.from_url(server.url)
    s.client.flushdb()
    return s


@pytest.fixture
def client(server: RedisServer, tmp_path: Path):  # -> tunecluster.api.Client
    from tunecluster.api import Client

    c = Client(server.url, artifacts=tmp_path)
    c.store.client.flushdb()
    return c
