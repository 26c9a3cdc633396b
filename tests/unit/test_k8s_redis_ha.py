"""Static checks of the Kubernetes Redis high-availability component (issue 28, point 3).

k8s/components/redis-ha adds to an overlay what compose.ha.yaml adds to the compose
stack: a replica of the base's Redis, three sentinels (quorum 2) and a redis+sentinel://
URL for every role. Asserted, as in tests/unit/test_deploy.py (whose rendering helpers
this module reuses), on what an operator gets: `kubectl kustomize` of the overlays from a
copy of k8s/ with test secrets, the dashboard switched on, and the component's line
uncommented as docs/deploy.md says; validated by the same schema tool. No API server.
"""

from __future__ import annotations

import atexit
import base64
import re
import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.unit.test_deploy import (
    ROOT,
    TEST_PASSWORD,
    assert_valid_manifests,
    enable_component,
    env_of,
    k8s_copy,
    kustomize,
    quantity,
    redis_bytes,
    rendered,
)

from tunecluster.security import check_redis_url
from tunecluster.store.sentinel import DEFAULT_PORT, parse

COMPONENT = ROOT / "k8s" / "components" / "redis-ha"
# The line each overlay carries commented out (the docs' sed uncomments it).
HA_LINE = "  # - ../../components/redis-ha\n"
DASHBOARD_LINE = "  # - ../../components/dashboard\n"
HA_OVERLAYS = ["overlays/cpu", "overlays/gpu"]
# k8s/ray takes the component from overlays/cpu.
RENDERED = [*HA_OVERLAYS, "ray"]
ROLES = ["chief", "worker", "dashboard"]


def enable_redis_ha(tree: Path) -> None:
    enable_component(tree, HA_OVERLAYS, HA_LINE)


@cache
def ha_tree() -> Path:
    """test_deploy's copy of k8s/ (test secrets, dashboard on), with the component on."""
    top = Path(tempfile.mkdtemp(prefix="tc-k8s-ha-"))
    atexit.register(shutil.rmtree, top, True)
    tree = top / "k8s"
    shutil.copytree(k8s_copy(), tree)
    enable_redis_ha(tree)
    return tree


@cache
def ha_rendered(overlay: str) -> str:
    result = kustomize(ha_tree() / overlay)
    assert result.returncode == 0, result.stderr
    return result.stdout


def ha_docs(overlay: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(ha_rendered(overlay)) if d]


def ha_get(overlay: str, kind: str, name: str) -> dict[str, Any]:
    for doc in ha_docs(overlay):
        full = doc["metadata"]["name"]
        if doc["kind"] == kind and (
                full == name or re.fullmatch(re.escape(name) + r"-[a-z0-9]{10}", full)):
            return doc
    raise AssertionError(f"{kind}/{name} not in {overlay} with redis-ha")


def template(overlay: str, kind: str, name: str) -> dict[str, Any]:
    return ha_get(overlay, kind, name)["spec"]["template"]


def role_template(overlay: str, role: str) -> dict[str, Any]:
    return template(overlay, "Deployment", f"tunecluster-{role}")


def expand(value: str, env: list[dict[str, Any]], upto: str) -> str:
    """``value`` as Kubernetes expands it for the variable ``upto``: $(NAME) only for the
    variables listed before it (a Secret's value: the test password)."""
    known: dict[str, str] = {}
    for entry in env:
        if entry["name"] == upto:
            break
        if "secretKeyRef" in entry.get("valueFrom", {}):
            known[entry["name"]] = TEST_PASSWORD
        elif "value" in entry:
            known[entry["name"]] = entry["value"]
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: known.get(m[1], m[0]), value)


def init_script() -> str:
    (init,) = template("overlays/cpu", "StatefulSet", "redis-sentinel")["spec"][
        "initContainers"]
    assert init["command"][:2] == ["sh", "-ec"], init["command"]
    return init["command"][2]


def monitored_service() -> str:
    (name,) = re.findall(r"(?m)^service=(\S+)$", init_script())
    return name


def sentinel_hosts(overlay: str) -> list[str]:
    """The DNS names of the sentinel pods: <pod>.<governing headless Service>."""
    sts = ha_get(overlay, "StatefulSet", "redis-sentinel")
    service = ha_get(overlay, "Service", sts["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= \
        sts["spec"]["template"]["metadata"]["labels"].items()
    name = sts["metadata"]["name"]
    return [f"{name}-{i}.{service['metadata']['name']}" for i in range(sts["spec"]["replicas"])]


# --- rendering ---------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", RENDERED)
def test_overlay_with_redis_ha_renders_and_validates_against_kubernetes_schemas(
        overlay: str) -> None:
    assert_valid_manifests(ha_rendered(overlay))
    kinds = {(d["kind"], d["metadata"]["name"]) for d in ha_docs(overlay)}
    for wanted in [("StatefulSet", "redis"), ("StatefulSet", "redis-replica"),
                   ("StatefulSet", "redis-sentinel"), ("Service", "redis-sentinel"),
                   ("Service", "redis-replica-headless"),
                   ("PodDisruptionBudget", "redis-sentinel"),
                   ("NetworkPolicy", "redis-sentinel")]:
        assert wanted in kinds, wanted
    for doc in ha_docs(overlay):
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "tunecluster", doc["metadata"]


# --- the roles' URL ------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", RENDERED)
@pytest.mark.parametrize("role", ROLES)
def test_every_role_reaches_redis_through_the_three_sentinels(overlay: str, role: str) -> None:
    (c,) = role_template(overlay, role)["spec"]["containers"]
    env = c["env"]
    names = [e["name"] for e in env]
    url = env_of(c)["TUNECLUSTER_REDIS_URL"]["value"]
    # The base's interpolation: the password by reference, defined before the URL.
    assert url.startswith("redis+sentinel://:$(REDIS_PASSWORD)@"), url
    assert names.index("REDIS_PASSWORD") < names.index("TUNECLUSTER_REDIS_URL")
    assert env_of(c)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "password"
    parsed = parse(expand(url, env, "TUNECLUSTER_REDIS_URL"))
    assert parsed.password == TEST_PASSWORD and parsed.username is None
    assert parsed.sentinels == tuple((h, DEFAULT_PORT) for h in sentinel_hosts(overlay))
    assert len(parsed.sentinels) == 3
    assert parsed.service == monitored_service() and parsed.db == 0
    # What the role checks at start (TUNECLUSTER_REQUIRE_PASSWORD=1) lets it through.
    check_redis_url(expand(url, env, "TUNECLUSTER_REDIS_URL"), role, require=True)


def test_the_ray_head_keeps_a_plain_redis_url() -> None:
    """scheduler: ray needs a redis:// URL (docs/reliability.md): the component leaves the
    RayCluster alone, as its comment says."""
    (ray,) = [d for d in ha_docs("ray") if d["kind"] == "RayCluster"]
    (head,) = ray["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert env_of(head)["TUNECLUSTER_REDIS_URL"]["value"].startswith("redis://")
    assert "scheduler: ray" in (COMPONENT / "kustomization.yaml").read_text()


# --- the sentinels and the replica -----------------------------------------------------------


def test_sentinels_quorum_names_and_timeouts() -> None:
    sts = ha_get("overlays/cpu", "StatefulSet", "redis-sentinel")
    assert sts["spec"]["replicas"] == 3
    script = init_script()
    service = monitored_service()
    # Quorum 2 of 3; timeouts stated; host names, since pod IPs change.
    assert '"sentinel monitor $service $primary 6379 2"' in script
    for line in ("sentinel resolve-hostnames yes", "sentinel announce-hostnames yes"):
        assert f"'{line}'" in script, line
    assert re.search(r"sentinel down-after-milliseconds \$service \d+", script)
    assert re.search(r"sentinel failover-timeout \$service \d+", script)
    assert '"sentinel announce-ip $self"' in script
    # The first primary is the base's pod, by the name it announces itself as a replica.
    (primary,) = re.findall(r"(?m)^primary=(\S+)$", script)
    redis = ha_get("overlays/cpu", "StatefulSet", "redis")
    assert primary == f"redis-0.{redis['spec']['serviceName']}"
    assert service == "tunecluster"
    # The sentinels' own names: the headless Service and the peers the script asks.
    hosts = sentinel_hosts("overlays/cpu")
    assert re.search(r'peer="redis-sentinel-\$i\.redis-sentinel"', script)
    assert 'self="$(hostname).redis-sentinel"' in script
    assert [f"redis-sentinel-{i}.redis-sentinel" for i in range(3)] == hosts
    svc = ha_get("overlays/cpu", "Service", "redis-sentinel")
    assert svc["spec"]["ports"][0]["port"] == DEFAULT_PORT
    # The disruption budget keeps the quorum.
    pdb = ha_get("overlays/cpu", "PodDisruptionBudget", "redis-sentinel")["spec"]
    assert pdb["minAvailable"] == 2
    assert pdb["selector"]["matchLabels"].items() <= \
        sts["spec"]["template"]["metadata"]["labels"].items()


def announced(container: dict[str, Any]) -> str:
    args = container["args"]
    value = args[args.index("--replica-announce-ip") + 1]
    pod = env_of(container)["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert pod == "metadata.name"
    return value


def test_replica_replicates_the_primary_and_both_announce_their_dns_names() -> None:
    redis = ha_get("overlays/cpu", "StatefulSet", "redis")
    replica = ha_get("overlays/cpu", "StatefulSet", "redis-replica")
    (primary_c,) = redis["spec"]["template"]["spec"]["containers"]
    (replica_c,) = replica["spec"]["template"]["spec"]["containers"]
    for sts, c in ((redis, primary_c), (replica, replica_c)):
        args = c["args"]
        assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
        assert args[args.index("--masterauth") + 1] == "$(REDIS_PASSWORD)"
        assert announced(c) == f"$(POD_NAME).{sts['spec']['serviceName']}"
        governing = ha_get("overlays/cpu", "Service", sts["spec"]["serviceName"])
        assert governing["spec"]["clusterIP"] == "None"
    args = replica_c["args"]
    assert args[args.index("--replicaof") + 1:args.index("--replicaof") + 3] == [
        f"redis-0.{redis['spec']['serviceName']}", "6379"]
    assert "--replicaof" not in primary_c["args"]
    # Persistent, bounded and probed like the primary (k8s/base/redis.yaml).
    for flag in ("--appendonly", "--appendfsync", "--maxmemory", "--maxmemory-policy",
                 "--dir"):
        assert args[args.index(flag) + 1] == primary_c["args"][
            primary_c["args"].index(flag) + 1], flag
    assert replica_c["resources"] == primary_c["resources"]
    maxmemory = redis_bytes(args[args.index("--maxmemory") + 1])
    assert maxmemory <= 0.6 * quantity(replica_c["resources"]["limits"]["memory"])
    assert replica["spec"]["volumeClaimTemplates"] == redis["spec"]["volumeClaimTemplates"]
    assert {"name": "data", "mountPath": "/data"} in replica_c["volumeMounts"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert replica_c[probe] == primary_c[probe], probe
    # Not the base Service's pod, nor the base StatefulSet's: clients of "redis" and the
    # primary's controller never see the replica.
    labels = replica["spec"]["template"]["metadata"]["labels"]
    assert not ha_get("overlays/cpu", "Service", "redis")["spec"]["selector"].items() \
        <= labels.items()
    assert not redis["spec"]["selector"]["matchLabels"].items() <= labels.items()


def pod_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod["spec"].get("initContainers", []) + pod["spec"]["containers"]


@pytest.mark.parametrize("name", ["redis-replica", "redis-sentinel"])
def test_replica_and_sentinels_are_hardened_like_the_base_redis(name: str) -> None:
    base = template("overlays/cpu", "StatefulSet", "redis")
    (base_c,) = base["spec"]["containers"]
    pod = template("overlays/cpu", "StatefulSet", name)
    spec = pod["spec"]
    assert spec["securityContext"] == base["spec"]["securityContext"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    text = (COMPONENT / ("replica.yaml" if name == "redis-replica" else "sentinel.yaml")
            ).read_text()
    for c in pod_containers(pod):
        where = f"{name}/{c['name']}"
        assert c["image"] == base_c["image"], where
        assert c["securityContext"] == base_c["securityContext"], where
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, where
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], where
        limits, requests = c["resources"]["limits"], c["resources"]["requests"]
        assert quantity(limits["memory"]) >= quantity(requests["memory"]) > 0, where
        if "cpu" in limits:
            assert quantity(limits["cpu"]) >= quantity(requests["cpu"]), where
        else:
            assert "No CPU limit, on purpose" in text, where
            assert 'docs/deploy.md, "CPU limits"' in text, where
        # Written only where a volume is mounted (the root filesystem is read-only).
        assert [m["mountPath"] for m in c["volumeMounts"]] == ["/data"], where
    for c in spec["containers"]:
        assert c["readinessProbe"] and c["livenessProbe"], f"{name}/{c['name']}"


# --- the password -----------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", RENDERED)
def test_no_password_literal_renders(overlay: str) -> None:
    text = ha_rendered(overlay)
    assert TEST_PASSWORD not in text
    encoded = base64.b64encode(TEST_PASSWORD.encode()).decode()
    holders = [d for d in ha_docs(overlay) if encoded in yaml.safe_dump(d)]
    assert [(d["kind"], d["metadata"]["name"].rsplit("-", 1)[0]) for d in holders] == [
        ("Secret", "tunecluster-redis")]
    for kind in ("StatefulSet", "Deployment"):
        for doc in ha_docs(overlay):
            if doc["kind"] != kind:
                continue
            for c in pod_containers(doc["spec"]["template"]):
                for entry in c.get("env", []):
                    if "PASSWORD" in entry["name"] or entry["name"] == "REDISCLI_AUTH":
                        assert "secretKeyRef" in entry.get("valueFrom", {}), entry


def test_the_sentinel_password_goes_through_env_and_a_file_never_a_command_line() -> None:
    pod = template("overlays/cpu", "StatefulSet", "redis-sentinel")["spec"]
    (init,) = pod["initContainers"]
    (sentinel,) = pod["containers"]
    # The init step has it from the Secret and writes it into the config file (umask 077).
    assert env_of(init)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "password"
    script = init_script()
    assert '"sentinel auth-pass $service $REDIS_PASSWORD"' in script
    assert "umask 077" in script and "> /data/sentinel.conf" in script
    assert "$(REDIS_PASSWORD)" not in " ".join(init["command"])
    # The sentinel reads that file; it has no password of its own, in env or arguments.
    assert sentinel["args"] == ["redis-server", "/data/sentinel.conf", "--sentinel"]
    assert "env" not in sentinel and "envFrom" not in sentinel
    (volume,) = [v for v in pod["volumes"] if v["name"] == "data"]
    assert "emptyDir" in volume


# --- network policies ----------------------------------------------------------------------


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", expr
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def port_ok(rule: dict[str, Any], port: int) -> bool:
    return any(p.get("protocol", "TCP") == "TCP" and p["port"] <= port <= p.get(
        "endPort", p["port"]) for p in rule.get("ports", []))


def peer_ok(rule: dict[str, Any], side: str, labels: dict[str, str]) -> bool:
    """Whether a rule's from/to admits a pod of this namespace with ``labels``."""
    return any(set(peer) == {"podSelector"} and selects(peer["podSelector"], labels)
               for peer in rule.get(side, []))


def allowed(overlay: str, src: dict[str, str], dst: dict[str, str], port: int) -> bool:
    """Whether the overlay's NetworkPolicies let a pod labelled ``src`` open TCP ``port``
    on a pod labelled ``dst`` (both in the namespace): egress of the one, ingress of the
    other; a pod no policy of that type selects is not restricted that way."""
    policies = [d["spec"] for d in ha_docs(overlay) if d["kind"] == "NetworkPolicy"]
    egress = [p for p in policies if "Egress" in p["policyTypes"]
              and selects(p["podSelector"], src)]
    ingress = [p for p in policies if "Ingress" in p["policyTypes"]
               and selects(p["podSelector"], dst)]
    out = not egress or any(peer_ok(r, "to", dst) and port_ok(r, port)
                            for p in egress for r in p.get("egress", []))
    into = not ingress or any(peer_ok(r, "from", src) and port_ok(r, port)
                              for p in ingress for r in p.get("ingress", []))
    return out and into


def labels_of(overlay: str, kind: str, name: str) -> dict[str, str]:
    return template(overlay, kind, name)["metadata"]["labels"]


@pytest.mark.parametrize("overlay", RENDERED)
def test_networkpolicies_admit_the_roles_to_the_sentinels_and_the_replica(
        overlay: str) -> None:
    primary = labels_of(overlay, "StatefulSet", "redis")
    replica = labels_of(overlay, "StatefulSet", "redis-replica")
    sentinel = labels_of(overlay, "StatefulSet", "redis-sentinel")
    for role in ROLES:
        pod = labels_of(overlay, "Deployment", f"tunecluster-{role}")
        assert allowed(overlay, pod, sentinel, 26379), role
        assert allowed(overlay, pod, replica, 6379), role
        assert allowed(overlay, pod, primary, 6379), role
        assert not allowed(overlay, pod, sentinel, 6379), role
    # The sentinels watch both Redis pods and talk to each other; replication runs
    # between the two Redis pods, either way.
    for server in (primary, replica):
        assert allowed(overlay, sentinel, server, 6379)
    assert allowed(overlay, sentinel, sentinel, 26379)
    assert allowed(overlay, replica, primary, 6379)
    assert allowed(overlay, primary, replica, 6379)
    # A pod of the release without the Redis-client label gets nowhere.
    stranger = {"app.kubernetes.io/part-of": "tunecluster", "app.kubernetes.io/name": "x"}
    for target, port in ((sentinel, 26379), (replica, 6379), (primary, 6379)):
        assert not allowed(overlay, stranger, target, port)
    # The sentinels reach DNS (resolve-hostnames) and nothing outside the namespace else.
    (policy,) = [d["spec"] for d in ha_docs(overlay) if d["kind"] == "NetworkPolicy"
                 and d["metadata"]["name"] == "redis-sentinel"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    outside = [peer for r in policy["egress"] for peer in r["to"]
               if set(peer) != {"podSelector"}]
    assert outside == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}], outside


# --- without the component -----------------------------------------------------------------


@pytest.mark.parametrize("overlay", HA_OVERLAYS)
def test_overlays_without_the_component_render_as_if_the_line_were_not_there(
        overlay: str, tmp_path: Path) -> None:
    text = (ROOT / "k8s" / overlay / "kustomization.yaml").read_text()
    assert text.count(HA_LINE) == 1
    # After the dashboard's line: it patches the dashboard only if that came first.
    assert text.index(DASHBOARD_LINE) < text.index(HA_LINE)
    tree = tmp_path / "k8s"
    shutil.copytree(k8s_copy(), tree)
    kustomization = tree / overlay / "kustomization.yaml"
    lines = kustomization.read_text().splitlines(keepends=True)
    at = lines.index(HA_LINE)
    assert lines[at - 1].lstrip().startswith("#")  # its one-line comment
    kustomization.write_text("".join(lines[:at - 1] + lines[at + 1:]))
    result = kustomize(tree / overlay)
    assert result.returncode == 0, result.stderr
    assert result.stdout == rendered(overlay)
    assert "sentinel" not in rendered(overlay)
    docs = [d for d in yaml.safe_load_all(rendered(overlay)) if d]
    for role in ROLES:
        (dep,) = [d for d in docs if d["kind"] == "Deployment"
                  and d["metadata"]["name"] == f"tunecluster-{role}"]
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        assert env_of(c)["TUNECLUSTER_REDIS_URL"]["value"] == \
            "redis://:$(REDIS_PASSWORD)@redis:6379/0", role


def test_deploy_docs_say_how_to_enable_it_and_its_limits() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    at = text.index("### Redis high availability (Kubernetes)")
    section = text[at:text.index("\n### ", at + 1)]
    sed = "sed -i 's|^  # - ../../components/redis-ha|  - ../../components/redis-ha|'"
    assert sed in section
    assert sed in (COMPONENT / "kustomization.yaml").read_text()
    words = " ".join(section.split())
    for needle in ("compose.ha.yaml", "asked without credentials", "scheduler: ray",
                   "plain `redis://` URL", "replication lag", "k8s/components/redis-ha"):
        assert needle in words, needle
