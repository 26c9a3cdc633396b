#!/usr/bin/env bash
# The compose stack's images built without any container registry (an air-gapped host, a
# CI machine), from nothing on a fresh Debian/Ubuntu machine. Idempotent and cached.
#
#   make images-offline                     the user's command: `images` below
#   scripts/offline-images.sh images        engine + base images + wheelhouse + the
#                                           tunecluster:VERSION image, then .env points
#                                           at it and at the Redis image (see cmd_images)
#   scripts/offline-images.sh up            the same without touching .env; the image is
#                                           $TUNECLUSTER_E2E_IMAGE (tests/e2e/test_compose.py,
#                                           through tests/e2e/docker_env.sh)
#   scripts/offline-images.sh prepare       the same without the image build
#   scripts/offline-images.sh down          stop the dockerd that `up`/`images` started (by its PID), if any
#   scripts/offline-images.sh requirements  the wheelhouse's requirements (Python 3.10+, no tomllib needed)
#   scripts/offline-images.sh mirror        the Debian mirror debootstrap uses (apt's own sources)
#
# `up` prints KEY=VALUE lines on stdout (the test reads them); progress goes to stderr.
# Exit 3 means "no Docker engine can be had here" (the test skips): no engine and not root,
# or not root and no writable cache directory / no base images. Anything else non-zero
# is a failure.
#
# What `up` does, each step skipped when its result already exists:
#   1. a Docker engine: the running one, or (root + apt) install docker.io and start
#      dockerd itself, recording its PID in $STATE/dockerd.pid for `down`;
#   2. base images without a registry: debootstrap Debian bookworm once (rootfs tarballs
#      cached in $CACHE), import it and tag it as the Dockerfile's BASE_IMAGE
#      (python:3.11-slim), plus a Redis image from the same rootfs (local/redis:bookworm);
#   3. a wheelhouse for linux / CPython 3.11 downloaded on the host (the build itself runs
#      with --network none), cached in $CACHE/wheelhouse and keyed by pyproject.toml;
#   4. `docker build --network none --build-arg WHEELHOUSE=1` of the project's Dockerfile,
#      from a build context made of the project's files plus the cached wheelhouse.
#
# Environment: TUNECLUSTER_CI_CACHE (default /var/cache/tunecluster-ci),
#              TUNECLUSTER_E2E_IMAGE (default tunecluster:e2e),
#              DEBIAN_MIRROR (default: the first $SUITE main archive of apt's sources),
#              TUNECLUSTER_APT_DIR (where apt's sources are read, default /etc/apt).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
CACHE="${TUNECLUSTER_CI_CACHE:-/var/cache/tunecluster-ci}"
STATE="$CACHE/state"
IMAGE="${TUNECLUSTER_E2E_IMAGE:-tunecluster:e2e}"
BASE_IMAGE="$(sed -n 's/^ARG BASE_IMAGE=//p' "$ROOT/Dockerfile" | head -n1)"
REDIS_IMAGE="local/redis:bookworm"
SUITE="bookworm"
# The Debian mirror debootstrap fetches from: DEBIAN_MIRROR, else the one apt on this
# machine already uses (its sources list). The project names no mirror of its own.
APT_DIR="${TUNECLUSTER_APT_DIR:-/etc/apt}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"

log() { printf '[docker_env %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
unavailable() { log "unavailable: $*"; echo "REASON=$*"; exit 3; }

is_root() { [ "$(id -u)" = 0 ]; }

# The cache must be writable: a non-root user without one cannot build (skip, not fail).
ensure_cache() {
    if ! mkdir -p "$CACHE" "$STATE" 2>/dev/null || [ ! -w "$CACHE" ] || [ ! -w "$STATE" ]; then
        is_root && { log "cannot create $CACHE"; exit 1; }
        unavailable "no writable cache directory $CACHE (set TUNECLUSTER_CI_CACHE)"
    fi
}

# The project's dependencies and its cpu extra, from pyproject.toml. tomllib is Python
# 3.11+; the project supports 3.10, where a small reader of the two arrays stands in.
requirements() {
    "$PYTHON" - "$ROOT/pyproject.toml" <<'EOF'
import ast
import re
import sys

text = open(sys.argv[1], encoding="utf-8").read()
try:
    import tomllib
except ImportError:
    tomllib = None
if tomllib is not None:
    project = tomllib.loads(text)["project"]
    deps, cpu = project["dependencies"], project["optional-dependencies"]["cpu"]
else:
    def array(name, table):
        body = text.split(table, 1)[1]
        # one line, or up to the "]" that starts a line ("redis[hiredis]" has its own)
        found = re.search(r"(?ms)^" + re.escape(name) + r"\s*=\s*(\[[^\n]*\]$|\[.*?^\])",
                          body)
        lines = [ln.split("#", 1)[0] for ln in found.group(1).splitlines()]
        return ast.literal_eval("\n".join(lines))
    deps = array("dependencies", "[project]")
    cpu = array("cpu", "[project.optional-dependencies]")
print("\n".join(deps + cpu))
EOF
}

# The first Debian archive in apt's sources that serves $SUITE's main component:
# one-line entries (sources.list, sources.list.d/*.list: "deb [opts] URI SUITE COMP...")
# and deb822 stanzas (sources.list.d/*.sources: Types/URIs/Suites/Components), in
# apt's order. Exit 1 with one line when there is none (DEBIAN_MIRROR then names it).
debian_mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
    "$PYTHON" - "$APT_DIR" "$SUITE" <<'PY'
import glob
import os
import re
import sys

apt, suite = sys.argv[1], sys.argv[2]


def entries(path):
    """(types, uris, suites, components) of each source in one file."""
    text = open(path, encoding="utf-8", errors="replace").read()
    if path.endswith(".sources"):
        for stanza in re.split(r"\n\s*\n", text):
            fields, key = {}, None
            for line in stanza.splitlines():
                if line.startswith("#") or not line.strip():
                    continue
                if line[0] in " \t" and key:
                    fields[key] += " " + line.strip()
                    continue
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
            if fields.get("enabled", "yes").lower() == "no":
                continue
            yield (fields.get("types", "").split(), fields.get("uris", "").split(),
                   fields.get("suites", "").split(), fields.get("components", "").split())
        return
    for line in text.splitlines():
        words = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
        if len(words) >= 4:
            yield [words[0]], [words[1]], [words[2]], words[3:]


files = [os.path.join(apt, "sources.list")] + sorted(
    glob.glob(os.path.join(apt, "sources.list.d", "*.list"))
    + glob.glob(os.path.join(apt, "sources.list.d", "*.sources")))
for path in files:
    if not os.path.isfile(path):
        continue
    for types, uris, suites, components in entries(path):
        if "deb" in types and suite in suites and "main" in components and uris:
            print(uris[0].rstrip("/"))
            sys.exit(0)
print(f"no Debian mirror for {suite} main in apt's sources ({apt}/sources.list,"
      f" {apt}/sources.list.d/*.list, *.sources): set DEBIAN_MIRROR", file=sys.stderr)
sys.exit(1)
PY
}

engine_ok() { timeout 10 docker info >/dev/null 2>&1; }

ensure_engine() {
    if command -v docker >/dev/null 2>&1 && engine_ok; then
        log "using the running Docker engine"
        return
    fi
    if ! is_root; then
        unavailable "no running Docker engine, and not root to start one"
    fi
    if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1 \
        || ! command -v debootstrap >/dev/null 2>&1; then
        command -v apt-get >/dev/null 2>&1 || unavailable "no dockerd and no apt-get to install it"
        log "installing docker.io, containerd, runc, iptables, debootstrap (apt)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null \
            || unavailable "apt-get update failed"
        apt-get install -y -q --no-install-recommends \
            docker.io containerd runc iptables debootstrap >/dev/null \
            || unavailable "apt-get install docker.io failed"
    fi
    if engine_ok; then log "the installed engine is already running"; return; fi
    log "starting dockerd"
    setsid /usr/sbin/dockerd -H unix:///var/run/docker.sock >"$STATE/dockerd.log" 2>&1 &
    echo $! >"$STATE/dockerd.pid"
    for _ in $(seq 1 60); do
        engine_ok && { log "dockerd $(cat "$STATE/dockerd.pid") ready"; return; }
        kill -0 "$(cat "$STATE/dockerd.pid")" 2>/dev/null || break
        sleep 0.5
    done
    tail -n 20 "$STATE/dockerd.log" >&2 || true
    rm -f "$STATE/dockerd.pid"
    unavailable "dockerd did not start (see $STATE/dockerd.log)"
}

# The Debian rootfs, with python3 (the Python base) and then redis-server (the Redis image).
ensure_rootfs_tarballs() {
    local py_tar="$CACHE/rootfs-python.tar" redis_tar="$CACHE/rootfs-redis.tar"
    [ -s "$py_tar" ] && [ -s "$redis_tar" ] && return
    command -v debootstrap >/dev/null 2>&1 || unavailable "debootstrap is missing"
    local rootfs="$CACHE/rootfs.tmp" mirror
    mirror="$(debian_mirror)" || exit 1
    rm -rf "$rootfs"
    log "debootstrap $SUITE from $mirror (minbase + python3, python3-venv)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$rootfs" "$mirror" >"$STATE/debootstrap.log" 2>&1 \
        || { tail -n 20 "$STATE/debootstrap.log" >&2; exit 1; }
    chroot "$rootfs" apt-get clean
    tar -C "$rootfs" -cf "$py_tar.tmp" . && mv "$py_tar.tmp" "$py_tar"
    log "adding redis-server to the rootfs"
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod +x "$rootfs/usr/sbin/policy-rc.d"
    cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
    chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends redis-server >>"$STATE/debootstrap.log" 2>&1 \
        || { tail -n 20 "$STATE/debootstrap.log" >&2; exit 1; }
    chroot "$rootfs" apt-get clean
    rm -f "$rootfs/usr/sbin/policy-rc.d"
    mkdir -p "$rootfs/data"
    chroot "$rootfs" chown redis:redis /data
    tar -C "$rootfs" -cf "$redis_tar.tmp" . && mv "$redis_tar.tmp" "$redis_tar"
    rm -rf "$rootfs"
}

ensure_base_images() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 \
        && docker image inspect "$REDIS_IMAGE" >/dev/null 2>&1; then
        log "base images present: $BASE_IMAGE, $REDIS_IMAGE"
        return
    fi
    if [ ! -s "$CACHE/rootfs-python.tar" ] || [ ! -s "$CACHE/rootfs-redis.tar" ]; then
        is_root || unavailable "no base images, and not root to debootstrap them"
    fi
    ensure_rootfs_tarballs
    log "importing $BASE_IMAGE (Debian $SUITE python3) and $REDIS_IMAGE"
    docker import -c 'CMD ["python3"]' -c 'ENV LANG=C.UTF-8' \
        "$CACHE/rootfs-python.tar" "$BASE_IMAGE" >/dev/null
    docker import -c 'USER redis' -c 'WORKDIR /data' -c 'EXPOSE 6379' \
        -c 'CMD ["redis-server", "--protected-mode", "no"]' \
        "$CACHE/rootfs-redis.tar" "$REDIS_IMAGE" >/dev/null
}

dumb_init_version() { sed -n 's/^ARG DUMB_INIT_VERSION=//p' "$ROOT/Dockerfile" | head -n1; }

# Wheels for the image's Python (CPython 3.11 on glibc x86_64), whatever the host's Python.
ensure_wheelhouse() {
    local wh="$CACHE/wheelhouse" key
    key="$( (cat "$ROOT/pyproject.toml"; dumb_init_version) | sha256sum | cut -c1-16)"
    if [ -f "$wh/.complete-$key" ]; then
        log "wheelhouse cached ($(find "$wh" -name '*.whl' | wc -l) wheels)"
        return
    fi
    rm -rf "$wh" && mkdir -p "$wh"
    log "downloading the wheelhouse (tunecluster[cpu] for linux / CPython 3.11)"
    local reqs
    reqs="$(requirements)"
    # Every manylinux tag glibc 2.36 (bookworm) accepts: older pips do not expand them.
    local target=(--only-binary=:all: --python-version 3.11 --implementation cp
                  --platform manylinux1_x86_64 --platform manylinux2010_x86_64
                  --platform manylinux2014_x86_64) minor
    for minor in $(seq 5 36); do target+=(--platform "manylinux_2_${minor}_x86_64"); done
    printf '%s\n' "$reqs" >"$wh/requirements.txt"
    "$PYTHON" -m pip download -q -d "$wh" "${target[@]}" -r "$wh/requirements.txt" \
        'setuptools>=77' wheel >"$STATE/pip-download.log" 2>&1 \
        || { grep -v '^WARNING' "$STATE/pip-download.log" | tail -n 20 >&2; exit 1; }
    # Debian's python3 is 3.11.2: redis then needs async-timeout (python_full_version <
    # 3.11.3), which the marker evaluation above does not see.
    "$PYTHON" -m pip download -q -d "$wh" "${target[@]}" --no-deps 'async-timeout>=4.0.3' \
        >>"$STATE/pip-download.log" 2>&1 \
        || { grep -v '^WARNING' "$STATE/pip-download.log" | tail -n 20 >&2; exit 1; }
    # The image's init process (the Dockerfile's ARG DUMB_INIT_VERSION): a wheel, no apt.
    "$PYTHON" -m pip download -q -d "$wh" "${target[@]}" --no-deps "dumb-init==$(dumb_init_version)" \
        >>"$STATE/pip-download.log" 2>&1 \
        || { grep -v '^WARNING' "$STATE/pip-download.log" | tail -n 20 >&2; exit 1; }
    touch "$wh/.complete-$key"
    log "wheelhouse ready ($(find "$wh" -name '*.whl' | wc -l) wheels, $(du -sh "$wh" | cut -f1))"
}

# The build context: the files the Dockerfile copies, and the wheelhouse (hard links).
build_image() {
    local ctx="$CACHE/context"
    rm -rf "$ctx" && mkdir -p "$ctx"
    cp "$ROOT/Dockerfile" "$ROOT/.dockerignore" "$ROOT/pyproject.toml" "$ROOT/README.md" "$ctx/"
    (cd "$ROOT" && tar --exclude=__pycache__ --exclude='*.egg-info' -cf - src) | tar -C "$ctx" -xf -
    cp -al "$CACHE/wheelhouse" "$ctx/wheelhouse" 2>/dev/null || cp -a "$CACHE/wheelhouse" "$ctx/wheelhouse"
    log "building $IMAGE (--network none, from the wheelhouse)"
    local t0=$SECONDS
    docker build --network none --build-arg WHEELHOUSE=1 -t "$IMAGE" "$ctx" \
        >"$STATE/build.log" 2>&1 || { tail -n 40 "$STATE/build.log" >&2; exit 1; }
    log "built $IMAGE in $((SECONDS - t0)) s"
}

cmd_prepare() {
    ensure_cache
    ensure_engine
    ensure_base_images
    ensure_wheelhouse
}

cmd_up() {
    cmd_prepare
    build_image
    echo "IMAGE=$IMAGE"
    echo "REDIS_IMAGE=$REDIS_IMAGE"
    echo "BASE_IMAGE=$BASE_IMAGE"
    echo "DOCKERD_STARTED=$([ -f "$STATE/dockerd.pid" ] && cat "$STATE/dockerd.pid" || echo "")"
}

cmd_down() {
    local pidfile="$STATE/dockerd.pid"
    [ -f "$pidfile" ] || { log "no dockerd started by this script"; return; }
    local pid
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        log "stopping dockerd $pid"
        kill -TERM "$pid"
        for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$pidfile"
}

# The user's route: the image tagged with the project's version (as `docker compose
# build` tags it), and .env (made from .env.example when missing) pointing at it and at
# the Redis image; no other line of .env changes. Then `docker compose up -d --wait`
# (without --build). The dockerd this started keeps running: `down` stops it.
cmd_images() {
    local version
    version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -n1)"
    IMAGE="tunecluster:$version"
    cmd_prepare
    build_image
    cd "$ROOT"
    [ -e .env ] || cp .env.example .env
    local kv key
    for kv in "TUNECLUSTER_IMAGE=$IMAGE" "REDIS_IMAGE=$REDIS_IMAGE"; do
        key="${kv%%=*}"
        if grep -q "^$key=" .env; then sed -i "s|^$key=.*|$kv|" .env; else echo "$kv" >> .env; fi
    done
    log "images ready: $IMAGE and $REDIS_IMAGE (.env: TUNECLUSTER_IMAGE, REDIS_IMAGE)"
    log "next: set TUNECLUSTER_REDIS_PASSWORD in .env if empty, then docker compose up -d --wait"
}

case "${1:-up}" in
    up) cmd_up ;;
    images) cmd_images ;;
    prepare) cmd_prepare ;;
    down) cmd_down ;;
    requirements) requirements ;;
    mirror) debian_mirror ;;
    *) echo "usage: $0 images|up|prepare|down|requirements|mirror" >&2; exit 2 ;;
esac
