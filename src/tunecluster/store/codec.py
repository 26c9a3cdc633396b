"""JSON on the wire: the only encoding that crosses Redis (never pickle)."""

from __future__ import annotations

import json
import math
from typing import Any

from tunecluster.errors import StoreError


def dumps(value: Any) -> str:
    return json.dumps(value, default=_default, allow_nan=True, separators=(",", ":"))


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
