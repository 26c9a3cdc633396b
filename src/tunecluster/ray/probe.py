"""Kubernetes probes for the Ray pods of ``k8s/ray`` (standard library only: fast).

KubeRay's default probes run ``wget`` against Ray's dashboard agent; the tunecluster
image has neither (``ray[tune]`` installs no dashboard). These check what a Ray node
is made of instead:

    python -m tunecluster.ray.probe --role head     # raylet and GCS running, GCS port open
    python -m tunecluster.ray.probe --role worker   # raylet running

Exit 0 when healthy, 1 with one line on stderr when not.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

NEEDS = {"head": ("raylet", "gcs_server"), "worker": ("raylet",)}


def running() -> set[str]:
    """The executable names of this container's (this machine's) processes."""
    names = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv0 = (proc / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
            names.add(os.path.basename(argv0))
            names.add((proc / "comm").read_text().strip())
        except OSError:
            continue
    return names


def port_open(port: int, host: str = "127.0.0.1", timeout_s: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def check(role: str, gcs_port: int) -> str | None:
    """None when healthy, else what is wrong."""
    names = running()
    missing = [name for name in NEEDS[role] if name not in names]
    if missing:
        return f"not running: {', '.join(missing)}"
    if role == "head" and not port_open(gcs_port):
        return f"the GCS does not accept connections on port {gcs_port}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunecluster.ray.probe")
    parser.add_argument("--role", choices=sorted(NEEDS), required=True)
    parser.add_argument("--gcs-port", type=int, default=int(os.environ.get("RAY_PORT") or 6379))
    args = parser.parse_args(argv)
    problem = check(args.role, args.gcs_port)
    if problem:
        print(f"unhealthy: Ray {args.role}: {problem}", file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
