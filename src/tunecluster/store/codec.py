"""JSON on the wire: the only encoding that crosses Redis (never pickle)."""

from __future__ import annotations

import json
import math
from typing import Any

from tunecluster.errors import StoreError


def dumps(value: Any) -> str:
    """Compact JSON; non-finite numbers (NaN, +-Infinity) become null.

    ``NaN``/``Infinity`` are not JSON: Redis' Lua ``cjson`` refuses them and other readers
    would too. A metric that is not a number is recorded as "no value" (null).
    """
    try:
        return json.dumps(value, default=_default, allow_nan=False, separators=(",", ":"))
    except ValueError as exc:  # rare: a non-finite number somewhere in ``value``
        if "Out of range float" not in str(exc):
            raise
        return json.dumps(finite(value), default=_default, allow_nan=False,
                          separators=(",", ":"))


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (numpy's included) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if not isinstance(value, (str, bytes, int)) and hasattr(value, "tolist"):
        return finite(value.tolist())  # numpy scalars and arrays
    return value


def loads(text: str | bytes | None, what: str) -> Any:
    if text is None:
        raise StoreError(f"{what} is missing")
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreError(f"{what} is not valid JSON ({exc})") from None


def loads_object(text: str | bytes | None, what: str) -> dict[str, Any]:
    value = loads(text, what)
    if not isinstance(value, dict):
        raise StoreError(f"{what} is a {type(value).__name__}, expected an object")
    return value


def finite_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _default(value: Any) -> Any:
    # numpy scalars and arrays from metrics and hyperparameter values
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (ValueError, TypeError):
            pass
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
