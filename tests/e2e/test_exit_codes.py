"""A job that does not complete is visible to whoever waited for it: the CLI's wait-style
commands exit with a code per end (errors.ExitCode), and ``Job.wait()`` raises.
Real Redis, chief and workers (the session's ``cluster``)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tunecluster.api import Client
from tunecluster.errors import ExitCode, JobCancelled, JobFailed, WaitTimeout

from .conftest import EXAMPLES, cli

NAN_MODEL = textwrap.dedent('''
    import keras
    from keras import ops

    def build_model(hp):
        hp.Fixed("units", 8)
        model = keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(),
                                  keras.layers.Dense(10, activation="softmax")])

        def loss(y, p):
            return ops.mean(ops.log(p * 0.0 - 1.0))

        model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
        return model
''')


def _nan_job(tmp_path: Path) -> Path:
    (tmp_path / "nan_model.py").write_text(NAN_MODEL)
    spec = tmp_path / "job.yaml"
    spec.write_text(textwrap.dedent('''
        name: always-nan
        data: {dataset: digits}
        model: {module: nan_model.py}
        search: {algorithm: random, objective: val_accuracy, max_trials: 1,
                 max_retries_per_trial: 0}
        train: {epochs: 1}
    '''))
    return spec


def test_submit_wait_of_a_failed_job_exits_job_failed(cluster, tmp_path: Path) -> None:
    out = cli("submit", str(_nan_job(tmp_path)), "--wait", "--redis", cluster.url)
    assert out.returncode == ExitCode.JOB_FAILED == 3, (out.stdout, out.stderr)
    last = [ln for ln in out.stderr.splitlines() if ln.strip()][-1]
    assert last.startswith("job ") and " failed: " in last and "nan" in last.lower(), last
    assert "failed" in out.stdout  # the results were printed before the exit


def test_job_wait_raises_on_failure_and_keeps_the_state(cluster, tmp_path: Path) -> None:
    client = Client(cluster.url)
    job = client.submit(_nan_job(tmp_path))
    with pytest.raises(JobFailed) as info:
        job.wait(timeout=240)
    assert info.value.state == "failed" and info.value.job == job.id
    assert "nan" in (info.value.error or "").lower() and info.value.results is not None
    assert job.wait(raise_on_failure=False)["state"] == "failed"


def test_cancelled_job_raises_and_watch_exits_cancelled(cluster) -> None:
    client = Client(cluster.url)
    job = client.submit(EXAMPLES / "digits.yaml", ["search.max_trials=50", "train.epochs=200"])
    job.cancel()
    with pytest.raises(JobCancelled) as info:
        job.wait(timeout=120)
    assert info.value.state == "cancelled"
    out = cli("watch", job.id, "--redis", cluster.url)
    assert out.returncode == ExitCode.JOB_CANCELLED == 4, out.stderr
    assert f"job {job.id} cancelled" in out.stderr


def test_wait_timeout_and_unreachable_have_their_codes(cluster) -> None:
    client = Client(cluster.url)
    job = client.submit(EXAMPLES / "digits.yaml", ["search.max_trials=50", "train.epochs=200"])
    try:
        with pytest.raises(WaitTimeout):
            job.wait(timeout=0.2)
        out = cli("submit", str(EXAMPLES / "digits.yaml"), "--set", "train.epochs=200",
                  "--wait", "--timeout", "1", "--redis", cluster.url)
        assert out.returncode == ExitCode.TIMED_OUT == 5, out.stderr
        assert "keeps running" in out.stderr and len(out.stderr.splitlines()) == 1
        client.job(out.stderr.split()[2]).cancel()  # "error: job <id> still ..."
    finally:
        job.cancel()
    out = cli("submit", str(EXAMPLES / "digits.yaml"), "--wait", "--redis",
              "redis://127.0.0.1:1/0")
    assert out.returncode == ExitCode.UNREACHABLE == 6, out.stderr
    assert "cannot reach Redis" in out.stderr and len(out.stderr.splitlines()) == 1
