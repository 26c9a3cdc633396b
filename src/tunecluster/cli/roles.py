"""The commands that run a role of a cluster (``chief``, ``worker``) and probe one
(``health``)."""

from __future__ import annotations

import logging
import os
import sys

import click

from tunecluster import defaults
from tunecluster.cli.common import artifacts_option, fail, handle_errors, open_store
from tunecluster.errors import ExitCode
from tunecluster.options import redis_option


@click.command()
@redis_option
@artifacts_option
@click.option("--lease", "lease_s", type=float, default=defaults.LEASE_S, show_default=True)
@click.option("--ray-address", envvar="RAY_ADDRESS", default=None,
              help="Ray cluster for scheduler: ray jobs (or $RAY_ADDRESS); jobs cannot choose"
                   " it. Default: a local Ray started on demand.")
@handle_errors
def chief(redis_url: str, artifacts: str, lease_s: float, ray_address: str | None) -> None:
    """Run the chief (one is active per cluster; others stand by)."""
    import signal

    from tunecluster.chief import Chief
    from tunecluster.security import check_redis_url

    check_redis_url(redis_url, "chief")
    if ray_address:
        os.environ["RAY_ADDRESS"] = ray_address  # read by tunecluster.ray.connect

    logging.getLogger().setLevel(logging.INFO)
    from tunecluster.artifact_store import local_root

    # An s3:// root is staged locally; finalize maps the staging directory back to it.
    node = Chief(open_store(redis_url, patient=True), local_root(artifacts), lease_s=lease_s)
    signal.signal(signal.SIGTERM, lambda *_: node.stop())
    signal.signal(signal.SIGINT, lambda *_: node.stop())
    node.run()


@click.command()
@redis_option
@artifacts_option
@click.option("--slots", type=int, default=None,
              help="Trials at once (default: GPUs / --gpus-per-trial, or 1 on CPU).")
@click.option("--gpus-per-trial", type=int, default=None, help="GPUs pinned to each slot.")
@click.option("--trials-per-gpu", type=int, default=1, show_default=True,
              envvar="TUNECLUSTER_TRIALS_PER_GPU",
              help="Trials sharing each GPU, each capped at its share of the GPU's memory"
                   " (or $TUNECLUSTER_TRIALS_PER_GPU).")
@click.option("--advertise-host", default=None, envvar="TUNECLUSTER_ADVERTISE_HOST",
              help="Address other workers reach this one at, for trials trained by"
                   " several workers (default: this host's address on its route to Redis;"
                   " or $TUNECLUSTER_ADVERTISE_HOST).")
@click.option("--gang-ports", default="29500-29599", show_default=True,
              envvar="TUNECLUSTER_GANG_PORTS",
              help="TCP ports this worker's gang trial processes listen on, LOW-HIGH"
                   " (or $TUNECLUSTER_GANG_PORTS).")
@click.option("--lease", "lease_s", type=float, default=defaults.LEASE_S, show_default=True)
@click.option("--heartbeat", "heartbeat_s", type=float, default=defaults.HEARTBEAT_S,
              show_default=True)
@handle_errors
def worker(redis_url: str, artifacts: str, slots: int | None, gpus_per_trial: int | None,
           trials_per_gpu: int, advertise_host: str | None, gang_ports: str, lease_s: float,
           heartbeat_s: float) -> None:
    """Run a worker: claims trials and trains them."""
    from tunecluster.security import check_redis_url
    from tunecluster.worker.gang import parse_ports
    from tunecluster.worker.loop import Worker

    check_redis_url(redis_url, "worker")
    ports = parse_ports(gang_ports)
    from tunecluster.worker.slots import gpu_memory_mb, plan_slots, visible_gpus

    logging.getLogger().setLevel(logging.INFO)
    gpus = visible_gpus()
    memory = gpu_memory_mb() if gpus and trials_per_gpu > 1 else {}
    try:
        plan = plan_slots(gpus, gpus_per_trial, slots, trials_per_gpu, memory)
    except ValueError as exc:  # a slot plan these options cannot make: bad input
        fail(f"error: {exc}", ExitCode.USAGE)
        raise  # not reached: fail exits
    Worker(open_store(redis_url, patient=True), redis_url, artifacts, slots=len(plan),
           slot_env=plan, lease_s=lease_s, heartbeat_s=heartbeat_s,
           advertise_host=advertise_host, gang_ports=ports).run()


@click.command()
@redis_option
@click.option("--role", type=click.Choice(["chief", "worker", "redis"]), default="redis",
              show_default=True)
@click.option("--max-age", "max_age_s", type=float, default=defaults.LEASE_S * 3,
              show_default=True, help="Oldest acceptable heartbeat, seconds.")
def health(redis_url: str, role: str, max_age_s: float) -> None:
    """Probe: exit 0 when Redis answers (and, per --role, a fresh heartbeat exists)."""
    import socket

    try:
        store = open_store(redis_url)
        now = store.now_ms()  # beats are Redis time: no clock skew between pods
        if role == "chief":
            beat = store.chief_beat()
            ok = beat is not None and now - beat < max_age_s * 1000
        elif role == "worker":
            host = socket.gethostname()
            ok = any(info.get("host") == host and now - int(info.get("beat", 0)) < max_age_s * 1000
                     for info in store.workers.live(max_age_s).values())
        else:
            ok = True
    except Exception as exc:  # noqa: BLE001 - a probe reports, it does not raise
        click.echo(f"unhealthy: {exc}", err=True)
        sys.exit(1)
    click.echo("ok" if ok else f"unhealthy: no fresh {role} heartbeat")
    sys.exit(0 if ok else 1)


COMMANDS = (chief, worker, health)
