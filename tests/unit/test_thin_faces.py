"""The faces are thin: the CLI's job commands, `run`'s follow-up and the dashboard's
Submit reach the cluster through ``tunecluster.Client`` / ``Job`` only (issue 23), so a
behaviour the library promises (validation, downloads, delete with artifacts) is written
once. Read from the source: a face that opens a Store, reads a store part or a Redis key,
or shells out to the CLI fails here, naming the line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tunecluster

PACKAGE = Path(tunecluster.__file__).parent
FACES = ("cli/jobs.py", "follow.py", "dashboard/submit.py")
# What only the store's owners may touch: the store parts and the raw Redis client.
STORE_PARTS = {"jobs", "queue", "workers", "keys"}
FORBIDDEN_CALLS = {"open_store", "from_url", "build_results", "job_summaries", "retrieve"}
FORBIDDEN_MODULES = {"subprocess", "tunecluster.store.results", "tunecluster.store.downloads"}


def _offences(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            owner = node.value.attr if isinstance(node.value, ast.Attribute) \
                else getattr(node.value, "id", "")
            if (owner in ("store", "client") and node.attr in STORE_PARTS) \
                    or (owner == "store" and node.attr == "client"):
                found.append(f"line {node.lineno}: {owner}.{node.attr}")
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in FORBIDDEN_CALLS:
                found.append(f"line {node.lineno}: calls {name}()")
        if isinstance(node, ast.Import):
            found += [f"line {node.lineno}: imports {a.name}" for a in node.names
                      if a.name in FORBIDDEN_MODULES]
        if isinstance(node, ast.ImportFrom) and node.module in FORBIDDEN_MODULES:
            names = {a.name for a in node.names}
            if node.module != "tunecluster.store.downloads" or names - {"trial_name",
                                                                        "DownloadError"}:
                found.append(f"line {node.lineno}: imports from {node.module}")
    return found


@pytest.mark.parametrize("face", FACES)
def test_a_face_reaches_the_cluster_through_the_client_only(face: str) -> None:
    offences = _offences((PACKAGE / face).read_text())
    assert not offences, f"{face} goes around tunecluster.Client: {offences}"


@pytest.mark.parametrize("line", [
    "store = open_store(url)",
    "rows = job_summaries(store.jobs)",
    "holder = store.client.get(store.keys.chief_lock)",
    "import subprocess",
    "from tunecluster.store.results import build_results",
    "from tunecluster.store.downloads import retrieve",
])
def test_the_check_sees_a_face_going_around_the_client(line: str) -> None:
    assert _offences(line)


def test_the_check_lets_a_face_name_a_trial_artifact() -> None:
    assert not _offences("from tunecluster.store.downloads import trial_name\n"
                         "handle = Client(url).job(job)\nhandle.download(name, out)")


def _raw_redis(source: str) -> list[str]:
    """Uses of the raw Redis client or of key names: ``store.client``, ``store.keys``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in ("client", "keys"):
            owner = node.value.attr if isinstance(node.value, ast.Attribute) \
                else getattr(node.value, "id", "")
            if owner == "store":
                found.append(f"line {node.lineno}: store.{node.attr}")
    return found


@pytest.mark.parametrize("face", sorted(
    str(p.relative_to(PACKAGE)) for folder in ("cli", "dashboard", "export")
    for p in (PACKAGE / folder).glob("*.py")) + ["follow.py"])
def test_no_face_reads_redis_keys_or_the_raw_client(face: str) -> None:
    found = _raw_redis((PACKAGE / face).read_text())
    assert not found, f"{face} reads Redis around the store: {found}"


@pytest.mark.parametrize("module", sorted(
    str(p.relative_to(PACKAGE)) for folder in ("chief", "engine", "worker", "ray", "api")
    for p in (PACKAGE / folder).glob("*.py")))
def test_no_role_writes_redis_around_the_store(module: str) -> None:
    """The roles and the library too: every Redis key and script is the store's."""
    found = _raw_redis((PACKAGE / module).read_text())
    assert not found, f"{module} reaches Redis around the store: {found}"


def test_the_raw_redis_check_sees_a_key_read() -> None:
    assert _raw_redis("last = self.store.client.xrevrange(self.store.keys.events(job))")
