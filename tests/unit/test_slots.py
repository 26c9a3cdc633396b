"""Trial slots: G GPUs x gpus_per_trial -> disjoint CUDA_VISIBLE_DEVICES per slot."""

from __future__ import annotations

import pytest

from tunecluster.worker.slots import plan_slots, visible_gpus


def test_one_trial_per_gpu() -> None:
    plan = plan_slots(["0", "1", "2", "3"], 1)
    assert [p["CUDA_VISIBLE_DEVICES"] for p in plan] == ["0", "1", "2", "3"]
    assert all(p["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" for p in plan)


def test_two_gpus_per_trial_and_leftovers_unused() -> None:
    assert [p["CUDA_VISIBLE_DEVICES"] for p in plan_slots(["0", "1", "2", "3", "4"], 2)] == [
        "0,1", "2,3"]


def test_default_is_one_trial_over_all_gpus() -> None:
    assert [p["CUDA_VISIBLE_DEVICES"] for p in plan_slots(["4", "5"])] == ["4,5"]


def test_slot_cap_and_bad_gpus_per_trial() -> None:
    assert len(plan_slots(["0", "1", "2"], 1, cpu_slots=2)) == 2
    with pytest.raises(ValueError, match="gpus-per-trial"):
        plan_slots(["0", "1"], 3)


def test_cpu_slots_without_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert plan_slots([], None, 3) == [{}, {}, {}]


def test_visible_gpus_honours_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == []


def test_worker_children_get_their_slot_environment() -> None:
    from tunecluster.worker.loop import Worker

    worker = Worker(store=None, redis_url="redis://x", artifacts="/tmp", slots=2,  # type: ignore[arg-type]
                    slot_env=plan_slots(["0", "1"], 1))
    assert [c.env["CUDA_VISIBLE_DEVICES"] for c in worker.children] == ["0", "1"]
