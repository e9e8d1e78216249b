"""Known keys of the deployment files under examples/: Kubernetes objects and
OpenTelemetry Collector configurations.

These are lists of known keys for the fields the examples use, not the full
Kubernetes OpenAPI schema nor every Collector component: a key missing here
fails the tests until it is added, which is the point (a typo such as
``readonly`` or ``limit_mb`` is otherwise silently ignored by the Collector's
older versions and by ``kubectl apply --validate=false``). The Kubernetes
names follow the API reference (type names as in ``io.k8s.api.*``); the
Collector names come from each component's ``config.go`` (mapstructure tags,
squashed structs expanded) in opentelemetry-collector and
opentelemetry-collector-contrib.

A Kubernetes type maps each key to the type of its value: another type's
name, ``SCALAR``, ``STR_MAP`` (string to string), ``ANY`` (not checked
further), or ``list:<type>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "ANY",
    "COLLECTOR_COMPONENTS",
    "COLLECTOR_SECTIONS",
    "K8S_KINDS",
    "K8S_TYPES",
    "PIPELINE_KEYS",
    "PIPELINE_SIGNALS",
    "SCALAR",
    "SERVICE_KEYS",
    "STR_MAP",
    "Component",
]

SCALAR = "scalar"
STR_MAP = "str-map"
ANY = "any"

# ---------------------------------------------------------------- Kubernetes

#: (apiVersion, kind) -> the type of the whole object.
K8S_KINDS: dict[tuple[str, str], str] = {
    ("apps/v1", "DaemonSet"): "DaemonSet",
    ("v1", "ServiceAccount"): "ServiceAccount",
    ("v1", "Secret"): "Secret",
    ("v1", "ConfigMap"): "ConfigMap",
    ("v1", "Namespace"): "Namespace",
    ("networking.k8s.io/v1", "NetworkPolicy"): "NetworkPolicy",
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"): "Kustomization",
}

_TYPE_META = {"apiVersion": SCALAR, "kind": SCALAR}
_PROBE_TIMING = {
    "initialDelaySeconds": SCALAR,
    "periodSeconds": SCALAR,
    "timeoutSeconds": SCALAR,
    "failureThreshold": SCALAR,
    "successThreshold": SCALAR,
    "terminationGracePeriodSeconds": SCALAR,
}

K8S_TYPES: dict[str, dict[str, str]] = {
    # Objects
    "DaemonSet": {**_TYPE_META, "metadata": "ObjectMeta", "spec": "DaemonSetSpec"},
    "ServiceAccount": {
        **_TYPE_META,
        "metadata": "ObjectMeta",
        "automountServiceAccountToken": SCALAR,
        "imagePullSecrets": "list:LocalObjectReference",
    },
    "Secret": {
        **_TYPE_META,
        "metadata": "ObjectMeta",
        "type": SCALAR,
        "data": STR_MAP,
        "stringData": STR_MAP,
        "immutable": SCALAR,
    },
    "ConfigMap": {
        **_TYPE_META,
        "metadata": "ObjectMeta",
        "data": STR_MAP,
        "binaryData": STR_MAP,
        "immutable": SCALAR,
    },
    "Namespace": {**_TYPE_META, "metadata": "ObjectMeta"},
    "NetworkPolicy": {**_TYPE_META, "metadata": "ObjectMeta", "spec": "NetworkPolicySpec"},
    "Kustomization": {
        **_TYPE_META,
        "namespace": SCALAR,
        "namePrefix": SCALAR,
        "nameSuffix": SCALAR,
        "resources": f"list:{SCALAR}",
        "labels": ANY,
        "commonAnnotations": STR_MAP,
        "configMapGenerator": "list:GeneratorArgs",
        "secretGenerator": "list:GeneratorArgs",
        "generatorOptions": ANY,
        "images": "list:KustomizeImage",
        "patches": ANY,
    },
    "GeneratorArgs": {
        "name": SCALAR,
        "namespace": SCALAR,
        "behavior": SCALAR,
        "files": f"list:{SCALAR}",
        "literals": f"list:{SCALAR}",
        "envs": f"list:{SCALAR}",
        "type": SCALAR,
        "options": ANY,
    },
    "KustomizeImage": {"name": SCALAR, "newName": SCALAR, "newTag": SCALAR, "digest": SCALAR},
    # Shared
    "ObjectMeta": {
        "name": SCALAR,
        "namespace": SCALAR,
        "labels": STR_MAP,
        "annotations": STR_MAP,
    },
    "LocalObjectReference": {"name": SCALAR},
    "LabelSelector": {
        "matchLabels": STR_MAP,
        "matchExpressions": "list:LabelSelectorRequirement",
    },
    "LabelSelectorRequirement": {"key": SCALAR, "operator": SCALAR, "values": f"list:{SCALAR}"},
    # DaemonSet
    "DaemonSetSpec": {
        "selector": "LabelSelector",
        "template": "PodTemplateSpec",
        "updateStrategy": "DaemonSetUpdateStrategy",
        "minReadySeconds": SCALAR,
        "revisionHistoryLimit": SCALAR,
    },
    "DaemonSetUpdateStrategy": {"type": SCALAR, "rollingUpdate": "RollingUpdateDaemonSet"},
    "RollingUpdateDaemonSet": {"maxUnavailable": SCALAR, "maxSurge": SCALAR},
    "PodTemplateSpec": {"metadata": "ObjectMeta", "spec": "PodSpec"},
    "PodSpec": {
        "serviceAccountName": SCALAR,
        "automountServiceAccountToken": SCALAR,
        "hostPID": SCALAR,
        "hostNetwork": SCALAR,
        "hostIPC": SCALAR,
        "dnsPolicy": SCALAR,
        "priorityClassName": SCALAR,
        "nodeSelector": STR_MAP,
        "affinity": ANY,
        "tolerations": "list:Toleration",
        "terminationGracePeriodSeconds": SCALAR,
        "securityContext": "PodSecurityContext",
        "initContainers": "list:Container",
        "containers": "list:Container",
        "volumes": "list:Volume",
        "imagePullSecrets": "list:LocalObjectReference",
    },
    "PodSecurityContext": {
        "runAsUser": SCALAR,
        "runAsGroup": SCALAR,
        "runAsNonRoot": SCALAR,
        "fsGroup": SCALAR,
        "seccompProfile": "SeccompProfile",
        "appArmorProfile": "AppArmorProfile",
    },
    "Toleration": {
        "key": SCALAR,
        "operator": SCALAR,
        "value": SCALAR,
        "effect": SCALAR,
        "tolerationSeconds": SCALAR,
    },
    "Container": {
        "name": SCALAR,
        "image": SCALAR,
        "imagePullPolicy": SCALAR,
        "command": f"list:{SCALAR}",
        "args": f"list:{SCALAR}",
        "workingDir": SCALAR,
        "ports": "list:ContainerPort",
        "env": "list:EnvVar",
        "securityContext": "SecurityContext",
        "resources": "ResourceRequirements",
        "startupProbe": "Probe",
        "livenessProbe": "Probe",
        "readinessProbe": "Probe",
        "volumeMounts": "list:VolumeMount",
    },
    "ContainerPort": {
        "name": SCALAR,
        "containerPort": SCALAR,
        "protocol": SCALAR,
        "hostPort": SCALAR,
    },
    "EnvVar": {"name": SCALAR, "value": SCALAR, "valueFrom": "EnvVarSource"},
    "EnvVarSource": {
        "fieldRef": "ObjectFieldSelector",
        "secretKeyRef": "SecretKeySelector",
        "configMapKeyRef": "ConfigMapKeySelector",
        "resourceFieldRef": "ResourceFieldSelector",
    },
    "ObjectFieldSelector": {"fieldPath": SCALAR, "apiVersion": SCALAR},
    "SecretKeySelector": {"name": SCALAR, "key": SCALAR, "optional": SCALAR},
    "ConfigMapKeySelector": {"name": SCALAR, "key": SCALAR, "optional": SCALAR},
    "ResourceFieldSelector": {"containerName": SCALAR, "resource": SCALAR, "divisor": SCALAR},
    "SecurityContext": {
        "privileged": SCALAR,
        "capabilities": "Capabilities",
        "allowPrivilegeEscalation": SCALAR,
        "readOnlyRootFilesystem": SCALAR,
        "runAsUser": SCALAR,
        "runAsGroup": SCALAR,
        "runAsNonRoot": SCALAR,
        "seccompProfile": "SeccompProfile",
        "appArmorProfile": "AppArmorProfile",
    },
    "Capabilities": {"add": f"list:{SCALAR}", "drop": f"list:{SCALAR}"},
    "SeccompProfile": {"type": SCALAR, "localhostProfile": SCALAR},
    "AppArmorProfile": {"type": SCALAR, "localhostProfile": SCALAR},
    "ResourceRequirements": {"requests": STR_MAP, "limits": STR_MAP},
    "Probe": {
        **_PROBE_TIMING,
        "httpGet": "HTTPGetAction",
        "exec": "ExecAction",
        "tcpSocket": "TCPSocketAction",
    },
    "HTTPGetAction": {
        "path": SCALAR,
        "port": SCALAR,
        "host": SCALAR,
        "scheme": SCALAR,
        "httpHeaders": "list:HTTPHeader",
    },
    "HTTPHeader": {"name": SCALAR, "value": SCALAR},
    "ExecAction": {"command": f"list:{SCALAR}"},
    "TCPSocketAction": {"port": SCALAR, "host": SCALAR},
    "VolumeMount": {
        "name": SCALAR,
        "mountPath": SCALAR,
        "readOnly": SCALAR,
        "subPath": SCALAR,
        "mountPropagation": SCALAR,
        "recursiveReadOnly": SCALAR,
    },
    "Volume": {
        "name": SCALAR,
        "hostPath": "HostPathVolumeSource",
        "configMap": "ConfigMapVolumeSource",
        "secret": "SecretVolumeSource",
        "emptyDir": "EmptyDirVolumeSource",
    },
    "HostPathVolumeSource": {"path": SCALAR, "type": SCALAR},
    "ConfigMapVolumeSource": {
        "name": SCALAR,
        "items": "list:KeyToPath",
        "defaultMode": SCALAR,
        "optional": SCALAR,
    },
    "SecretVolumeSource": {
        "secretName": SCALAR,
        "items": "list:KeyToPath",
        "defaultMode": SCALAR,
        "optional": SCALAR,
    },
    "KeyToPath": {"key": SCALAR, "path": SCALAR, "mode": SCALAR},
    "EmptyDirVolumeSource": {"medium": SCALAR, "sizeLimit": SCALAR},
    # NetworkPolicy
    "NetworkPolicySpec": {
        "podSelector": "LabelSelector",
        "policyTypes": f"list:{SCALAR}",
        "ingress": "list:NetworkPolicyIngressRule",
        "egress": "list:NetworkPolicyEgressRule",
    },
    "NetworkPolicyIngressRule": {
        "from": "list:NetworkPolicyPeer",
        "ports": "list:NetworkPolicyPort",
    },
    "NetworkPolicyEgressRule": {"to": "list:NetworkPolicyPeer", "ports": "list:NetworkPolicyPort"},
    "NetworkPolicyPeer": {
        "podSelector": "LabelSelector",
        "namespaceSelector": "LabelSelector",
        "ipBlock": "IPBlock",
    },
    "NetworkPolicyPort": {"protocol": SCALAR, "port": SCALAR, "endPort": SCALAR},
    "IPBlock": {"cidr": SCALAR, "except": f"list:{SCALAR}"},
}

# ---------------------------------------------------------------- Collector

COLLECTOR_SECTIONS = frozenset(
    {"receivers", "processors", "exporters", "extensions", "connectors", "service"}
)
SERVICE_KEYS = frozenset({"extensions", "pipelines", "telemetry"})
PIPELINE_KEYS = frozenset({"receivers", "processors", "exporters"})
PIPELINE_SIGNALS = frozenset({"traces", "metrics", "logs"})
_ALL = PIPELINE_SIGNALS
_METRICS = frozenset({"metrics"})

# Squashed into many components (config/confighttp, config/configgrpc,
# exporter/exporterhelper).
_HTTP_CLIENT = frozenset(
    {
        "endpoint",
        "proxy_url",
        "tls",
        "read_buffer_size",
        "write_buffer_size",
        "timeout",
        "headers",
        "auth",
        "compression",
        "max_idle_conns",
        "max_idle_conns_per_host",
        "max_conns_per_host",
        "idle_conn_timeout",
        "disable_keep_alives",
        "http2_read_idle_timeout",
        "http2_ping_timeout",
        "cookies",
    }
)
_HTTP_SERVER = frozenset(
    {
        "endpoint",
        "tls",
        "cors",
        "auth",
        "max_request_body_size",
        "include_metadata",
        "response_headers",
        "compression_algorithms",
        "read_timeout",
        "read_header_timeout",
        "write_timeout",
        "idle_timeout",
    }
)
_GRPC_CLIENT = frozenset(
    {
        "endpoint",
        "compression",
        "tls",
        "keepalive",
        "read_buffer_size",
        "write_buffer_size",
        "wait_for_ready",
        "headers",
        "balancer_name",
        "authority",
        "auth",
    }
)
_GRPC_SERVER = frozenset(
    {
        "endpoint",
        "transport",
        "tls",
        "max_recv_msg_size_mib",
        "max_concurrent_streams",
        "read_buffer_size",
        "write_buffer_size",
        "keepalive",
        "auth",
        "include_metadata",
    }
)
_EXPORTER_HELPER = frozenset({"timeout", "sending_queue", "retry_on_failure"})
_RESOURCE_DETECTORS = frozenset(
    {
        "akamai",
        "aks",
        "alibaba_ecs",
        "azure",
        "azurecontainerapps",
        "consul",
        "digitalocean",
        "docker",
        "ec2",
        "ecs",
        "eks",
        "elasticbeanstalk",
        "env",
        "gcp",
        "heroku",
        "hetzner",
        "ibmcloud_classic",
        "ibmcloud_vpc",
        "k8s_api",
        "k8snode",
        "kubeadm",
        "lambda",
        "nova",
        "openshift",
        "oraclecloud",
        "scaleway",
        "system",
        "tencent_cvm",
        "upcloud",
        "vultr",
    }
)


@dataclass(frozen=True)
class Component:
    """A Collector component type: its top-level keys, the keys of some nested
    mappings (dotted path -> keys), and the pipeline signals it supports
    (empty for extensions)."""

    keys: frozenset[str]
    signals: frozenset[str] = frozenset()
    nested: dict[str, frozenset[str]] = field(default_factory=dict)


#: section -> component type -> Component
COLLECTOR_COMPONENTS: dict[str, dict[str, Component]] = {
    "receivers": {
        "otlp": Component(
            frozenset({"protocols"}),
            _ALL,
            {
                "protocols": frozenset({"grpc", "http"}),
                "protocols.grpc": _GRPC_SERVER,
                "protocols.http": _HTTP_SERVER
                | {"traces_url_path", "metrics_url_path", "logs_url_path"},
            },
        ),
        "prometheus": Component(
            frozenset(
                {
                    "config",
                    "trim_metric_suffixes",
                    "use_start_time_metric",
                    "start_time_metric_regex",
                    "report_extra_scrape_metrics",
                    "target_allocator",
                    "api_server",
                }
            ),
            _METRICS,
        ),
        "hostmetrics": Component(
            frozenset(
                {
                    "collection_interval",
                    "initial_delay",
                    "timeout",
                    "root_path",
                    "scrapers",
                    "metadata_collection_interval",
                }
            ),
            _METRICS,
        ),
    },
    "processors": {
        "batch": Component(
            frozenset(
                {
                    "timeout",
                    "send_batch_size",
                    "send_batch_max_size",
                    "metadata_keys",
                    "metadata_cardinality_limit",
                }
            ),
            _ALL,
        ),
        "memory_limiter": Component(
            frozenset(
                {
                    "check_interval",
                    "limit_mib",
                    "spike_limit_mib",
                    "limit_percentage",
                    "spike_limit_percentage",
                    "min_gc_interval_when_soft_limited",
                    "min_gc_interval_when_hard_limited",
                }
            ),
            _ALL,
        ),
        "resource": Component(frozenset({"attributes"}), _ALL),
        "attributes": Component(frozenset({"actions", "include", "exclude"}), _ALL),
        "resourcedetection": Component(
            frozenset(
                {
                    "detectors",
                    "override",
                    "refresh_interval",
                    "fail_on_missing_metadata",
                }
            )
            | _RESOURCE_DETECTORS
            | _HTTP_CLIENT,
            _ALL,
        ),
        "k8sattributes": Component(
            frozenset(
                {
                    "auth_type",
                    "context",
                    "passthrough",
                    "extract",
                    "filter",
                    "pod_association",
                    "exclude",
                    "wait_for_metadata",
                    "wait_for_metadata_timeout",
                }
            ),
            _ALL,
        ),
        "filter": Component(
            frozenset(
                {
                    "error_mode",
                    "spans",
                    "metrics",
                    "logs",
                    "traces",
                    "profiles",
                    "metric_conditions",
                    "log_conditions",
                    "trace_conditions",
                    "profile_conditions",
                }
            ),
            _ALL,
        ),
    },
    "exporters": {
        "debug": Component(
            frozenset(
                {
                    "verbosity",
                    "sampling_initial",
                    "sampling_thereafter",
                    "use_internal_logger",
                    "output",
                }
            ),
            _ALL,
        ),
        "otlp": Component(_GRPC_CLIENT | _EXPORTER_HELPER, _ALL),
        "otlphttp": Component(
            _HTTP_CLIENT
            | {
                "sending_queue",
                "retry_on_failure",
                "traces_endpoint",
                "metrics_endpoint",
                "logs_endpoint",
                "encoding",
            },
            _ALL,
        ),
        "prometheus": Component(
            _HTTP_SERVER
            | {
                "sending_queue",
                "namespace",
                "const_labels",
                "send_timestamps",
                "metric_expiration",
                "resource_to_telemetry_conversion",
                "enable_open_metrics",
                "add_metric_suffixes",
                "translation_strategy",
            },
            _METRICS,
        ),
        "prometheusremotewrite": Component(
            _HTTP_CLIENT
            | {
                "retry_on_failure",
                "namespace",
                "remote_write_queue",
                "external_labels",
                "resource_to_telemetry_conversion",
                "wal",
                "target_info",
                "export_created_metric",
                "add_metric_suffixes",
            },
            _METRICS,
        ),
    },
    "extensions": {
        "health_check": Component(
            _HTTP_SERVER | {"path", "response_body", "check_collector_pipeline"}
        ),
        "pprof": Component(
            frozenset(
                {"endpoint", "block_profile_fraction", "mutex_profile_fraction", "save_to_file"}
            )
        ),
        "zpages": Component(_HTTP_SERVER),
    },
    "connectors": {},
}
