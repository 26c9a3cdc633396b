"""Job and trial ids: strings read from Redis (or typed by a user) that become path parts.

Anyone who can write to Redis can put any string where a job or trial id is expected
(the ready list, the inbox, the jobs zsets). Those ids name directories under the
artifacts root, so every boundary checks them here before they are used:

- a job id is what ``JobStore.submit`` makes, ``<name>-<6 hex>``, where ``<name>`` obeys
  the spec's job-name rule (``spec.models.JOB_NAME_RE``). The check accepts the same
  alphabet, bounded length, without requiring the suffix: caller-given ids (the
  ``Client`` of the next layer) and older tests use the same safe alphabet.
- a trial id is what KerasTuner makes: zero-padded digits, or 32 hex characters.

Both must start with a letter or digit and contain no ``/`` or ``\\``, so an id is
never ``.``, ``..``, absolute, or more than one path part; ``.`` is allowed inside a
job id only because job names allow it (``a..b`` is an ordinary file name).
"""

from __future__ import annotations

import re
import secrets

from tunecluster.errors import StoreError

JOB_ID_MAX = 80  # a 63-character job name + "-" + 6 hex = 70
TRIAL_ID_MAX = 64
JOB_SUFFIX_BYTES = 3  # hex digits / 2 after the job name

JOB_ID_RE = re.compile(rf"[a-z0-9][a-z0-9._-]{{0,{JOB_ID_MAX - 1}}}")
TRIAL_ID_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_-]{{0,{TRIAL_ID_MAX - 1}}}")

_JOB_RULE = (f"1-{JOB_ID_MAX} lowercase letters, digits, '.', '_' or '-', starting with a"
             " letter or digit")
_TRIAL_RULE = f"1-{TRIAL_ID_MAX} letters, digits, '_' or '-', starting with a letter or digit"


class InvalidId(StoreError):
    """A job or trial id that could escape a directory: refused wherever it comes from."""


def new_job_id(name: str) -> str:
    """The id of a newly submitted job (its name is already valid by the spec's rule)."""
    return check_job_id(f"{name}-{secrets.token_hex(JOB_SUFFIX_BYTES)}")


def is_job_id(value: object) -> bool:
    return isinstance(value, str) and JOB_ID_RE.fullmatch(value) is not None


def is_trial_id(value: object) -> bool:
    return isinstance(value, str) and TRIAL_ID_RE.fullmatch(value) is not None


def check_job_id(value: object, what: str = "job id") -> str:
    """``value`` if it is a safe job id; else ``InvalidId`` naming ``what`` and the rule."""
    if not is_job_id(value):
        raise InvalidId(f"{what} {_shown(value)} is not a job id: {_JOB_RULE}")
    assert isinstance(value, str)
    return value


def check_trial_id(value: object, what: str = "trial id") -> str:
    """``value`` if it is a safe trial id; else ``InvalidId`` naming ``what`` and the rule."""
    if not is_trial_id(value):
        raise InvalidId(f"{what} {_shown(value)} is not a trial id: {_TRIAL_RULE}")
    assert isinstance(value, str)
    return value


def _shown(value: object) -> str:
    """The offending value, quoted, on one line and short (it may be anything)."""
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."
