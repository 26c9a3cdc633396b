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


# --- several trials per GPU ----------------------------------------------------------------

MEM = {"0": 81559, "1": 81559, "GPU-aaaa": 16384}


def test_trials_per_gpu_packs_slots_with_a_memory_share() -> None:
    from tunecluster.worker.slots import GPU_MEMORY_ENV, HEADROOM_MB

    plan = plan_slots(["0", "1"], None, None, trials_per_gpu=4, memory_mb=MEM)
    assert len(plan) == 8
    # round-robin over the GPUs, each slot pinned to exactly one
    assert [p["CUDA_VISIBLE_DEVICES"] for p in plan] == ["0", "1"] * 4
    share = 81559 // 4 - HEADROOM_MB
    assert {p[GPU_MEMORY_ENV] for p in plan} == {str(share)}
    assert all("TF_FORCE_GPU_ALLOW_GROWTH" not in p for p in plan)  # excludes a limit
    # the shares of the slots on one GPU fit in that GPU, headroom included
    assert 4 * (share + HEADROOM_MB) <= 81559


def test_trials_per_gpu_by_uuid_and_slot_cap() -> None:
    from tunecluster.worker.slots import GPU_MEMORY_ENV

    plan = plan_slots(["GPU-aaaa"], None, None, 8, MEM)
    assert [p[GPU_MEMORY_ENV] for p in plan] == [str(16384 // 8 - 512)] * 8
    capped = plan_slots(["0", "1"], 1, 3, 2, MEM)  # --slots 3 spreads over both GPUs
    assert [p["CUDA_VISIBLE_DEVICES"] for p in capped] == ["0", "1", "0"]


def test_one_trial_per_gpu_is_unchanged() -> None:
    assert plan_slots(["0", "1"], 1, None, 1, MEM) == plan_slots(["0", "1"], 1)


def test_trials_per_gpu_errors_name_the_option() -> None:
    with pytest.raises(ValueError, match=r"^--trials-per-gpu: 0 must be at least 1$"):
        plan_slots(["0"], None, None, 0, MEM)
    with pytest.raises(ValueError, match=r"^--trials-per-gpu: .*--gpus-per-trial 2 conflicts"):
        plan_slots(["0", "1"], 2, None, 2, MEM)
    with pytest.raises(ValueError, match=r"^--trials-per-gpu: the memory of GPU 7 cannot"):
        plan_slots(["7"], None, None, 2, MEM)
    with pytest.raises(ValueError, match=r"^--trials-per-gpu: 64 trials on GPU GPU-aaaa "
                                         r"\(16384 MiB\) leave -256 MiB each, below 256"):
        plan_slots(["GPU-aaaa"], None, None, 64, MEM)


def test_trials_per_gpu_on_cpu_is_cpu_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert plan_slots([], None, 2, trials_per_gpu=4) == [{}, {}]


def test_gpu_memory_from_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from tunecluster.worker import slots

    out = "0, GPU-11, 81559\n1, GPU-22, 40960\n"
    monkeypatch.setattr(slots.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(slots.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 0, stdout=out, stderr=""))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert slots.gpu_memory_mb() == {"0": 81559, "GPU-11": 81559, "1": 40960, "GPU-22": 40960}
    assert slots.visible_gpus() == ["0", "1"]


class _FakeTF:
    """Records the logical device configuration a trial process asks for."""

    def __init__(self, gpus: int) -> None:
        self.configured: dict[str, list[int]] = {}
        outer = self

        class Config:
            @staticmethod
            def list_physical_devices(kind: str) -> list[str]:
                return [f"/physical_device:GPU:{i}" for i in range(gpus)] if kind == "GPU" else []

            @staticmethod
            def set_logical_device_configuration(device: str, configs: list) -> None:
                outer.configured[device] = [c.memory_limit for c in configs]

            class LogicalDeviceConfiguration:
                def __init__(self, memory_limit: int | None = None) -> None:
                    self.memory_limit = memory_limit

        self.config = Config


def test_trial_process_caps_its_gpu_memory() -> None:
    from tunecluster.worker.slots import GPU_MEMORY_ENV
    from tunecluster.worker.strategy import limit_gpu_memory

    tf = _FakeTF(gpus=1)
    assert limit_gpu_memory({GPU_MEMORY_ENV: "9727"}, tf) == 9727
    assert tf.configured == {"/physical_device:GPU:0": [9727]}  # one device, capped
    untouched = _FakeTF(gpus=1)
    assert limit_gpu_memory({}, untouched) is None and untouched.configured == {}
    with pytest.raises(ValueError, match=rf"^{GPU_MEMORY_ENV}: 'lots' is not a whole number"):
        limit_gpu_memory({GPU_MEMORY_ENV: "lots"}, _FakeTF(1))


def test_worker_cli_plans_packed_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    """``tunecluster worker --trials-per-gpu`` hands the packed plan to the Worker."""
    from click.testing import CliRunner

    from tunecluster import cli
    from tunecluster.cli import roles
    from tunecluster.errors import ExitCode
    from tunecluster.worker import loop, slots

    seen: dict = {}

    class FakeWorker:
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            seen.update(kwargs)

        def run(self) -> None:
            pass

    monkeypatch.setattr(loop, "Worker", FakeWorker)
    monkeypatch.setattr(slots, "visible_gpus", lambda: ["0"])
    monkeypatch.setattr(slots, "gpu_memory_mb", lambda: {"0": 16384})
    monkeypatch.setattr(roles, "open_store", lambda *a, **k: None)
    result = CliRunner().invoke(cli.cli, ["worker", "--redis", "redis://127.0.0.1:1/0",
                                          "--trials-per-gpu", "4"])
    assert result.exit_code == 0, result.output
    assert seen["slots"] == 4
    assert [e["CUDA_VISIBLE_DEVICES"] for e in seen["slot_env"]] == ["0"] * 4
    result = CliRunner().invoke(cli.cli, ["worker", "--redis", "redis://127.0.0.1:1/0",
                                          "--trials-per-gpu", "4", "--gpus-per-trial", "2"])
    assert "--trials-per-gpu: 4 trials share" in result.output
    assert result.exit_code == ExitCode.USAGE, result.output  # README: 2 is bad input


def test_worker_cli_refuses_a_bad_slot_plan_as_bad_input(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """README, "Exit status": 2 is bad input (a job file, ``--set``, an argument)."""
    from click.testing import CliRunner

    from tunecluster import cli
    from tunecluster.errors import ExitCode
    from tunecluster.worker import slots

    monkeypatch.setattr(slots, "visible_gpus", lambda: ["0"])
    monkeypatch.setattr(slots, "gpu_memory_mb", lambda: {"0": 16384})
    result = CliRunner().invoke(cli.cli, ["worker", "--redis", "redis://127.0.0.1:1/0",
                                          "--trials-per-gpu", "4", "--gpus-per-trial", "2"])
    assert "--trials-per-gpu: 4 trials share" in result.output
    assert result.exit_code == ExitCode.USAGE, result.output


def test_trial_process_caps_memory_before_child_main(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunecluster.worker import loop, strategy
    from tunecluster.worker.slots import GPU_MEMORY_ENV

    calls: list = []
    monkeypatch.setattr(strategy, "limit_gpu_memory", lambda: calls.append("limit"))
    monkeypatch.setattr(loop, "die_with_parent", lambda pid: calls.append(("watch", pid)))
    monkeypatch.setattr(loop, "child_main", lambda *a: calls.append(("child", a[-1])))
    monkeypatch.setenv(GPU_MEMORY_ENV, "")
    loop.trial_process(None, "redis://x", "/tmp", "w", {GPU_MEMORY_ENV: "1000"}, 42)
    assert calls == [("watch", 42), "limit", ("child", None)]
    calls.clear()
    loop.trial_process(None, "redis://x", "/tmp", "w", {}, 42)  # no cap: as before
    assert calls == [("child", 42)]
