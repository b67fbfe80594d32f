"""deploy/*.yaml: schema-valid for Kubernetes 1.30 and shaped as docs/DEPLOY.md describes."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.30.0"
NAMESPACE = "unlinkwatch"
# The Secrets scripts/make-certs.sh writes; they hold private keys, so they are not in deploy/.
CERT_SECRETS = {"unlinkwatch-collector-tls", "unlinkwatch-agent-tls"}
AGENT_CAPABILITIES = {"BPF", "PERFMON", "SYS_RESOURCE", "DAC_READ_SEARCH", "SYS_PTRACE"}
READ_VERBS = {"get", "list", "watch"}

Doc = dict[str, Any]


def load_docs(paths: list[Path]) -> list[tuple[Path, Doc]]:
    docs = []
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path, doc))
    return docs


@pytest.fixture(scope="module")
def docs() -> list[Doc]:
    return [d for _, d in load_docs(sorted(DEPLOY.glob("*.yaml")))]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(docs: list[Doc]) -> list[Doc]:
    return [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("DaemonSet", "StatefulSet", "Deployment")]


def agent(docs: list[Doc]) -> Doc:
    spec: Doc = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    return spec


def agent_container(docs: list[Doc]) -> Doc:
    containers: list[Doc] = agent(docs)["containers"]
    assert len(containers) == 1
    return containers[0]


def collector(docs: list[Doc]) -> Doc:
    spec: Doc = one(docs, "StatefulSet")["spec"]
    return spec


def collector_container(docs: list[Doc]) -> Doc:
    containers: list[Doc] = collector(docs)["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


@pytest.mark.parametrize("path", sorted(DEPLOY.glob("*.yaml")), ids=lambda p: p.name)
def test_every_document_is_valid_against_the_kubernetes_schemas_in_strict_mode(path: Path) -> None:
    for _, doc in load_docs([path]):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_namespace_file_sorts_first_so_kubectl_apply_creates_it_before_its_users() -> None:
    files = sorted(p.name for p in DEPLOY.glob("*.yaml"))
    assert files[0] == "00-namespace.yaml"
    kinds = [d["kind"] for _, d in load_docs([DEPLOY / files[0]])]
    assert kinds == ["Namespace"]


def test_every_namespaced_object_lives_in_the_unlinkwatch_namespace(docs: list[Doc]) -> None:
    assert one(docs, "Namespace")["metadata"]["name"] == NAMESPACE
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass"}
    for d in docs:
        if d["kind"] not in cluster_scoped:
            assert d["metadata"].get("namespace") == NAMESPACE, d["metadata"]["name"]


def test_the_agent_cluster_role_only_reads_pods_replicasets_jobs_and_claims(docs: list[Doc]) -> None:
    role = one(docs, "ClusterRole", "unlinkwatch-agent")
    granted = set()
    for rule in role["rules"]:
        assert set(rule["verbs"]) <= READ_VERBS, rule
        assert "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        granted |= {(g, r) for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted == {("", "pods"), ("apps", "replicasets"), ("batch", "jobs"), ("", "persistentvolumeclaims")}


def test_no_role_anywhere_grants_a_write_verb(docs: list[Doc]) -> None:
    for d in docs:
        if d["kind"] in ("Role", "ClusterRole"):
            for rule in d["rules"]:
                assert set(rule["verbs"]) <= READ_VERBS, (d["metadata"]["name"], rule)


def test_the_cluster_role_is_bound_to_the_agent_service_account(docs: list[Doc]) -> None:
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "unlinkwatch-agent"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "unlinkwatch-agent", "namespace": NAMESPACE}]
    assert agent(docs)["serviceAccountName"] == "unlinkwatch-agent"


def test_the_agent_runs_with_host_pids_on_every_node_at_high_priority(docs: list[Doc]) -> None:
    spec = agent(docs)
    assert spec["hostPID"] is True
    assert spec["tolerations"] == [{"operator": "Exists"}]
    priority = spec["priorityClassName"]
    assert priority in ("system-node-critical", *(d["metadata"]["name"] for d in docs if d["kind"] == "PriorityClass"))


def test_the_agent_takes_its_node_name_from_the_downward_api(docs: list[Doc]) -> None:
    env = {e["name"]: e for e in agent_container(docs)["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_the_agent_has_exactly_the_documented_capabilities_and_is_not_privileged(docs: list[Doc]) -> None:
    spec = agent(docs)
    for c in spec["containers"] + spec.get("initContainers", []):
        assert c.get("securityContext", {}).get("privileged") is not True
    sc = agent_container(docs)["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == AGENT_CAPABILITIES
    assert sc["allowPrivilegeEscalation"] is False
    documented = (ROOT / "docs" / "DEPLOY.md").read_text()
    for cap in AGENT_CAPABILITIES:
        assert f"`{cap}`" in documented, f"{cap} is not explained in docs/DEPLOY.md"


def test_each_added_capability_carries_a_reason_comment() -> None:
    text = (DEPLOY / "daemonset.yaml").read_text()
    for cap in AGENT_CAPABILITIES:
        lines = [ln for ln in text.splitlines() if ln.strip().startswith(f"- {cap} ")]
        assert len(lines) == 1 and "#" in lines[0], cap


def test_the_agent_has_requests_limits_and_both_probes_on_its_metrics_port(docs: list[Doc]) -> None:
    c = agent_container(docs)
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind])
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 9470}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] in ("metrics", 9470)
    assert flag(c["args"], "--metrics-addr") == "0.0.0.0:9470"


def test_the_agent_ships_to_the_collector_service_over_mutual_tls_with_a_host_spool(docs: list[Doc]) -> None:
    args = agent_container(docs)["args"]
    assert args[0] == "agent"
    assert flag(args, "--collector") == "unlinkwatch-collector.unlinkwatch.svc:50051"
    assert flag(args, "--kube") == "auto"
    assert flag(args, "--spool") == "/var/lib/unlinkwatch/spool"
    mounts = {m["mountPath"]: m for m in agent_container(docs)["volumeMounts"]}
    for f in ("--tls-cert", "--tls-key", "--tls-ca"):
        assert str(Path(flag(args, f)).parent) in mounts
    volumes = {v["name"]: v for v in agent(docs)["volumes"]}
    spool = volumes[mounts["/var/lib/unlinkwatch/spool"]["name"]]
    assert spool["hostPath"]["path"] == "/var/lib/unlinkwatch/spool"


def test_the_agent_mounts_only_the_host_paths_it_needs_and_no_kernel_headers(docs: list[Doc]) -> None:
    volumes = {v["name"]: v for v in agent(docs)["volumes"]}
    host = {v["hostPath"]["path"] for v in volumes.values() if "hostPath" in v}
    assert host == {"/sys/fs/cgroup", "/sys/kernel/tracing", "/sys/kernel/btf", "/sys/kernel/security",
                    "/var/lib/unlinkwatch/spool"}
    for path in host:
        assert not path.startswith(("/lib/modules", "/usr/src", "/sys/kernel/debug"))
    by_name = {m["name"]: m for m in agent_container(docs)["volumeMounts"]}
    for name, v in volumes.items():
        if "hostPath" in v and v["hostPath"]["path"] in ("/sys/fs/cgroup", "/sys/kernel/btf", "/sys/kernel/security"):
            assert by_name[name].get("readOnly") is True, name
            assert by_name[name]["mountPath"] == v["hostPath"]["path"]


def test_the_collector_service_exposes_grpc_on_50051_and_metrics_on_9471(docs: list[Doc]) -> None:
    svc = one(docs, "Service", "unlinkwatch-collector")
    ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    assert ports == {"grpc": 50051, "metrics": 9471}
    labels = collector(docs)["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert collector(docs)["serviceName"] == "unlinkwatch-collector"


def test_the_collector_stores_sqlite_on_a_volume_claim(docs: list[Doc]) -> None:
    args = collector_container(docs)["args"]
    assert args[0] == "collector"
    assert flag(args, "--db") == "sqlite:////var/lib/unlinkwatch/events.db"
    assert flag(args, "--listen") == "0.0.0.0:50051"
    assert flag(args, "--metrics-addr") == "0.0.0.0:9471"
    claims = {t["metadata"]["name"] for t in collector(docs)["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in collector_container(docs)["volumeMounts"]}
    assert mounts["/var/lib/unlinkwatch"] in claims


def test_the_collector_mounts_the_rules_config_map_and_reads_rules_yaml_from_it(docs: list[Doc]) -> None:
    args = collector_container(docs)["args"]
    assert flag(args, "--rules") == "/etc/unlinkwatch/rules/rules.yaml"
    mounts = {m["mountPath"]: m for m in collector_container(docs)["volumeMounts"]}
    volumes = {v["name"]: v for v in collector(docs)["template"]["spec"]["volumes"]}
    rules = mounts["/etc/unlinkwatch/rules"]
    assert "subPath" not in rules  # subPath mounts never see ConfigMap updates, so no hot reload
    assert volumes[rules["name"]]["configMap"]["name"] == "unlinkwatch-rules"


def test_the_collector_runs_as_non_root_on_a_read_only_root_with_both_probes(docs: list[Doc]) -> None:
    pod = collector(docs)["template"]["spec"]
    c = collector_container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    readiness = "\n".join(c["readinessProbe"]["exec"]["command"])
    assert "grpc_health.v1" in readiness and "127.0.0.1:50051" in readiness
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind])


def test_every_referenced_config_map_secret_and_service_account_exists(docs: list[Doc]) -> None:
    have = {(d["kind"], d["metadata"]["name"]) for d in docs}
    have |= {("Secret", s) for s in CERT_SECRETS}
    for spec in pod_specs(docs):
        assert ("ServiceAccount", spec["serviceAccountName"]) in have
        for v in spec.get("volumes", []):
            if "configMap" in v:
                assert ("ConfigMap", v["configMap"]["name"]) in have, v
            if "secret" in v:
                assert ("Secret", v["secret"]["secretName"]) in have, v
        for c in spec["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    assert ("ConfigMap", ref["configMapKeyRef"]["name"]) in have
                if "secretKeyRef" in ref:
                    assert ("Secret", ref["secretKeyRef"]["name"]) in have


def test_the_rules_config_map_carries_a_rules_yaml_key(docs: list[Doc]) -> None:
    cm = one(docs, "ConfigMap", "unlinkwatch-rules")
    assert "rules.yaml" in cm["data"]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_make_certs_writes_valid_secrets_for_every_secret_the_manifests_mount(tmp_path: Path, docs: list[Doc]) -> None:
    subprocess.run([str(ROOT / "scripts" / "make-certs.sh"), str(tmp_path)], check=True, capture_output=True)
    secrets = {d["metadata"]["name"]: d for _, d in load_docs([tmp_path / "unlinkwatch-tls.yaml"])}
    assert set(secrets) == CERT_SECRETS
    for s in secrets.values():
        kubernetes_validate.validate(s, K8S_VERSION, strict=True)
        assert s["metadata"]["namespace"] == NAMESPACE
        assert set(s["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    mounted = {v["secret"]["secretName"] for spec in pod_specs(docs) for v in spec["volumes"] if "secret" in v}
    assert mounted == CERT_SECRETS
    ca = tmp_path / "ca.crt"
    for leaf in ("collector", "agent"):
        subprocess.run(["openssl", "verify", "-CAfile", str(ca), str(tmp_path / f"{leaf}.crt")],
                       check=True, capture_output=True)
    pem = base64.b64decode(secrets["unlinkwatch-collector-tls"]["data"]["tls.crt"])
    text = subprocess.run(["openssl", "x509", "-noout", "-text"], input=pem, check=True,
                          capture_output=True).stdout.decode()
    # The agents dial this name; the collector's in-pod readiness check dials 127.0.0.1 with it overridden.
    assert "DNS:unlinkwatch-collector.unlinkwatch.svc," in text
    assert "TLS Web Client Authentication" in text


def test_the_dockerfile_replay_runs_doctor_with_the_daemonsets_capability_set() -> None:
    script = (ROOT / "scripts" / "replay-dockerfile.sh").read_text()
    line = next(ln for ln in script.splitlines() if ln.startswith("POD_CAPS=("))
    assert set(line.removeprefix("POD_CAPS=(").removesuffix(")").split()) == AGENT_CAPABILITIES
