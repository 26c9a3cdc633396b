"""``tunecluster tensorboard JOB --logdir DIR`` on a real finished job: the event files,
read back with TensorBoard's own reader, hold one run per trial, each epoch's metrics as
stored, the HParams plugin's session data with the trial's values, and an experiment
config listing every hyperparameter of the job's search space with its domain."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import (
    TENSORS,
    EventAccumulator,
)
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util.tensor_util import make_ndarray

from tunecluster.cluster import LocalCluster
from tunecluster.store import Store

from .conftest import EXAMPLES, cli, run_job

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def _read(path: Path) -> EventAccumulator:
    acc = EventAccumulator(str(path), size_guidance={TENSORS: 0})
    acc.Reload()
    return acc


def _plugin_data(acc: EventAccumulator, tag: str) -> plugin_data_pb2.HParamsPluginData:
    data = plugin_data_pb2.HParamsPluginData()
    data.ParseFromString(acc.SummaryMetadata(tag).plugin_data.content)
    return data


def _scalars(acc: EventAccumulator, tag: str) -> dict[int, float]:
    events = acc.Tensors(tag)
    assert len({e.step for e in events}) == len(events), f"{tag}: a step written twice"
    return {e.step: float(make_ndarray(e.tensor_proto)) for e in events}


def test_export_writes_hparams_and_scalars_of_every_trial(store: Store, cluster: LocalCluster,
                                                          tmp_path: Path) -> None:
    results = run_job(store, EXAMPLES / "digits.yaml", "search.max_trials=2", "train.epochs=2",
                      "train.early_stopping=null")
    assert results["state"] == "completed"
    job, logdir = results["job"], tmp_path / "tb"
    done = cli("tensorboard", job, "--logdir", str(logdir), "--redis", cluster.url)
    assert done.returncode == 0, done.stderr
    assert f"wrote {len(results['trials'])} run(s), 4 hyperparameter(s)" in done.stdout
    assert done.stderr == ""  # TensorFlow's start-up lines are held back

    # one run per trial, named by its id
    trials = {t["trial"]: t for t in results["trials"]}
    assert {p.name for p in logdir.iterdir() if p.is_dir()} == set(trials)

    # the experiment: every hyperparameter of the space, with its domain, and the metrics
    root = _read(logdir)
    experiment = _plugin_data(root, "_hparams_/experiment").experiment
    infos = {h.name: h for h in experiment.hparam_infos}
    assert set(infos) == {"n_hidden", "n_neurons", "learning_rate", "optimizer"}
    assert sorted(v.string_value for v in infos["optimizer"].domain_discrete.values) == [
        "adam", "sgd"]
    assert (infos["n_hidden"].domain_interval.min_value,
            infos["n_hidden"].domain_interval.max_value) == (1, 3)
    assert infos["learning_rate"].domain_interval.min_value == pytest.approx(1e-4)
    assert infos["learning_rate"].domain_interval.max_value == pytest.approx(1e-2)
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert {"val_accuracy", "loss", "score"} <= metric_tags

    for tid, trial in trials.items():
        run = _read(logdir / tid)
        # the session: this trial's values, under its id
        start = _plugin_data(run, "_hparams_/session_start_info").session_start_info
        assert start.group_name == tid
        values = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
        assert values == pytest.approx(trial["hyperparameters"])
        # every stored metric of every epoch, at its epoch
        epochs = store.jobs.epochs(job, tid)
        assert len(epochs) == 2
        for name in epochs[min(epochs)]:
            assert _scalars(run, name) == pytest.approx(
                {epoch: row[name] for epoch, row in epochs.items()}, rel=1e-6)
        assert list(_scalars(run, "score").values()) == pytest.approx([trial["score"]])

    # a second export into the same directory would double the runs: refused in one line
    again = cli("tensorboard", job, "--logdir", str(logdir), "--redis", cluster.url)
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1 and "--overwrite" in again.stderr
    # --overwrite replaces this job's runs: each step still written once
    replaced = cli("tensorboard", job, "--logdir", str(logdir), "--overwrite", "--redis",
                   cluster.url)
    assert replaced.returncode == 0, replaced.stderr
    for tid in trials:
        assert len(_scalars(_read(logdir / tid), "val_accuracy")) == 2
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 1
    # an unknown job: one line, nothing written
    missing = cli("tensorboard", "nosuch-job-000000", "--logdir", str(tmp_path / "x"),
                  "--redis", cluster.url)
    assert missing.returncode == 1 and "no job" in missing.stderr
    assert not (tmp_path / "x").exists()
