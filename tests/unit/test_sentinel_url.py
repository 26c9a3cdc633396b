"""The ``redis+sentinel://`` URL: parsing, errors that name the field, redaction, and the
security checks every role runs on its Redis URL."""

from __future__ import annotations

import pytest

from tunecluster.security import InsecureSetting, check_redis_url, redis_password
from tunecluster.store import connect, redact
from tunecluster.store.sentinel import PrimaryConnection, SentinelURL, is_sentinel_url, parse
from tunecluster.worker.gang import advertise_host

SECRET = "s3cret-Pass%2Fword-0123456789"


def test_the_full_form_is_parsed() -> None:
    url = f"redis+sentinel://alice:{SECRET}@h1:26380,10.0.0.2,[::1]:26381/tc-main.1/3"
    assert parse(url) == SentinelURL(
        sentinels=(("h1", 26380), ("10.0.0.2", 26379), ("::1", 26381)),
        service="tc-main.1", db=3, username="alice", password="s3cret-Pass/word-0123456789")


def test_the_short_form_defaults_port_db_and_credentials() -> None:
    assert parse("REDIS+SENTINEL://sentinel/mymaster") == SentinelURL(
        (("sentinel", 26379),), "mymaster", 0, None, None)
    assert parse("redis+sentinel://:pw@s:1/m").password == "pw"
    assert parse("redis+sentinel://:pw@s:1/m").username is None


def test_only_the_sentinel_scheme_is_taken_for_one() -> None:
    assert is_sentinel_url("redis+sentinel://h/m")
    for url in ("redis://h:6379/0", "rediss://h/0", "unix:///tmp/r.sock", "h:6379"):
        assert not is_sentinel_url(url)


@pytest.mark.parametrize(("url", "field"), [
    ("redis+sentinel://h1:26379", "service name"),
    ("redis+sentinel://h1:26379/", "service name"),
    ("redis+sentinel://h1/my master", "service name"),
    ("redis+sentinel://h1/m/x", "db"),
    ("redis+sentinel://h1/m/-1", "db"),
    ("redis+sentinel://h1:0/m", "sentinel port"),
    ("redis+sentinel://h1:70000/m", "sentinel port"),
    ("redis+sentinel://h1:abc/m", "sentinel port"),
    ("redis+sentinel://h1,,h2/m", "sentinel host"),
    ("redis+sentinel:///m", "sentinel host"),
    ("redis+sentinel://[::1/m", "sentinel address"),
    ("redis+sentinel://h1/m?ssl=true", "query"),
])
def test_a_bad_url_names_the_field_and_what_is_allowed(url: str, field: str) -> None:
    with pytest.raises(ValueError, match=f"bad {field} ") as caught:
        parse(url)
    text = str(caught.value)
    assert "\n" not in text and "allowed:" in text and "redis+sentinel://" in text


def test_a_bad_url_never_shows_its_password_through_connect() -> None:
    for url in (f"redis+sentinel://:{SECRET}@h1:99999/m",
                f"redis+sentinel://u:{SECRET}@h1/m?x=1",
                f"redis+sentinel://:{SECRET}@h1/"):
        with pytest.raises(ValueError) as caught:
            connect(url, check=False)
        text = str(caught.value)
        assert text.startswith("--redis: redis+sentinel://")
        assert SECRET not in text and "s3cret" not in text, text
        assert "***" in text


def test_redaction_hides_the_primary_password() -> None:
    url = f"redis+sentinel://alice:{SECRET}@h1:26379,h2:26379/tc/0"
    assert redact(url) == "redis+sentinel://alice:***@h1:26379,h2:26379/tc/0"
    assert redact("redis+sentinel://h1,h2/tc") == "redis+sentinel://h1,h2/tc"


def test_the_security_checks_read_the_primary_password() -> None:
    assert redis_password(f"redis+sentinel://:{SECRET}@h1:26379,h2:26379/tc") == \
        "s3cret-Pass/word-0123456789"
    with pytest.raises(InsecureSetting, match="example Redis password"):
        check_redis_url("redis+sentinel://:change-me@h1,h2/tc", "chief")
    with pytest.raises(InsecureSetting, match="without a password"):
        check_redis_url("redis+sentinel://h1:26379,h2:26379/tc", "worker", require=True)
    with pytest.raises(InsecureSetting, match="shorter than"):
        check_redis_url("redis+sentinel://:short@h1,h2/tc", "worker", require=True)
    check_redis_url(f"redis+sentinel://:{SECRET}@h1:26379,h2:26379/tc", "chief", require=True)


def test_a_client_is_made_without_contacting_the_sentinels() -> None:
    client = connect(f"redis+sentinel://:{SECRET}@127.0.0.1:1,127.0.0.1:2/tc/2", check=False)
    pool = client.connection_pool
    assert pool.service_name == "tc" and pool.is_master
    assert pool.connection_class is PrimaryConnection  # reconnects through the sentinels
    assert pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["password"] == "s3cret-Pass/word-0123456789"
    assert [s.connection_pool.connection_kwargs["port"]
            for s in pool.sentinel_manager.sentinels] == [1, 2]


def test_a_worker_finds_its_route_from_a_sentinel_url() -> None:
    assert advertise_host("redis+sentinel://:pw@127.0.0.1:26379,127.0.0.1:26380/tc") \
        == "127.0.0.1"
