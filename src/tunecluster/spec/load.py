"""From YAML text (plus ``--set`` overrides) to a validated ``JobSpec``.

This is the only entry point that produces a ``JobSpec``: it runs pydantic's field
validation, then the cross-field rules, and turns every failure into one ``SpecError``
whose text names the field path, the value and what is allowed.
"""

from __future__ import annotations

import copy
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tunecluster.errors import SpecError
from tunecluster.spec.models import JobSpec
from tunecluster.spec.rules import check_job

MAX_SOURCE_BYTES = 1024 * 1024


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, with YAML 1.2's floats: ``1e-3`` (no dot) is a number, as
    users write learning rates and JSON reads it, not the string YAML 1.1 makes of it."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def load_spec_file(path: str | Path, overrides: Iterable[str] = ()) -> JobSpec:
    """Read a job file, apply overrides, attach the model module's source, validate."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError("", f"cannot read job file {str(path)!r}: {exc.strerror}") from None
    raw = parse_yaml(text, str(path))
    raw = apply_overrides(raw, overrides)
    raw = attach_sources(raw, path.parent)
    raw = absolute_data_paths(raw, path.parent)
    return parse_spec(raw)


def parse_yaml(text: str, origin: str = "<spec>") -> dict[str, Any]:
    try:
        raw = _load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise SpecError("", f"{origin}: {problem}{where}") from None
    if not isinstance(raw, dict):
        raise SpecError("", f"{origin}: a job file is a mapping of sections, got {_kind(raw)}")
    return raw


def parse_spec(raw: Mapping[str, Any]) -> JobSpec:
    """Validate a raw mapping (from YAML or JSON) into a ``JobSpec``."""
    if not isinstance(raw, Mapping):
        raise SpecError("", f"a job is a mapping of sections, got {_kind(raw)}")
    try:
        spec = JobSpec.model_validate(dict(raw))
    except ValidationError as exc:
        raise _to_spec_error(exc) from None
    check_job(spec)
    return spec


def spec_to_json(spec: JobSpec) -> str:
    raw = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    _keep_meaningful_nulls(spec, raw)
    return json.dumps(raw)


def _keep_meaningful_nulls(model: BaseModel, raw: dict[str, Any]) -> None:
    """Put back in ``raw`` (``model`` dumped without its nulls) the nulls whose field
    defaults to something else: read again without them, the spec would take the
    default (``model.function``: no hypermodel, not ``build_model``;
    ``search.num_initial_points``: KerasTuner's rule, not 3)."""
    for name, info in type(model).model_fields.items():
        key = info.alias or name
        value = getattr(model, name)
        if value is None:
            if info.get_default(call_default_factory=True) is not None:
                raw[key] = None
        elif isinstance(value, BaseModel) and isinstance(raw.get(key), dict):
            _keep_meaningful_nulls(value, raw[key])


def spec_from_json(text: str) -> JobSpec:
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        raise SpecError("", f"stored job spec is not JSON: {exc}") from None
    return parse_spec(raw)


# --- overrides --------------------------------------------------------------------


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``dotted.path=value`` overrides; values are parsed as YAML scalars/lists."""
    result = copy.deepcopy(dict(raw))
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise SpecError("--set", f"{item!r} is not of the form dotted.path=value")
        parts = key.split(".")
        try:
            value = _load(text) if text.strip() else ""
        except yaml.YAMLError:
            raise SpecError(_join(parts), f"cannot parse override value {text!r}") from None
        node: Any = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = _join(parts[: depth + 1])
                raise SpecError(_join(parts), f"{where} is a {_kind(child)}, not a section")
            node = child
        node[parts[-1]] = value
    return result


def attach_sources(raw: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """Read ``model.module`` into ``model.source`` so the code travels with the job."""
    model = raw.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("module"), str):
        return raw
    if model.get("source") is not None:
        return raw
    module_path = Path(model["module"])
    if not module_path.is_absolute():
        module_path = base_dir / module_path
    try:
        data = module_path.read_bytes()
    except OSError as exc:
        raise SpecError(
            "model.module", f"cannot read {model['module']!r}: {exc.strerror}"
        ) from None
    if len(data) > MAX_SOURCE_BYTES:
        raise SpecError("model.module", f"{model['module']!r} is larger than 1 MiB")
    try:
        model["source"] = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError("model.module", f"{model['module']!r} is not UTF-8 text") from None
    return raw


def absolute_data_paths(raw: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """Data paths in a job file are relative to the file; the job carries them absolute."""
    data = raw.get("data")
    if not isinstance(data, dict):
        return raw
    if isinstance(data.get("path"), str):
        data["path"] = str((base_dir / data["path"]).resolve())
    files = data.get("files")
    if isinstance(files, dict):
        for split, value in files.items():
            if isinstance(value, str):
                files[split] = str((base_dir / value).resolve())
    return raw


# --- error formatting ----------------------------------------------------------------


def _to_spec_error(exc: ValidationError) -> SpecError:
    errors = exc.errors(include_url=False)
    first, errors = _pick_error(errors)
    loc = _field_path(first["loc"])[0]
    kind = first["type"]
    value = first.get("input")
    if kind == "extra_forbidden":
        allowed = _fields_at(JobSpec, loc[:-1])
        message = f"unknown key {loc[-1]!r}"
        if allowed:
            message += f"; allowed: {', '.join(allowed)}"
        path = _join(loc)
    elif kind == "missing":
        path, message = _join(loc), "is required"
    elif kind == "literal_error":
        path = _join(loc)
        message = f"{value!r} is not one of {_plain_list(first['ctx']['expected'])}"
    elif kind in ("value_error", "assertion_error"):
        path = _join(loc)
        message = str(first["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    else:
        path = _join(loc)
        message = f"{value!r}: {_lower_first(first['msg'])}" if not isinstance(
            value, (dict, list)
        ) else _lower_first(first["msg"])
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return SpecError(path, message.replace("\n", " "))


_PLAIN_KEY = re.compile(r"[\w\-/]+")


def _join(loc: list[str]) -> str:
    """The dotted field path; a key that is not a plain name (a user's typo with a newline,
    a space, a dot) is quoted so the path stays one unambiguous line."""
    return ".".join(p if _PLAIN_KEY.fullmatch(p) else repr(p) for p in loc)


def _pick_error(errors: list[Any]) -> tuple[Any, list[Any]]:
    """The error to report, and all errors counting it but not its union alternatives.

    A value that fits no member of a union (``Objective | str``) fails once per member;
    those failures are one problem. Report the branch that got furthest into the value,
    preferring a broken constraint over a mere type mismatch. An unknown key goes first:
    it is usually the cause of a required key's absence (``tset:`` for ``test:``).
    """
    errors = sorted(errors, key=lambda e: e["type"] != "extra_forbidden")  # stable
    first = errors[0]
    tags = _field_path(first["loc"])[1]
    loc = first["loc"]

    def is_branch(error: Any) -> bool:
        other = error["loc"]
        return any(
            len(other) > p and other[:p] == loc[:p] and other[p] != loc[p] for p in tags
        )

    branches = [first] + [e for e in errors[1:] if is_branch(e)]

    def rank(error: Any) -> tuple[int, bool]:
        kind = error["type"]
        mismatch = kind.endswith(("_type", "_parsing")) or kind == "literal_error"
        return len(_field_path(error["loc"])[0]), not mismatch

    best = max(branches, key=rank)
    return best, [best] + [e for e in errors if e not in branches]


def _field_path(loc: tuple[Any, ...]) -> tuple[list[str], list[int]]:
    """``loc`` without pydantic's union-member tags (``Objective``, ``constrained-int``).

    Walks the ``JobSpec`` annotations alongside ``loc``; the part after a union's own
    position names the member that failed, not a field. Also returns where the tags were.
    """
    path: list[str] = []
    tags: list[int] = []
    annotation: Any = JobSpec
    for i, part in enumerate(loc):
        annotation = _unwrap(annotation)
        members = _union_members(annotation)
        if members:
            tags.append(i)
            annotation = next((m for m in members if getattr(m, "__name__", None) == part), None)
            continue
        path.append(str(part))
        annotation = _child(annotation, part)
    return path, tags


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated[...]`` and ``X | None`` (neither adds a part to ``loc``)."""
    while True:
        if typing.get_origin(annotation) is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        if _is_union(annotation):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
        return annotation


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _union_members(annotation: Any) -> list[Any]:
    if not _is_union(annotation):
        return []
    return [a for a in typing.get_args(annotation) if a is not type(None)]


def _child(annotation: Any, part: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = next((f for n, f in annotation.model_fields.items() if (f.alias or n) == part),
                     None)
        return field.annotation if field is not None else None
    origin = typing.get_origin(annotation)
    if origin is dict:
        return typing.get_args(annotation)[1]
    if origin is list:
        return typing.get_args(annotation)[0]
    return None


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    """Field names (aliases) of the section at ``loc``, to list what is allowed."""
    current: Any = model
    parts = iter(loc)
    for part in parts:
        field = next(
            (f for n, f in current.model_fields.items() if (f.alias or n) == part), None
        )
        if field is None:
            return []
        if typing.get_origin(field.annotation) is dict:
            next(parts, None)  # the user's key (e.g. a hyperparameter's name)
        current = _model_in(field.annotation)
        if current is None:
            return []
    return [f.alias or n for n, f in current.model_fields.items() if n != "source"]


def _model_in(annotation: Any) -> Any:
    """The BaseModel class inside an annotation like ``Split | None`` or ``dict[str, X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _plain_list(expected: str) -> str:
    return expected.replace("'", "").replace(" or ", ", ")


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _kind(value: object) -> str:
    return {dict: "mapping", list: "list", str: "string", type(None): "empty document"}.get(
        type(value), type(value).__name__
    )
