"""The soak's faults (``soak.KINDS``), applied on schedule to a running ``LocalCluster``.

A pause (SIGSTOP), a cut or slow link and an artifacts root that refuses writes end by
themselves after their length (a timer), so faults overlap: a worker may be stopped
while Redis restarts. ``heal`` ends every fault still in force and brings the cluster
back to two chiefs, three workers and a Redis with its AOF on.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from tunecluster.cluster import RedisServer


class Injector:
    def __init__(self, soak: Any, faults: list[Any]) -> None:
        self.soak = soak
        self.cluster = soak.cluster
        self.faults = faults
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="faults", daemon=True)
        self.timers: list[threading.Timer] = []
        self.snapshot: tuple[float, Path] | None = None
        self.next_snapshot = 0.0

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join()
        for timer in self.timers:
            timer.cancel()

    def _run(self) -> None:
        for fault in self.faults:
            while not self.stop_event.is_set():
                now = time.monotonic() - self.soak.start
                if now >= fault.at_s:
                    break
                if time.monotonic() >= self.next_snapshot:
                    self._take_snapshot()
                self.stop_event.wait(min(0.5, fault.at_s - now))
            if self.stop_event.is_set():
                return
            try:
                detail = getattr(self, fault.kind)(fault)
            except Exception as exc:  # noqa: BLE001 - a fault that could not be applied
                detail = f"not applied: {type(exc).__name__}: {exc}"
            else:
                self.soak.faults_done[fault.kind] += 1
            self.soak._say(f"{fault.kind}: {detail}")

    # --- processes ---------------------------------------------------------------------

    def _pick(self, procs: list[Any], fault: Any) -> Any:
        alive = [p for p in procs if p.poll() is None]
        if not alive:
            raise LookupError("none alive")
        return alive[fault.victim % len(alive)]

    def _pause(self, pid: int, length_s: float, group: bool = True) -> None:
        send = os.killpg if group else os.kill
        send(pid, signal.SIGSTOP)
        self.soak.paused.add(pid)

        def resume() -> None:
            self.soak.paused.discard(pid)
            try:
                send(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

        timer = threading.Timer(length_s, resume)
        timer.daemon = True
        self.timers.append(timer)
        timer.start()

    def _kill(self, role: str, fault: Any) -> str:
        """SIGKILL one ``role`` process (its group: a worker's trials too), start one."""
        procs = self.cluster.workers if role == "worker" else self.cluster.chiefs
        victim = self._pick(procs, fault)
        self.soak.killed.add(victim.pid)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(10)
        new = self.cluster.start_worker() if role == "worker" else self.cluster.start_chief()
        return f"{role} {victim.pid} killed; {role} {new.pid} started"

    def _stop(self, role: str, fault: Any) -> str:
        """SIGSTOP one ``role`` process group for the fault's length."""
        victim = self._pick(self.cluster.workers if role == "worker" else self.cluster.chiefs,
                            fault)
        self._pause(victim.pid, fault.length_s)
        return f"{role} {victim.pid} stopped for {fault.length_s} s"

    def worker_kill(self, fault: Any) -> str:
        return self._kill("worker", fault)

    def worker_pause(self, fault: Any) -> str:
        return self._stop("worker", fault)

    def worker_skew(self, fault: Any) -> str:
        """A worker replaced by one on a host whose clock is off (ahead for an even
        victim index, behind for an odd one): its ``time.time`` shifted through a
        ``sitecustomize`` on its PYTHONPATH, its trial processes' too."""
        victim = self._pick(self.cluster.workers, fault)
        skew = fault.length_s if fault.victim % 2 == 0 else -fault.length_s
        site = self.soak.workdir / f"skew{skew:+.0f}"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(
            f"import time\n_real = time.time\ntime.time = lambda: _real() + {skew!r}\n")
        self.soak.killed.add(victim.pid)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(10)
        plain = self.cluster.env
        path = os.pathsep.join(filter(None, [str(site), plain.get("PYTHONPATH")]))
        self.cluster.env = {**plain, "PYTHONPATH": path}
        try:
            new = self.cluster.start_worker()
        finally:
            self.cluster.env = plain
        return f"worker {victim.pid} killed; worker {new.pid} started, its clock {skew:+.0f} s off"

    def trial_kill(self, fault: Any) -> str:
        trials = []
        for worker in self.cluster.workers:
            try:
                trials += [child for child in psutil.Process(worker.pid).children()
                           if child.status() != psutil.STATUS_ZOMBIE]  # not one just killed
            except psutil.Error:
                continue
        if not trials:
            raise LookupError("no trial process")
        victim = trials[fault.victim % len(trials)]
        victim.kill()
        return f"trial process {victim.pid} killed"

    def chief_kill(self, fault: Any) -> str:
        return self._kill("chief", fault)

    def chief_pause(self, fault: Any) -> str:
        return self._stop("chief", fault)

    # --- Redis -------------------------------------------------------------------------

    def _take_snapshot(self) -> None:
        from soak import SNAPSHOT_EVERY_S

        self.next_snapshot = time.monotonic() + SNAPSHOT_EVERY_S
        with self.soak.redis_lock:
            redis = self.cluster.redis
            if redis.process is None or redis.process.pid in self.soak.paused:
                return
            try:
                self.soak._store().client.save()
            except Exception:  # noqa: BLE001 - down or full: the next one
                return
            saved = redis.data_dir.parent / f"{redis.data_dir.name}-snapshot.rdb"
            shutil.copyfile(redis.data_dir / "dump.rdb", saved)
            self.snapshot = (time.monotonic(), saved)

    def _restart_redis(self, delay_s: float, from_snapshot: Path | None = None) -> None:
        old = self.cluster.redis
        if old.process is not None:
            self.soak.paused.discard(old.process.pid)
        old.stop(kill=True)
        time.sleep(delay_s)
        if from_snapshot is not None:  # what Redis holds is the snapshot, nothing after
            shutil.rmtree(old.data_dir / "appendonlydir", ignore_errors=True)
            shutil.copyfile(from_snapshot, old.data_dir / "dump.rdb")
        # Redis 7 with its AOF on and no AOF starts empty: the snapshot loads with it off,
        # then it is turned on (a new AOF written from what was loaded).
        self.cluster.redis = RedisServer(port=old.port, data_dir=old.data_dir,
                                         appendonly=from_snapshot is None).start()
        if from_snapshot is not None:
            self.soak._store().client.config_set("appendonly", "yes")

    def redis_kill(self, fault: Any) -> str:
        with self.soak.redis_lock:
            self._restart_redis(fault.length_s)
        return f"Redis killed, started again from its AOF after {fault.length_s} s"

    def redis_pause(self, fault: Any) -> str:
        with self.soak.redis_lock:
            process = self.cluster.redis.process
            if process is None:
                raise LookupError("Redis is not running")
            self._pause(process.pid, fault.length_s, group=False)
        return f"Redis stopped for {fault.length_s} s"

    def redis_rollback(self, fault: Any) -> str:
        with self.soak.redis_lock:
            if self.snapshot is None:
                raise LookupError("no snapshot yet")
            taken, path = self.snapshot
            self._restart_redis(0.5, from_snapshot=path)
            self.soak.rollbacks.append((time.monotonic(), taken))
        return f"Redis rolled back to its snapshot of {time.monotonic() - taken:.0f} s ago"

    def redis_full(self, fault: Any) -> str:
        with self.soak.redis_lock:
            client = self.soak._store().client
            used = int(client.info("memory")["used_memory"])
            client.config_set("maxmemory", str(used + 64 * 1024))

        def empty() -> None:
            with self.soak.redis_lock:
                try:
                    self.soak._store().client.config_set("maxmemory", "0")
                except Exception:  # noqa: BLE001 - restarted meanwhile: no limit then
                    pass

        timer = threading.Timer(fault.length_s, empty)
        timer.daemon = True
        self.timers.append(timer)
        timer.start()
        return f"Redis full (maxmemory {used // 1024 + 64} KiB) for {fault.length_s} s"

    # --- the network and the disk ------------------------------------------------------

    def link_drop(self, fault: Any) -> str:
        cut = self.cluster.proxy.drop(fault.length_s)
        return f"{cut} connections to Redis cut, new ones refused for {fault.length_s} s"

    def link_delay(self, fault: Any) -> str:
        extra_s = 0.05 * (1 + fault.victim % 10)  # 50-500 ms
        self.cluster.proxy.delay(extra_s, fault.length_s)
        return f"traffic to and from Redis held {extra_s * 1000:.0f} ms for {fault.length_s} s"

    def artifacts_refuse(self, fault: Any) -> str:
        """Every directory and file under the artifacts root made immutable (root writes
        through permission bits; not through this), for the fault's length."""
        root = Path(self.cluster.artifacts)
        self.immutable(root, True)
        self.soak.refusing.add(root)

        def allow() -> None:
            self.soak.refusing.discard(root)
            self.immutable(root, False)

        timer = threading.Timer(fault.length_s, allow)
        timer.daemon = True
        self.timers.append(timer)
        timer.start()
        return f"artifacts refuse writes for {fault.length_s} s"

    @staticmethod
    def immutable(root: Path, on: bool) -> None:
        # files appear and go while it runs: those it misses, or finds gone, are left
        subprocess.run(["chattr", "-R", "-f", "+i" if on else "-i", str(root)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
                       check=False)

    # --- the end -----------------------------------------------------------------------

    def heal(self) -> None:
        """End every fault still in force; two chiefs, three workers, Redis with AOF."""
        for pid in list(self.soak.paused):
            for send in (os.killpg, os.kill):
                try:
                    send(pid, signal.SIGCONT)
                except (ProcessLookupError, PermissionError):
                    pass
        self.soak.paused.clear()
        self.cluster.proxy.heal()
        for root in list(self.soak.refusing):
            self.immutable(root, False)
        self.soak.refusing.clear()
        with self.soak.redis_lock:
            redis = self.cluster.redis
            if redis.process is None or redis.process.poll() is not None:
                self._restart_redis(0)
            client = self.soak._store().client
            client.config_set("maxmemory", "0")
            client.config_set("appendonly", "yes")
        while sum(p.poll() is None for p in self.cluster.chiefs) < 2:
            self.cluster.start_chief()
        while sum(p.poll() is None for p in self.cluster.workers) < 3:
            self.cluster.start_worker()
