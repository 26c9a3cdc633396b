"""The state names are written once, in ``tunecluster/states.py`` (issue 23): no module
compares with, returns or stores a job's, a trial's or an oracle's state as a string
literal of its own. (Lowercase words such as "completed" stay free as column and counter
names: a job state is flagged only where a value is compared with it.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tunecluster.states import JobState, OracleStatus, TrialState

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "tunecluster"
UPPER = {s.value for s in TrialState} | {s.value for s in OracleStatus}
LOWER = {s.value for s in JobState}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Expr) and isinstance(child.value, ast.Constant):
                ids.add(id(child.value))
    return ids


def state_literals(source: str) -> list[str]:
    tree = ast.parse(source)
    skip = _docstrings(tree)
    for node in ast.walk(tree):  # parts of f-strings are text, not values
        if isinstance(node, ast.JoinedStr):
            skip.update(id(v) for v in node.values)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in skip and node.value in UPPER:
            found.append(f"line {node.lineno}: {node.value!r}")
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                values = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) \
                    else [side]
                found += [f"line {v.lineno}: {v.value!r}" for v in values
                          if isinstance(v, ast.Constant) and v.value in LOWER]
    return found


@pytest.mark.parametrize("module", sorted(
    str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "states.py"))
def test_no_state_name_outside_the_states_module(module: str) -> None:
    found = state_literals((PACKAGE / module).read_text())
    assert not found, f"{module} writes state names of its own: {found}"


@pytest.mark.parametrize("line", [
    'if trial.status == "RUNNING": pass',
    'return {"status": "IDLE"}',
    'ok = record.state in ("queued", "running")',
    'Trial(hp, status="COMPLETED")',
])
def test_the_check_sees_a_state_literal(line: str) -> None:
    assert state_literals(line)


def test_the_check_lets_words_and_messages_be() -> None:
    assert not state_literals('columns = ("job", "completed", "failed")\n'
                              'log(f"{n} RUNNING")\n'
                              'def f():\n    """Only RUNNING trials."""\n')
