"""Population-based training through a real cluster: members train in stretches,
each continuing its previous trial (no epoch trained twice); the bottom of the
population exploits a top member (its weights: the first epoch after the exploit
starts near that member's score, far from a fresh model's) and explores its learning
rate; the lineage is in the records; every trial ends exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunecluster.api.submission import prepare_job, submit, wait
from tunecluster.cluster import LocalCluster
from tunecluster.store import Store

from .conftest import EXAMPLES, FAST_LIVENESS
from .invariants import assert_exactly_once

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

# Two members, three stretches of two epochs, on one worker. At the first ranking one
# member is the bottom half: it exploits the other at once, or, when the top member's
# stretch ends first and it goes on to four epochs, at the next ranking (four epochs
# score better than two on this model): an exploit happens. The model learns fast in its
# first epochs (as in the Hyperband test of test_cluster.py), so a fresh model's first
# epoch is far from the score a member reaches after two or four.
PBT = ("search.algorithm=pbt", "search.pbt_population=2", "search.pbt_interval=2",
       "search.pbt_quantile=0.5", "train.epochs=6", "search.objective=val_loss",
       "train.batch_size=16", "train.early_stopping=null", "search.seed=3",
       "model.hyperparameters.n_hidden={fixed: 1}",
       "model.hyperparameters.n_neurons={int: [16, 160]}",
       "model.hyperparameters.learning_rate={float: [0.001, 0.01], sampling: log}",
       "model.hyperparameters.optimizer={fixed: adam}")


def test_pbt_exploits_the_top_members_weights_and_records_the_lineage(tmp_path: Path) -> None:
    with LocalCluster(workers=1, artifacts=tmp_path / "artifacts", log_dir=tmp_path / "logs",
                      env=FAST_LIVENESS) as cluster:
        store = Store.from_url(cluster.url)
        job = submit(store, prepare_job(EXAMPLES / "digits.yaml", PBT))
        results = wait(store, job, 360)
        assert results["state"] == "completed", results.get("error")
        assert_exactly_once(store, job)
        by_id = {t["trial"]: t for t in results["trials"]}
        epochs = {tid: store.jobs.epochs(job, tid) for tid in by_id}
    exploits = []
    for tid, trial in by_id.items():
        tuner = trial["tuner"]
        initial, last = int(tuner["tuner/initial_epoch"]), int(tuner["tuner/epochs"])
        assert sorted(epochs[tid]) == list(range(initial + 1, last + 1)), trial
        parent_id = tuner.get("tuner/trial_id")
        if parent_id is None:
            assert initial == 0
            continue
        parent = by_id[str(parent_id)]
        assert int(parent["tuner"]["tuner/epochs"]) == initial  # its end is the child's start
        if "tuner/exploited" not in tuner:
            assert trial["hyperparameters"] == parent["hyperparameters"]
            assert tuner["tuner/member"] == parent["tuner"]["tuner/member"]
            continue
        exploits.append(tid)
        # the rule: the member was the bottom one, its source scored better
        own = max((t for t in by_id.values() if t["tuner"]["tuner/member"] == tuner[
            "tuner/member"] and t["trial"] < tid), key=lambda t: t["trial"])
        assert parent["score"] < own["score"], (parent, own)
        assert tuner["tuner/exploited"] == parent["tuner"]["tuner/member"] != tuner[
            "tuner/member"]
        assert trial["hyperparameters"]["n_neurons"] == parent["hyperparameters"]["n_neurons"]
        ratio = trial["hyperparameters"]["learning_rate"] / parent["hyperparameters"][
            "learning_rate"]
        assert ratio == pytest.approx(0.8) or ratio == pytest.approx(1.25), ratio
        # the exploit copied the parent's weights: its first epoch is near the parent's
        # score, where a fresh model's first epoch (the parent's own epoch 1) is far
        root = parent
        while root["tuner"].get("tuner/trial_id") is not None:
            root = by_id[str(root["tuner"]["tuner/trial_id"])]
        fresh_first = epochs[root["trial"]][1]["val_loss"]  # the source lineage's epoch 1
        gap = fresh_first - parent["score"]
        assert gap > 0.05, f"too little learning in two epochs to tell ({gap:.3f})"
        drift = (epochs[tid][initial + 1]["val_loss"] - parent["score"]) / gap
        print(f"\npbt: trial {tid} from {parent_id}: drift {drift:+.2f} of the gap")
        assert drift < 0.5, (f"trial {tid}'s first epoch is closer to a fresh model's"
                             f" ({fresh_first:.3f}) than to its source's score")
    assert exploits, "no member exploited the other"
    ends = {t["tuner"]["tuner/member"]: int(t["tuner"]["tuner/epochs"]) for t in by_id.values()}
    assert ends == {0: 6, 1: 6}, ends
