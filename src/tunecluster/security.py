"""Start-up checks of a role's security settings: no documented example password.

The example files (``.env.example``, ``k8s/secrets/redis-password.env.example``) and
older docs show ``change-me``: a chief or worker started with a password from that list
refuses to run, so a copied example never becomes a cluster's password. With
``TUNECLUSTER_REQUIRE_PASSWORD=1`` (Kubernetes and compose set it) a missing or short
password is refused too. Every refusal is one line (``ValueError``; the CLI prints it).
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

from tunecluster.errors import TuneclusterError

REQUIRE_PASSWORD_ENV = "TUNECLUSTER_REQUIRE_PASSWORD"
MIN_PASSWORD_LENGTH = 16
# Passwords that appear in tunecluster's examples and docs, and their obvious variants.
EXAMPLE_PASSWORDS = frozenset({
    "change-me", "changeme", "change_me", "change-it", "changeit", "password", "secret",
    "redis", "tunecluster", "example", "replace-me", "<password>", "password123",
})


class InsecureSetting(TuneclusterError, ValueError):
    """A role refuses to start with this setting."""


def redis_password(url: str) -> str | None:
    """The password in a ``redis://[user]:password@host`` URL (None when there is none)."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password is not None else None


def check_redis_url(url: str, role: str, *, require: bool | None = None) -> None:
    """Raise ``InsecureSetting`` (one line) when ``url`` must not be used by ``role``."""
    if require is None:
        require = os.environ.get(REQUIRE_PASSWORD_ENV, "0") == "1"
    password = redis_password(url)
    where = "see docs/deploy.md: openssl rand -hex 24"
    if password is not None and password.strip().lower() in EXAMPLE_PASSWORDS:
        raise InsecureSetting(
            f"the {role} refuses the documented example Redis password {password!r}:"
            f" set a password of your own ({where})")
    if require and not password:
        raise InsecureSetting(
            f"the {role} refuses a Redis URL without a password ({REQUIRE_PASSWORD_ENV}=1;"
            f" {where})")
    if require and len(password or "") < MIN_PASSWORD_LENGTH:
        raise InsecureSetting(
            f"the {role} refuses a Redis password shorter than {MIN_PASSWORD_LENGTH}"
            f" characters ({REQUIRE_PASSWORD_ENV}=1; {where})")
