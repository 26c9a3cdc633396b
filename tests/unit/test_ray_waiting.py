"""How long a Ray job waits for its cluster (``ray/reach.py``), and how a refused
``ray.init`` is told from an unreachable cluster (``ray/connect.py``)."""

from __future__ import annotations

import pytest

from tunecluster.ray.connect import _token_refused
from tunecluster.ray.reach import (
    REFUSED_ENV,
    REFUSED_S,
    UNREACHABLE_ENV,
    UNREACHABLE_S,
    refused_limit_s,
    unreachable_limit_s,
)


@pytest.mark.parametrize(("env", "read", "default"), [
    (UNREACHABLE_ENV, unreachable_limit_s, UNREACHABLE_S),
    (REFUSED_ENV, refused_limit_s, REFUSED_S)])
def test_a_limit_is_seconds_or_one_line_naming_the_variable(env, read, default,
                                                            monkeypatch) -> None:
    monkeypatch.delenv(env, raising=False)
    assert read() == default
    for value, seconds in (("", default), ("0", 0.0), ("8", 8.0), ("2.5", 2.5)):
        monkeypatch.setenv(env, value)
        assert read() == seconds, value
    for value in ("abc", "-1", "nan", "10s"):
        monkeypatch.setenv(env, value)
        with pytest.raises(ValueError) as caught:
            read()
        message = str(caught.value)
        assert len(message.splitlines()) == 1, message
        assert message == f"{env}={value!r}: a number of seconds >= 0 is allowed"
    assert REFUSED_S < UNREACHABLE_S  # a refusing cluster is a misconfiguration: fail soon


def test_a_rejected_token_is_found_in_the_cause_of_rays_failed_to_connect() -> None:
    """ray.init raises "Failed to connect to Ray cluster at ..." from the GCS client's
    last error, shaped as Ray 2.60's (its C++ log says the same words); the token's
    rejection is only in that cause."""
    last = ("Traceback (most recent call last):\n  ...\nray.exceptions.RpcError: "
            "Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or"
            " incorrect (https://docs.ray.io/en/latest/ray-security/token-auth.html)\n")
    failed = ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:6379")
    failed.__cause__ = RuntimeError(f"Failed to connect to GCS. Last connection error: {last}")
    assert _token_refused(failed) == ("Unauthenticated: RPC error: InvalidAuthToken:"
                                      " Authentication token is missing or incorrect")
    other = ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:6379")
    other.__cause__ = RuntimeError("Failed to connect to GCS. Last connection error: timeout")
    assert _token_refused(other) == ""
    assert _token_refused(None) == ""
