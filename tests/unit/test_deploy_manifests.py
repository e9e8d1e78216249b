"""The deployment files: Kubernetes example, Collector configurations, systemd unit.

No cluster and no Collector binary are needed: the Kubernetes objects are
checked against the known keys in tests/deploy_schema.py and against each
other (selectors, volumes, the Secret, probe ports, the NetworkPolicy), the
pod's configuration and environment are loaded by the agent's own config code,
the probes are run against the real API, every Collector configuration under
examples/ is checked for defined, known components with known keys and
pipelines of the right signals, and the unit is checked for its capability set
and sandbox, and by ``systemd-analyze verify`` where systemd is installed.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask.testing import FlaskClient

from otel_linnix import config as agent_config
from otel_linnix.config import parse_bind_address
from otel_linnix.export import settings as export_settings
from otel_linnix.export.settings import SIGNALS, resolve_export
from tests import deploy_schema as schema
from tests.unit.api_stack import ApiStack, api_config, write_api_recording

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
K8S_DIR = EXAMPLES / "kubernetes"
GATEWAY = K8S_DIR / "otel-collector-gateway.yaml"
UNIT = ROOT / "config" / "otel-linnix.service"

# Environment variables of the manifests and the unit that the agent does not
# read, each with the reason it is there.
NON_AGENT_ENV = {
    "NODE_NAME": "the downward API's node name, used inside OTEL_RESOURCE_ATTRIBUTES",
    "MALLOC_ARENA_MAX": "read by glibc's malloc",
}
# What the unit measured as needed (see its header); the README's
# capability-only alternative must list the same.
UNIT_CAPABILITIES = {"CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"}
TOKEN = "deploy-test-token"


# ---- loading -----------------------------------------------------------------


def is_collector_config(path: Path) -> bool:
    return path.name.startswith("otel-collector")


def k8s_files() -> list[Path]:
    files = sorted(p for p in K8S_DIR.glob("*.y*ml") if not is_collector_config(p))
    assert files, f"no Kubernetes manifests under {K8S_DIR}"
    return files


def load_docs(path: Path) -> list[dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    assert all(isinstance(doc, dict) for doc in docs), f"{path}: a document is not a mapping"
    return docs


def k8s_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in k8s_files() for doc in load_docs(path)]


def the_object(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in k8s_objects() if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} under {K8S_DIR}, found {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = the_object("DaemonSet")["spec"]["template"]["spec"]
    return spec


def agent_container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec()["containers"]
    assert len(containers) == 1, "the DaemonSet runs one container, the agent"
    return containers[0]


def container_env() -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = agent_container()["env"]
    return env


def compose_collector_configs() -> set[Path]:
    """Collector configurations a compose file under examples/ mounts into a
    Collector container (image named *collector* or *otelcol*)."""
    found: set[Path] = set()
    for compose in EXAMPLES.glob("**/*compose*.y*ml"):
        services = (yaml.safe_load(compose.read_text(encoding="utf-8")) or {}).get("services", {})
        for service in services.values():
            image = str(service.get("image", ""))
            if "collector" not in image and "otelcol" not in image:
                continue
            for volume in service.get("volumes", []):
                source = str(volume.get("source", "") if isinstance(volume, dict) else volume)
                host = (compose.parent / source.split(":", 1)[0]).resolve()
                if host.suffix in (".yaml", ".yml") and host.is_file():
                    found.add(host)
    return found


def collector_configs() -> list[Path]:
    paths = {p.resolve() for p in EXAMPLES.glob("**/otel-collector*.y*ml")}
    return sorted(paths | compose_collector_configs())


def pod_env(node_name: str = "node-1") -> dict[str, str]:
    """The agent container's environment as kubelet builds it: literal values,
    the node name from the downward API, the token from the Secret, and
    $(VAR) references to earlier variables expanded."""
    env: dict[str, str] = {}
    for var in container_env():
        source = var.get("valueFrom", {})
        if "value" in var:
            env[var["name"]] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: env.get(m.group(1), m.group(0)),
                str(var["value"]),
            )
        elif source.get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
            env[var["name"]] = node_name
        elif "secretKeyRef" in source:
            env[var["name"]] = TOKEN
        else:
            raise AssertionError(f"no test value for {var['name']}: {source}")
    return env


# ---- Kubernetes: known kinds and keys ----------------------------------------


def _leaf_problems(value: Any, type_name: str, where: str) -> list[str]:
    if type_name == schema.SCALAR:
        return [f"{where}: expected a scalar"] if isinstance(value, dict | list) else []
    if not isinstance(value, dict):
        return [f"{where}: expected a mapping"]
    # Labels and annotations are strings: `port: 3000` there is rejected.
    return [f"{where}.{k}: expected a string" for k, v in value.items() if not isinstance(v, str)]


def unknown_keys(value: Any, type_name: str, where: str) -> list[str]:
    """Problems of ``value`` read as ``type_name`` of tests/deploy_schema.py."""
    if type_name == schema.ANY:
        return []
    if type_name in (schema.SCALAR, schema.STR_MAP):
        return _leaf_problems(value, type_name, where)
    if type_name.startswith("list:"):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        item_type = type_name.removeprefix("list:")
        return [
            p
            for i, item in enumerate(value)
            for p in unknown_keys(item, item_type, f"{where}[{i}]")
        ]
    if not isinstance(value, dict):
        return [f"{where}: expected a {type_name} mapping"]
    fields = schema.K8S_TYPES[type_name]
    problems: list[str] = []
    for key, item in value.items():
        if key in fields:
            problems += unknown_keys(item, fields[key], f"{where}.{key}")
        else:
            problems.append(f"{where}.{key}: not a known key of {type_name}")
    return problems


@pytest.mark.parametrize("path", k8s_files(), ids=lambda p: p.name)
def test_manifest_objects_are_known_kinds_with_known_keys(path: Path) -> None:
    for doc in load_docs(path):
        kind = (doc.get("apiVersion"), doc.get("kind"))
        assert kind in schema.K8S_KINDS, f"{path.name}: unknown apiVersion/kind {kind}"
        problems = unknown_keys(doc, schema.K8S_KINDS[kind], f"{path.name}:{kind[1]}")
        assert not problems, "\n".join(problems)


def test_the_key_check_catches_a_typo() -> None:
    ds = the_object("DaemonSet")
    mount = ds["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]
    bad = {**mount, "readonly": True}
    assert unknown_keys(bad, "VolumeMount", "m") == ["m.readonly: not a known key of VolumeMount"]
    assert unknown_keys({"a": 1}, schema.STR_MAP, "ann") == ["ann.a: expected a string"]


def test_every_object_lives_in_the_agent_namespace() -> None:
    namespace = the_object("Namespace")["metadata"]["name"]
    kustomization = the_object("Kustomization")
    assert kustomization["namespace"] == namespace
    for path, doc in k8s_objects():
        if doc["kind"] not in ("Namespace", "Kustomization"):
            assert doc["metadata"]["namespace"] == namespace, f"{path.name}: {doc['kind']}"


def test_namespace_admits_the_privileged_agent() -> None:
    labels = the_object("Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"


def test_kustomization_applies_every_object_but_the_placeholder_secret() -> None:
    kustomization = the_object("Kustomization")
    resources = kustomization["resources"]
    for name in resources:
        assert (K8S_DIR / name).is_file(), f"kustomization.yaml lists a missing file {name}"
    expected = {p.name for p in k8s_files()} - {"kustomization.yaml", "secret.yaml"}
    assert set(resources) == expected
    for generator in kustomization["configMapGenerator"]:
        for name in generator["files"]:
            assert (K8S_DIR / name).is_file(), f"configMapGenerator names a missing file {name}"


# ---- Kubernetes: the DaemonSet and its references ----------------------------


def test_daemonset_watches_the_host_from_every_node() -> None:
    ds = the_object("DaemonSet")
    spec = pod_spec()
    assert spec["hostPID"] is True
    # NetworkPolicy does not apply to host-network pods.
    assert not spec.get("hostNetwork", False)
    assert {"operator": "Exists"} in spec["tolerations"], "tolerates every taint"
    assert spec["priorityClassName"]
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    resources = agent_container()["resources"]
    assert set(resources) == {"requests", "limits"}
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


def test_daemonset_security_context_is_privileged_or_the_measured_capabilities() -> None:
    context = agent_container()["securityContext"]
    if context.get("privileged"):
        return
    added = {f"CAP_{c}" for c in context["capabilities"]["add"]}
    assert added == UNIT_CAPABILITIES
    assert context["capabilities"]["drop"] == ["ALL"]


def test_readme_capability_alternative_matches_the_unit() -> None:
    readme = (K8S_DIR / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    contexts = [b for b in (yaml.safe_load(b) for b in blocks) if "securityContext" in b]
    assert len(contexts) == 1, "README.md shows one capability-only securityContext"
    context = contexts[0]["securityContext"]
    assert not unknown_keys(context, "SecurityContext", "README.md securityContext")
    caps = context["capabilities"]
    assert {f"CAP_{c}" for c in caps["add"]} == UNIT_CAPABILITIES
    assert caps["drop"] == ["ALL"]


def test_selector_and_network_policy_select_the_agent_pods() -> None:
    ds = the_object("DaemonSet")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    selector = ds["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    policy = the_object("NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    api_port = agent_container()["ports"][0]["containerPort"]
    for rule in policy["ingress"]:
        assert [p["port"] for p in rule["ports"]] == [api_port]
        for peer in rule["from"]:
            # A namespace and a pod selector in one peer: both must match.
            assert set(peer) == {"namespaceSelector", "podSelector"}


def test_service_account_has_no_api_access() -> None:
    account = the_object("ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    assert pod_spec()["serviceAccountName"] == account["metadata"]["name"]
    assert pod_spec()["automountServiceAccountToken"] is False


def test_volume_mounts_and_volumes_match() -> None:
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    mounts = {m["name"]: m for m in agent_container()["volumeMounts"]}
    assert set(mounts) == set(volumes), "every mount has a volume and every volume is mounted"
    host_paths = {
        volumes[name]["hostPath"]["path"]: mount
        for name, mount in mounts.items()
        if "hostPath" in volumes[name]
    }
    # The agent writes nothing on the host.
    assert all(mount.get("readOnly") is True for mount in host_paths.values())
    assert {"/sys/kernel", "/sys/fs/cgroup"} <= set(host_paths)
    # The image carries its own kernel header tree (see daemonset.yaml).
    assert not any(p.startswith(("/lib/modules", "/usr/src")) for p in host_paths)


def test_config_volume_is_the_generated_config_map_the_agent_reads() -> None:
    generated = {g["name"] for g in the_object("Kustomization")["configMapGenerator"]}
    volumes = [v for v in pod_spec()["volumes"] if "configMap" in v]
    assert [v["configMap"]["name"] for v in volumes] == sorted(generated)
    mount = next(m for m in agent_container()["volumeMounts"] if m["name"] == volumes[0]["name"])
    config_path = pod_env()[agent_config.ENV_CONFIG]
    assert Path(config_path).parent == Path(mount["mountPath"])
    assert (K8S_DIR / Path(config_path).name).is_file()


def test_secret_reference_names_the_example_secret() -> None:
    secret = the_object("Secret")
    refs = [
        v["valueFrom"]["secretKeyRef"]
        for v in container_env()
        if "secretKeyRef" in v.get("valueFrom", {})
    ]
    assert refs, "the token comes from a Secret"
    for ref in refs:
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]
    # The example value must not be mistaken for a real token.
    assert all("REPLACE" in value for value in secret["stringData"].values())


def test_downward_api_gives_the_node_name() -> None:
    node = next(v for v in container_env() if v["name"] == "NODE_NAME")
    assert node["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def image_rules_path(config_text: str) -> str:
    """The pod's rules file, which must be one the image ships: the image has
    the default rules in /etc/linnix (Dockerfile), not where the agent looks
    for its bundled copy, so the pod's configuration names them explicitly."""
    found = re.search(r'^config_path = "([^"]+)"', config_text, re.M)
    assert found, "linnix.toml sets [rules] config_path"
    rules = Path(found.group(1))
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    copy = rf"^COPY\s.*\bconfig/{re.escape(rules.name)}\b.*\s{re.escape(str(rules.parent))}/?\s*$"
    assert re.search(copy, dockerfile, re.M), f"the image has no {rules}"
    return str(rules)


def test_pod_configuration_and_environment_load_in_the_agent(tmp_path: Path) -> None:
    """What the pod would start with: the ConfigMap's file and the container's
    environment, through the agent's own loaders (a bad key, a missing rules
    file, a non-loopback address without a token, a malformed OTEL_* value
    would raise)."""
    env = pod_env("node-7")
    text = (K8S_DIR / Path(env[agent_config.ENV_CONFIG]).name).read_text(encoding="utf-8")
    # Here the image's copy of the rules is the repository's own.
    in_image = image_rules_path(text)
    config_file = tmp_path / "linnix.toml"
    config_file.write_text(
        text.replace(in_image, str(ROOT / "config" / "rules.yaml")), encoding="utf-8"
    )
    loaded = agent_config.load_config(config_file, env)
    assert loaded.api.auth_token == TOKEN
    host, port = parse_bind_address(loaded.api.bind_address)
    # Every address of the pod, so kubelet, Prometheus and port-forward reach it.
    assert ipaddress.ip_address(host).is_unspecified
    assert port == agent_container()["ports"][0]["containerPort"]
    export = resolve_export(loaded.export, env)
    assert export.metrics is not None
    assert export.metrics.endpoint == "http://otel-collector-gateway.monitoring:4318/v1/metrics"
    assert export.resource_attributes["host.name"] == "node-7"
    assert export.resource_attributes["k8s.node.name"] == "node-7"
    assert export.resource_attributes["service.instance.id"] == "node-7"


# ---- environment variable names ----------------------------------------------


def agent_env_vars() -> set[str]:
    """Every variable the agent reads: config.py's ENV_* constants and the
    OTEL_* names in the export package (literals, per-signal f-strings, and
    transport.py's _env(signal, NAME) helper, which reads both forms)."""
    names = {
        value
        for name, value in vars(agent_config).items()
        if name.startswith("ENV_") and isinstance(value, str)
    }
    export_dir = Path(export_settings.__file__).parent
    for source in (p.read_text(encoding="utf-8") for p in export_dir.glob("*.py")):
        names |= set(re.findall(r'"(OTEL_[A-Z_]+)"', source))
        for template in re.findall(r'f"(OTEL_[A-Z_]*\{[^}]+\}[A-Z_]*)"', source):
            names |= {re.sub(r"\{[^}]+\}", s.upper(), template) for s in SIGNALS}
        for suffix in re.findall(r'_env\(\w+(?:\.\w+)?, "([A-Z_]+)"', source):
            names |= {f"OTEL_EXPORTER_OTLP_{suffix}"}
            names |= {f"OTEL_EXPORTER_OTLP_{s.upper()}_{suffix}" for s in SIGNALS}
    return names


def unit_env_names() -> set[str]:
    """Variables the unit sets or documents for its EnvironmentFile."""
    text = UNIT.read_text(encoding="utf-8")
    set_here = {v.split("=", 1)[0] for v in parse_unit(text)["Service"].get("Environment", [])}
    documented = set(re.findall(r"^#\s+([A-Z][A-Z0-9_]+)=", text, re.M))
    return set_here | documented


def test_agent_env_scan_finds_what_the_agent_reads() -> None:
    names = agent_env_vars()
    assert {"LINNIX_API_TOKEN", "LINNIX_API_BIND_ADDRESS", "LINNIX_CONFIG"} <= names
    assert {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"} <= names
    assert {"OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"} <= names
    assert "OTEL_EXPORTER_OTLP_COMPRESSION" in names


@pytest.mark.parametrize("source", ["daemonset", "unit"])
def test_env_var_names_are_read_by_the_agent(source: str) -> None:
    names = {v["name"] for v in container_env()} if source == "daemonset" else unit_env_names()
    assert names, f"no environment variables found in the {source}"
    unread = names - agent_env_vars() - set(NON_AGENT_ENV)
    assert not unread, f"the agent reads none of {sorted(unread)}"


# ---- probes and the token ----------------------------------------------------


def probes() -> dict[str, dict[str, Any]]:
    container = agent_container()
    return {
        k: container[k]
        for k in ("startupProbe", "livenessProbe", "readinessProbe")
        if k in container
    }


def test_probes_target_the_api_port() -> None:
    ports = agent_container()["ports"]
    by_name = {p["name"]: p["containerPort"] for p in ports}
    bind_port = parse_bind_address(pod_env()[agent_config.ENV_API_BIND_ADDRESS])[1]
    assert set(probes()) == {"startupProbe", "livenessProbe", "readinessProbe"}
    for name, probe in probes().items():
        port = probe["httpGet"]["port"]
        assert by_name.get(port, port) == bind_port, name
    assert probes()["readinessProbe"]["httpGet"]["path"] == "/readyz"


@pytest.fixture
def api_client(tmp_path: Path) -> Iterator[tuple[ApiStack, FlaskClient]]:
    """The agent's real API with a token, over a replayed recording."""
    cgroup_root = tmp_path / "cgroup"
    stack = ApiStack(
        write_api_recording(tmp_path / "api.jsonl", cgroup_root),
        cgroup_root,
        api_config(auth_token=TOKEN),
    )
    stack.start()
    try:
        yield stack, stack.app.test_client()
    finally:
        stack.close()


def test_probes_pass_without_the_token_that_guards_the_rest(
    api_client: tuple[ApiStack, FlaskClient],
) -> None:
    """kubelet cannot take a header value from a Secret: every probe must hit a
    route the token does not guard, while the data routes stay guarded."""
    _, client = api_client
    for name, probe in probes().items():
        response = client.get(probe["httpGet"]["path"])
        assert response.status_code == 200, (name, response.get_json())
    assert client.get("/processes").status_code == 401
    assert client.get("/metrics").status_code == 401


def test_readiness_probe_fails_while_kernel_capture_is_unavailable(tmp_path: Path) -> None:
    cgroup_root = tmp_path / "cgroup"
    stack = ApiStack(
        write_api_recording(tmp_path / "api.jsonl", cgroup_root),
        cgroup_root,
        api_config(auth_token=TOKEN),
        fallback_reason="no BTF",
    )
    try:
        stack.start()
        client = stack.app.test_client()
        ready = client.get(probes()["readinessProbe"]["httpGet"]["path"])
        assert ready.status_code == 503
        assert "no BTF" in ready.get_json()["reason"]
        live = client.get(probes()["livenessProbe"]["httpGet"]["path"])
        assert live.status_code == 200
    finally:
        stack.close()


# ---- Collector configurations ------------------------------------------------


def split_id(component_id: str) -> str:
    """The type of a component id ``type`` or ``type/name``."""
    return component_id.split("/", 1)[0]


def component_problems(section: str, component_id: str, body: Any) -> list[str]:
    where = f"{section}.{component_id}"
    known = schema.COLLECTOR_COMPONENTS[section].get(split_id(component_id))
    if known is None:
        return [f"{where}: unknown {section[:-1]} type {split_id(component_id)!r}"]
    body = body or {}  # `debug:` with nothing under it is a valid, default config
    if not isinstance(body, dict):
        return [f"{where}: expected a mapping"]
    problems = [f"{where}.{k}: not a known key" for k in body if k not in known.keys]
    for path, keys in known.nested.items():
        value: Any = body
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, dict):
            problems += [f"{where}.{path}.{k}: not a known key" for k in value if k not in keys]
    return problems


def pipeline_problems(config: dict[str, Any]) -> list[str]:
    service = config.get("service") or {}
    problems = [f"service.{k}: not a known key" for k in service if k not in schema.SERVICE_KEYS]
    for ext in service.get("extensions", []):
        if ext not in (config.get("extensions") or {}):
            problems.append(f"service.extensions: {ext!r} is not defined under extensions")
    pipelines = service.get("pipelines") or {}
    if not pipelines:
        problems.append("service.pipelines: none defined")
    for pipeline_id, pipeline in pipelines.items():
        signal = split_id(pipeline_id)
        where = f"service.pipelines.{pipeline_id}"
        if signal not in schema.PIPELINE_SIGNALS:
            problems.append(f"{where}: unknown signal {signal!r}")
            continue
        problems += [
            f"{where}.{k}: not a known key" for k in pipeline if k not in schema.PIPELINE_KEYS
        ]
        for section in ("receivers", "exporters"):
            if not pipeline.get(section):
                problems.append(f"{where}: needs at least one of {section}")
        for section in ("receivers", "processors", "exporters"):
            defined = config.get(section) or {}
            for component_id in pipeline.get(section, []):
                known = schema.COLLECTOR_COMPONENTS[section].get(split_id(component_id))
                if component_id not in defined:
                    problems.append(f"{where}: {component_id!r} is not defined under {section}")
                elif known is not None and signal not in known.signals:
                    problems.append(f"{where}: {component_id!r} does not handle {signal}")
    return problems


def collector_problems(config: dict[str, Any]) -> list[str]:
    problems = [
        f"{k}: not a known top-level section" for k in config if k not in schema.COLLECTOR_SECTIONS
    ]
    for section in schema.COLLECTOR_SECTIONS - {"service"}:
        for component_id, body in (config.get(section) or {}).items():
            problems += component_problems(section, component_id, body)
    return problems + pipeline_problems(config)


def test_collector_configs_are_found() -> None:
    # Not a skip when another example is missing: the gateway is always here.
    assert GATEWAY.resolve() in collector_configs()


@pytest.mark.parametrize("path", collector_configs(), ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_collector_config_uses_known_components_in_valid_pipelines(path: Path) -> None:
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(config, dict), f"{path}: not a mapping"
    problems = collector_problems(config)
    assert not problems, f"{path}:\n" + "\n".join(problems)


def test_collector_check_catches_wrong_configs() -> None:
    config = yaml.safe_load(GATEWAY.read_text(encoding="utf-8"))
    config["processors"]["memory_limiter"]["limit_mb"] = 400
    config["exporters"]["prometheus"] = {"endpoint": "0.0.0.0:8889"}
    config["service"]["pipelines"]["logs"]["exporters"].append("prometheus")
    config["service"]["pipelines"]["traces"]["processors"].append("tail_sampling")
    problems = collector_problems(config)
    assert "processors.memory_limiter.limit_mb: not a known key" in problems
    assert "service.pipelines.logs: 'prometheus' does not handle logs" in problems
    assert "service.pipelines.traces: 'tail_sampling' is not defined under processors" in problems


def test_gateway_receives_otlp_where_the_agents_send() -> None:
    config = yaml.safe_load(GATEWAY.read_text(encoding="utf-8"))
    http = config["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    endpoint = pod_env()["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert http.rsplit(":", 1)[1] == endpoint.rsplit(":", 1)[1]
    for pipeline in config["service"]["pipelines"].values():
        # memory_limiter first, batch last: the order the Collector documents.
        assert pipeline["processors"][0] == "memory_limiter"
        assert pipeline["processors"][-1] == "batch"


# ---- systemd unit ------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value, in order (keys such as
    SystemCallFilter may repeat, which configparser cannot represent)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"a setting before any section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text(encoding="utf-8"))["Service"]


def test_unit_runs_the_installed_agent() -> None:
    service = unit_service()
    assert service["Type"] == ["simple"], "the agent does not speak sd_notify"
    assert shlex.split(service["ExecStart"][0]) == [
        "/opt/otel-linnix/.venv/bin/otel-linnix",
        "run",
        "--config",
        "/etc/linnix/linnix.toml",
    ]
    # Header links for the running kernel, outside the sandbox ("+").
    assert service["ExecStartPre"] == ["+/opt/otel-linnix/scripts/install.sh --host-only"]
    assert service["EnvironmentFile"] == ["-/etc/linnix/otel-linnix.env"]
    assert "MALLOC_ARENA_MAX=2" in service["Environment"]
    assert service["Restart"] == ["on-failure"]
    assert parse_unit(UNIT.read_text(encoding="utf-8"))["Install"]["WantedBy"] == [
        "multi-user.target"
    ]


def test_unit_capability_set_is_the_measured_one() -> None:
    service = unit_service()
    (bounding,) = service["CapabilityBoundingSet"]
    assert set(bounding.split()) == UNIT_CAPABILITIES
    assert "AmbientCapabilities" not in service, "root needs no ambient capabilities"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateMounts", "yes"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectKernelLogs", "yes"),
        # /lib/modules holds the header tree bcc compiles against.
        ("ProtectKernelModules", "no"),
        ("ProcSubset", "all"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        # Measured: bcc 0.26 and libffi need no writable and executable memory.
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("LimitMEMLOCK", "infinity"),
    ],
)
def test_unit_hardening(key: str, value: str) -> None:
    assert unit_service().get(key) == [value]


def test_unit_system_call_filter_lets_bcc_load_the_program() -> None:
    service = unit_service()
    allowed = service["SystemCallFilter"][0].split()
    assert "@system-service" in allowed
    assert {"bpf", "perf_event_open"} <= set(allowed)
    families = set(service["RestrictAddressFamilies"][0].split())
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= families


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    """On a copy whose ExecStart points at an existing binary (verify checks
    that it is executable); every complaint about the file fails the test,
    since verify reports unknown keys and bad values without failing."""
    agent = ROOT / ".venv" / "bin" / "otel-linnix"
    binary = agent if agent.exists() else Path(sys.executable)
    text = UNIT.read_text(encoding="utf-8")
    copy = tmp_path / UNIT.name
    copy.write_text(
        text.replace("ExecStart=/opt/otel-linnix/.venv/bin/otel-linnix", f"ExecStart={binary}")
        # This checkout stands for the install location.
        .replace("=+/opt/otel-linnix/scripts/", f"=+{ROOT}/scripts/"),
        encoding="utf-8",
    )
    assert copy.read_text(encoding="utf-8") != text
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    complaints = [
        line for line in (result.stdout + result.stderr).splitlines() if str(copy) in line
    ]
    assert result.returncode == 0, result.stderr
    assert not complaints, "\n".join(complaints)
