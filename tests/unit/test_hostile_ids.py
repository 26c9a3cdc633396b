"""Hostile job and trial ids on the commands that turn them into paths and keys (README,
"Job and trial ids ... are checked before they name a file"): ``best``, ``report``,
``tensorboard`` and ``artifacts`` refuse anything but a job id in one line, exit 2,
before Redis is asked; ``artifacts --trial`` refuses anything but a trial id and
writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tunecluster.cli import cli
from tunecluster.cluster import RedisServer
from tunecluster.errors import ExitCode

HOSTILE = ["../../etc/passwd", "a/b", "/abs", "..", "Bad_ID!", "x" * 200, "", "job\n-000000",
           "job-000000/../../x"]
# Nothing listens here: a command that asked Redis would exit UNREACHABLE (6), not 2.
NO_REDIS = "redis://127.0.0.1:1/0"


@pytest.mark.parametrize("command", ["best", "report", "tensorboard", "artifacts"])
@pytest.mark.parametrize("job", HOSTILE)
def test_hostile_job_ids_are_refused_before_redis(command: str, job: str,
                                                  tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, [command, job, "--redis", NO_REDIS],
                                catch_exceptions=False)
    assert result.exit_code == ExitCode.USAGE, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: JOB ") and "not a job id" in lines[0]


TRIALS = ["../../x", "a/b", "..", "x y", "/abs", "t" * 100]


def _artifacts_trial(server: RedisServer, trial: str, out: Path):  # -> click Result
    return CliRunner().invoke(cli, ["artifacts", "job-000000", "--trial", trial, "--redis",
                                    server.url, "-o", str(out)], catch_exceptions=False)


@pytest.mark.parametrize("trial", TRIALS)
def test_hostile_trial_ids_for_artifacts_write_nothing(server: RedisServer, trial: str,
                                                       tmp_path: Path) -> None:
    result = _artifacts_trial(server, trial, tmp_path / "out")
    assert result.exit_code == ExitCode.USAGE, result.output  # README: 2, bad input
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "is not a trial id" in lines[0], result.output
    assert list(tmp_path.iterdir()) == []  # not even the output directory


# The same refusals from the installed command in a process of its own (what a user runs):
# its exit status and its stderr, one line, nothing on stdout, nothing written.
PROCESS_CASES = [
    (["best", "../../etc/passwd"], "error: JOB '../../etc/passwd' is not a job id"),
    (["report", "a/b", "-o", "{out}/report.html"], "error: JOB 'a/b' is not a job id"),
    (["tensorboard", "..", "--logdir", "{out}/tb"], "error: JOB '..' is not a job id"),
    (["artifacts", "job-000000", "--trial", "../../x", "-o", "{out}/a"],
     "error: --trial '../../x' is not a trial id"),
]


@pytest.mark.parametrize("args,first", PROCESS_CASES,
                         ids=["best", "report", "tensorboard", "artifacts-trial"])
def test_hostile_ids_in_a_real_cli_process(args: list[str], first: str,
                                           tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "tunecluster",
                           *[a.format(out=out) for a in args], "--redis", NO_REDIS],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "TUNECLUSTER_REDIS_URL": NO_REDIS})
    assert done.returncode == ExitCode.USAGE, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(first), done.stderr
    assert done.stdout == ""
    assert not out.exists()
