"""Static checks of the deployment for gang trials (issue 14: one trial on N workers).

A gang member's trial process listens on a port of TUNECLUSTER_GANG_PORTS at the
address its worker advertises (TUNECLUSTER_ADVERTISE_HOST); the other members connect
there. Asserted on what an operator really gets, as in tests/unit/test_deploy.py (whose
rendering helpers this module reuses): `kubectl kustomize` of every overlay and
`docker compose config`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.unit.test_deploy import (
    K8S_VERSION,
    OVERLAYS,
    ROOT,
    TEST_PASSWORD,
    clean_env,
    compose,
    compose_config,
    env_of,
    get,
    k8s_copy,
    kustomize,
    manifests,
    pod_specs,
    run,
    tool,
)

SERVICE = "tunecluster-workers"
GANG_PORTS = "29500-29599"
LOW, HIGH = (int(p) for p in GANG_PORTS.split("-"))


def worker_template(overlay: str) -> dict[str, Any]:
    return get(overlay, "Deployment", "tunecluster-worker")["spec"]["template"]


def matches(selector: dict[str, str], template: dict[str, Any]) -> bool:
    return selector.items() <= template["metadata"].get("labels", {}).items()


def policies(overlay: str) -> dict[str, dict[str, Any]]:
    return {name: doc["spec"] for (kind, name), doc in manifests(overlay).items()
            if kind == "NetworkPolicy"}


def worker_gang(overlay: str) -> dict[str, Any]:
    return policies(overlay)["worker-gang"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_headless_service_selects_exactly_the_worker_pods(overlay: str) -> None:
    service = get(overlay, "Service", SERVICE)["spec"]
    assert service["clusterIP"] == "None"
    selector = service["selector"]
    for name, template in pod_specs(overlay).items():
        assert matches(selector, template) == (name == "tunecluster-worker"), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_pods_advertise_their_pod_ip_and_declare_the_gang_ports(overlay: str) -> None:
    spec = worker_template(overlay)["spec"]
    assert spec["subdomain"] == SERVICE
    # One hostname for every replica of a Deployment would give them all one DNS name.
    assert "hostname" not in spec
    (container,) = spec["containers"]
    env = env_of(container)
    assert env["TUNECLUSTER_ADVERTISE_HOST"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "status.podIP"}}
    assert env["TUNECLUSTER_GANG_PORTS"]["value"] == GANG_PORTS
    # Only the workers join gangs.
    chief = get(overlay, "Deployment", "tunecluster-chief")["spec"]["template"]["spec"]
    assert "TUNECLUSTER_GANG_PORTS" not in json.dumps(chief)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_networkpolicy_admits_workers_to_workers_on_the_gang_ports_only(overlay: str) -> None:
    found = policies(overlay)
    # The roles' egress policies (test_deploy.py checks them), the overlays' additions.
    expected = ({"redis-clients", "worker-gang", "tunecluster-chief", "tunecluster-dashboard",
                 "tunecluster-worker"}
                | ({"ray-clients", "chief-to-ray"} if overlay == "ray" else set())
                | ({"s3-endpoint"} if overlay == "overlays/s3" else set()))
    assert set(found) == expected, "no other NetworkPolicy appears or goes"
    templates = pod_specs(overlay)
    worker = worker_template(overlay)
    # The policies that restrict what reaches the worker pods: this one alone.
    selecting = [n for n, p in found.items() if matches(p["podSelector"]["matchLabels"], worker)
                 and "Ingress" in p["policyTypes"]]
    assert selecting == ["worker-gang"]
    policy = found["worker-gang"]
    assert policy["policyTypes"] == ["Ingress"]
    assert matches(policy["podSelector"]["matchLabels"], worker)
    assert not [n for n, t in templates.items() if n != "tunecluster-worker"
                and matches(policy["podSelector"]["matchLabels"], t)]
    (rule,) = policy["ingress"]
    (source,) = rule["from"]
    assert set(source) == {"podSelector"}, "no namespace- or IP-wide sources"
    for name, template in templates.items():
        admitted = matches(source["podSelector"]["matchLabels"], template)
        assert admitted == (name == "tunecluster-worker"), name
    assert rule["ports"] == [{"protocol": "TCP", "port": LOW, "endPort": HIGH}]
    # Nothing else reaches a worker pod now: its probes are exec probes, not network.
    (container,) = worker["spec"]["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert set(container[probe]) - {"periodSeconds", "timeoutSeconds",
                                        "failureThreshold"} == {"exec"}, probe


def test_compose_workers_declare_the_gang_ports_and_publish_nothing() -> None:
    services = compose_config()["services"]
    for name in ("worker", "worker-gpu"):
        svc = services[name]
        assert svc["environment"]["TUNECLUSTER_GANG_PORTS"] == GANG_PORTS, name
        # The default advertise host (the address that reaches Redis) is the container's
        # address on the project network, which every other container reaches.
        assert "TUNECLUSTER_ADVERTISE_HOST" not in svc["environment"], name
        assert not svc.get("ports"), f"{name}: gang ports stay on the project network"
        assert len(svc["networks"]) == 1 and "default" in svc["networks"], name
    assert "TUNECLUSTER_GANG_PORTS" not in services["chief"]["environment"]


def test_compose_gang_ports_come_from_the_env_file() -> None:
    env = clean_env(TUNECLUSTER_REDIS_PASSWORD=TEST_PASSWORD,
                    TUNECLUSTER_GANG_PORTS="31000-31009")
    result = compose("config", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    for name in ("worker", "worker-gpu"):
        assert services[name]["environment"]["TUNECLUSTER_GANG_PORTS"] == "31000-31009"
    values = dict(ln.split("=", 1) for ln in (ROOT / ".env.example").read_text().splitlines()
                  if ln and not ln.startswith("#"))
    assert values["TUNECLUSTER_GANG_PORTS"] == GANG_PORTS


def test_deploy_docs_explain_gang_trials() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    assert "## Trials across several workers (gang scheduling)" in text
    section = text.split("## Trials across several workers (gang scheduling)", 1)[1]
    section = section.split("\n## ", 1)[0]
    for needed in ("workers_per_trial", "TUNECLUSTER_ADVERTISE_HOST", "--advertise-host",
                   "TUNECLUSTER_GANG_PORTS", "--gang-ports", GANG_PORTS, "status.podIP",
                   SERVICE, "worker-gang", "spec.hostname", "tunecluster status",
                   "checkpoint", "NCCL"):
        assert needed in section, needed


def test_docs_nccl_patch_widens_the_ports_between_workers_only(tmp_path: Path) -> None:
    """docs/deploy.md's patch for NCCL (ports it picks itself), in an overlay of the GPU
    overlay: every TCP port, still from worker pods alone; the result validates."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    (doc,) = [b for b in (yaml.safe_load(s) for s in
                          re.findall(r"(?ms)^```yaml\n(.*?)^```", text))
              if "worker-gang" in json.dumps(b)]
    tree = tmp_path / "k8s"
    shutil.copytree(k8s_copy(), tree)
    overlay = tree / "overlays" / "gpu-nccl"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(
        {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
         "resources": ["../gpu"], **doc}))
    result = kustomize(overlay)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    (policy,) = [d["spec"] for d in docs if d["kind"] == "NetworkPolicy"
                 and d["metadata"]["name"] == "worker-gang"]
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"protocol": "TCP"}]
    assert rule["from"] == worker_gang("overlays/gpu")["ingress"][0]["from"]
    valid = run(tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, "-",
                stdin=result.stdout)
    assert valid.returncode == 0, valid.stdout + valid.stderr
