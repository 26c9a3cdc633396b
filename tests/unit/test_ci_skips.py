"""No silent skips in CI (tests/conftest.py): a dependency that `make test` installs
skips when missing locally and fails, naming it, under CI=true; other skips (a GPU) stay
skips. Run on a scratch suite with a copy of that conftest, in a pytest subprocess."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"

SUITE = {
    "test_sites.py": '''
        import pytest

        def test_required_binary(require):
            require("/usr/bin/no-such-browser", "make install-dev puts it there")

        def test_imported_module():
            pytest.importorskip("no_such_module_tunecluster")

        def test_hardware():
            pytest.skip("a GPU is visible; the CPU-only expectation does not apply")

        def test_runs():
            assert True
    ''',
    "test_module_level.py": '''
        import pytest

        pytest.importorskip("no_such_module_tunecluster.sub")

        def test_never_collected():
            pass
    ''',
}


def _run(tmp_path: Path, ci: str | None) -> tuple[dict[str, int], str]:
    suite = tmp_path / f"suite-{ci}"
    suite.mkdir()
    shutil.copy(CONFTEST, suite / "conftest.py")
    for name, text in SUITE.items():
        (suite / name).write_text(textwrap.dedent(text))
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    # (a collection error otherwise stops the whole run: loud, but then the other
    # outcomes cannot be counted here)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                          "--continue-on-collection-errors", str(suite)], cwd=suite, env=env,
                         capture_output=True, text=True, timeout=120)
    summary = out.stdout.strip().splitlines()[-1]
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (\w+)", summary)}
    return counts, out.stdout


def test_missing_dependencies_skip_locally(tmp_path: Path) -> None:
    counts, out = _run(tmp_path, None)
    assert counts == {"passed": 1, "skipped": 4}, out
    assert "/usr/bin/no-such-browser is missing: make install-dev puts it there" in out


@pytest.mark.parametrize("ci", ["true", "1"])
def test_missing_dependencies_fail_under_ci(tmp_path: Path, ci: str) -> None:
    counts, out = _run(tmp_path, ci)
    # the binary and the two imports fail (the module-level one as a collection error);
    # the GPU skip stays a skip
    assert counts == {"failed": 2, "passed": 1, "skipped": 1, "error": 1}, out
    assert "CI=true and /usr/bin/no-such-browser is missing: make install-dev puts it there" in out
    assert out.count("could not import 'no_such_module_tunecluster") >= 2, out
    assert "SKIPPED [1] test_sites.py:11: a GPU is visible" in out, out
