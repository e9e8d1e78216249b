"""linnix.toml and environment overrides -> frozen dataclasses.

Read once at start-up and passed down; nothing reads os.environ later. A bad
file, an unknown key or a wrong type is a ConfigError naming the file, the
key and what was expected; it is never replaced by a default. Keys that
Linnix accepts but this agent has no use for are accepted with a warning
(they are listed by ``check-config``), so a Linnix config keeps loading.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otel_linnix.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_API_BIND_ADDRESS",
    "ENV_API_TOKEN",
    "ENV_CONFIG",
    "ENV_KERNEL_BTF",
    "ENV_LLM_API_KEY",
    "ENV_LLM_ENDPOINT",
    "ENV_LLM_MODEL",
    "ApiConfig",
    "CaptureConfig",
    "Config",
    "ExportConfig",
    "LineageConfig",
    "LlmConfig",
    "PrivacyConfig",
    "ProcessTableConfig",
    "RulesConfig",
    "RuntimeConfig",
    "TelemetryConfig",
    "bundled_path",
    "load_config",
    "parse_bind_address",
]

DEFAULT_CONFIG_PATH = Path("/etc/linnix/linnix.toml")
ENV_CONFIG = "LINNIX_CONFIG"
ENV_LLM_ENDPOINT = "LLM_ENDPOINT"
ENV_LLM_MODEL = "LLM_MODEL"
ENV_LLM_API_KEY = "LLM_API_KEY"
ENV_KERNEL_BTF = "LINNIX_KERNEL_BTF"
ENV_API_TOKEN = "LINNIX_API_TOKEN"  # noqa: S105 - the variable's name, not a secret
ENV_API_BIND_ADDRESS = "LINNIX_API_BIND_ADDRESS"


def _spec(
    lo: float | None = None,
    hi: float | None = None,
    *,
    pow2: bool = False,
    choices: tuple[str, ...] = (),
    doc: str = "",
) -> dict[str, Any]:
    return {"lo": lo, "hi": hi, "pow2": pow2, "choices": choices, "doc": doc}


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    offline: bool = field(default=False, metadata=_spec(doc="no outbound calls at all"))


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    sample_interval_ms: int = field(default=1000, metadata=_spec(100, 60_000))
    sample_max_processes: int = field(default=20_000, metadata=_spec(1, 1_000_000))
    fd_limit_refresh_sweeps: int = field(default=30, metadata=_spec(1, 10_000))
    fd_count_refresh_sweeps: int = field(default=5, metadata=_spec(1, 1000))
    idle_refresh_sweeps: int = field(default=10, metadata=_spec(1, 1000))


@dataclass(frozen=True, slots=True)
class RulesConfig:
    enabled: bool = True
    # None: the default rules bundled with the agent.
    config_path: str | None = None


@dataclass(frozen=True, slots=True)
class ApiConfig:
    bind_address: str = "127.0.0.1:3000"
    # Required on every route but /health, /healthz, /readyz when set;
    # $LINNIX_API_TOKEN overrides.
    auth_token: str | None = None
    max_stream_clients: int = field(default=64, metadata=_spec(1, 1000))
    stream_queue_events: int = field(default=10_000, metadata=_spec(10, 1_000_000))
    stream_backlog_events: int = field(default=10_000, metadata=_spec(0, 1_000_000))
    heartbeat_interval_s: float = field(default=15.0, metadata=_spec(0.1, 300))


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    redact_argv: bool = True
    redact_flags: tuple[str, ...] = ()
    redact_patterns: tuple[str, ...] = field(default=(), metadata={"regex": True})


@dataclass(frozen=True, slots=True)
class LlmConfig:
    endpoint: str = "http://localhost:8090/v1/chat/completions"
    model: str = "qwen2.5-7b"
    timeout_secs: int = field(default=120, metadata=_spec(1, 3600))
    api_key: str | None = None


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    source: str = field(default="auto", metadata=_spec(choices=("auto", "ebpf", "procfs")))
    drain_interval_ms: int = field(default=100, metadata=_spec(10, 1000))
    wakeup_every: int = field(default=512, metadata=_spec(1, 1_000_000))
    ring_buffer_kib: int = field(default=8192, metadata=_spec(64, 1_048_576, pow2=True))
    argv_max_bytes: int = field(default=4096, metadata=_spec(128, 32_768, pow2=True))
    filename_max_bytes: int = field(default=512, metadata=_spec(64, 4096, pow2=True))
    kernel_threads: bool = False
    poll_interval_ms: int = field(default=1000, metadata=_spec(100, 60_000))
    max_processes: int = field(default=65_536, metadata=_spec(1024, 4_194_304))
    exit_overflow_entries: int = field(default=16_384, metadata=_spec(128, 1_048_576))
    btf_path: str = "/sys/kernel/btf/vmlinux"


@dataclass(frozen=True, slots=True)
class ProcessTableConfig:
    exited_retention_s: float = field(default=60.0, metadata=_spec(0, 86_400))
    max_entries: int = field(default=100_000, metadata=_spec(100, 10_000_000))


@dataclass(frozen=True, slots=True)
class ExportConfig:
    """OpenTelemetry export. The standard OTEL_* variables override these
    (resolved in ``otel_linnix.export.settings``, which validates them)."""

    # OTLP base endpoint for every signal; unset: no OTLP export at all.
    endpoint: str | None = None
    protocol: str = field(
        default="http/protobuf", metadata=_spec(choices=("grpc", "http/protobuf"))
    )
    # "key=value,key2=value2", as OTEL_EXPORTER_OTLP_HEADERS.
    headers: str = ""
    timeout_s: float = field(default=10.0, metadata=_spec(0.1, 300))
    # Per-signal endpoints (full URLs for http/protobuf, as OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT).
    metrics_endpoint: str | None = None
    logs_endpoint: str | None = None
    traces_endpoint: str | None = None
    service_name: str = "otel-linnix"
    # "key=value,...", as OTEL_RESOURCE_ATTRIBUTES.
    resource_attributes: str = ""
    # Signals: Prometheus /metrics, OTLP metrics, OTLP logs, OTLP process spans.
    prometheus: bool = True
    metrics: bool = True
    logs: bool = True
    traces: bool = False
    metrics_interval_s: float = field(default=10.0, metadata=_spec(1, 3600))
    # Cardinality budget: per-process series for the top N by CPU and by RSS
    # (plus processes a firing alert names); the rest per executable.
    top_processes: int = field(default=20, metadata=_spec(0, 10_000))
    # Log records: bounded queue, batch size, and a rate limit that exits bypass.
    logs_queue: int = field(default=20_000, metadata=_spec(100, 10_000_000))
    logs_batch: int = field(default=512, metadata=_spec(1, 100_000))
    logs_max_per_s: float = field(default=5_000.0, metadata=_spec(1, 1_000_000))
    # process.command_args on log records and spans (opt-in, as semconv says; redacted).
    command_args: bool = False
    # Process spans only under processes running these executables, or only
    # for these executables; both empty: every exec'd process.
    traces_subtree_executables: tuple[str, ...] = ()
    traces_executables: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LineageConfig:
    """Span-style process lineage ids (trace id from the lineage root)."""

    # Executables whose children start a unit of work (a new trace), besides
    # children of pid 1 and of container shims.
    spawners: tuple[str, ...] = (
        "sshd",
        "cron",
        "crond",
        "systemd",
        "containerd-shim",
        "containerd-shim-runc-v2",
        "conmon",
        "runc",
        "crun",
    )
    # Join a process tree to the trace in the W3C TRACEPARENT of its environment.
    traceparent: bool = True


@dataclass(frozen=True, slots=True)
class Config:
    runtime: RuntimeConfig = RuntimeConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    rules: RulesConfig = RulesConfig()
    api: ApiConfig = ApiConfig()
    llm: LlmConfig = LlmConfig()
    capture: CaptureConfig = CaptureConfig()
    process_table: ProcessTableConfig = ProcessTableConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    export: ExportConfig = ExportConfig()
    lineage: LineageConfig = LineageConfig()
    # Where the settings came from (None: embedded defaults) and what was
    # accepted but ignored, for check-config and the start-up log.
    source_path: str | None = None
    ignored_keys: tuple[str, ...] = ()

    def rules_path(self) -> Path:
        """The rules file to load: the configured one or the bundled defaults."""
        if self.rules.config_path is not None:
            return Path(self.rules.config_path)
        return bundled_path("config", "rules.yaml")


# Linnix spellings of keys we support under another name.
_ALIASES: Mapping[tuple[str, str], str] = {
    ("api", "listen_addr"): "bind_address",
    ("rules", "path"): "config_path",
    ("privacy", "redact_sensitive_data"): "redact_argv",
}
# Linnix keys with no meaning here: accepted, reported, otherwise ignored.
_LINNIX_IGNORED_SECTIONS = frozenset(
    {
        "logging",
        "reasoner",
        "outputs",
        "prometheus",
        "circuit_breaker",
        "notifications",
        "psi",
        "noise_budget",
        "probes",
    }
)
_LINNIX_IGNORED_KEYS = frozenset(
    {
        ("runtime", "cpu_target_pct"),
        ("runtime", "rss_cap_mb"),
        ("runtime", "events_rate_cap"),
        ("telemetry", "retention_seconds"),
        ("telemetry", "min_eps_to_enable"),
        ("api", "unix_socket"),
        ("api", "require_kernel_instrumentation"),
    }
)


def bundled_path(*parts: str) -> Path:
    """A file shipped with the agent: inside the installed package, or the source tree."""
    pkg = Path(__file__).resolve().parent
    for base in (pkg, pkg.parent):
        candidate = base.joinpath(*parts)
        if candidate.exists():
            return candidate
    return pkg.parent.joinpath(*parts)


def _type_name(tp: Any) -> str:
    return {
        "int": "an integer",
        "float": "a number",
        "bool": "true or false",
        "str": "a string",
        "str | None": "a string",
        "tuple[str, ...]": "a list of strings",
    }.get(str(tp), str(tp))


def _check_value(where: str, f: dataclasses.Field[Any], value: Any) -> tuple[Any, str | None]:
    tp = str(f.type)
    meta = f.metadata
    if tp == "bool":
        ok = isinstance(value, bool)
    elif tp == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp == "tuple[str, ...]":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        return value, f"{where}: expected {_type_name(tp)}, got {value!r}"
    if meta.get("regex"):
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                return value, f"{where}: invalid regular expression {pattern!r}: {exc}"
    lo, hi = meta.get("lo"), meta.get("hi")
    # TOML allows nan and inf, which compare false to any bound.
    nonfinite = isinstance(value, float) and not math.isfinite(value)
    if nonfinite or (lo is not None and value < lo) or (hi is not None and value > hi):
        return value, f"{where}: expected a value between {lo:g} and {hi:g}, got {value!r}"
    if meta.get("pow2") and value & (value - 1):
        return value, f"{where}: expected a power of two, got {value!r}"
    choices = meta.get("choices")
    if choices and value not in choices:
        return value, f"{where}: expected one of {', '.join(choices)}, got {value!r}"
    return value, None


def _build_section(
    cls: type[Any], name: str, table: Any, origin: str, *, errors: list[str], ignored: list[str]
) -> Any:
    if not isinstance(table, dict):
        errors.append(f"{origin}: [{name}]: expected a table, got {table!r}")
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        target = _ALIASES.get((name, key), key)
        where = f"{origin}: [{name}] {key}"
        if (name, key) in _LINNIX_IGNORED_KEYS:
            ignored.append(f"[{name}] {key}")
            continue
        if target not in fields:
            known = ", ".join(sorted(fields))
            errors.append(f"{where}: unknown key (known keys: {known})")
            continue
        checked, problem = _check_value(where, fields[target], value)
        if problem:
            errors.append(problem)
        else:
            values[target] = checked
    return cls(**values)


def _resolve_path(value: str | None, base: Path | None) -> str | None:
    if value is None or base is None or os.path.isabs(value):
        return value
    return str((base / value).resolve())


def parse_bind_address(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ValueError says what is wrong."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(f"expected host:port (e.g. 127.0.0.1:3000), got {value!r}")
    return host.strip("[]"), int(port_text)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_bind(origin: str, api: ApiConfig) -> None:
    try:
        host, _port = parse_bind_address(api.bind_address)
    except ValueError as exc:
        raise ConfigError(f"{origin}: [api] bind_address: {exc}") from None
    if not _is_loopback(host) and not api.auth_token:
        raise ConfigError(
            f"{origin}: [api] bind_address: refusing to serve the API on {api.bind_address} "
            f"without a token: set [api] auth_token or ${ENV_API_TOKEN}, or bind to 127.0.0.1"
        )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Load the configuration: ``path``, else $LINNIX_CONFIG, else the default
    path if it exists, else the embedded defaults. Raises ConfigError listing
    every problem, one per line."""
    env = os.environ if environ is None else environ
    explicit = path if path is not None else env.get(ENV_CONFIG)
    cfg_path: Path | None
    if explicit:
        cfg_path = Path(explicit)
    elif DEFAULT_CONFIG_PATH.exists():
        cfg_path = DEFAULT_CONFIG_PATH
    else:
        cfg_path = None

    origin = str(cfg_path) if cfg_path else "<embedded defaults>"
    data = _read_toml(cfg_path) if cfg_path is not None else {}

    errors: list[str] = []
    ignored: list[str] = []
    sections: dict[str, Any] = {}
    section_types = {
        f.name: f.type
        for f in dataclasses.fields(Config)
        if f.name not in ("source_path", "ignored_keys")
    }
    classes = {
        "runtime": RuntimeConfig,
        "telemetry": TelemetryConfig,
        "rules": RulesConfig,
        "api": ApiConfig,
        "llm": LlmConfig,
        "capture": CaptureConfig,
        "process_table": ProcessTableConfig,
        "privacy": PrivacyConfig,
        "export": ExportConfig,
        "lineage": LineageConfig,
    }
    for name, table in data.items():
        if name in _LINNIX_IGNORED_SECTIONS:
            ignored.append(f"[{name}]")
        elif name not in section_types:
            known = ", ".join(f"[{s}]" for s in sorted(section_types))
            errors.append(f"{origin}: [{name}]: unknown section (known sections: {known})")
        else:
            sections[name] = _build_section(
                classes[name], name, table, origin, errors=errors, ignored=ignored
            )
    if errors:
        raise ConfigError("\n".join(errors))

    base = cfg_path.resolve().parent if cfg_path else None
    rules = _checked_rules(sections.get("rules", RulesConfig()), base, origin)
    llm = sections.get("llm", LlmConfig())
    llm = dataclasses.replace(
        llm,
        endpoint=env.get(ENV_LLM_ENDPOINT, llm.endpoint),
        model=env.get(ENV_LLM_MODEL, llm.model),
        api_key=env.get(ENV_LLM_API_KEY, llm.api_key),
    )
    capture = sections.get("capture", CaptureConfig())
    if env.get(ENV_KERNEL_BTF):
        capture = dataclasses.replace(capture, btf_path=env[ENV_KERNEL_BTF])
    api = _api_with_env(sections.get("api", ApiConfig()), env, origin)
    sections["api"] = api
    sections["rules"] = rules
    sections["llm"] = llm
    sections["capture"] = capture
    return Config(
        **sections, source_path=str(cfg_path) if cfg_path else None, ignored_keys=tuple(ignored)
    )


def _checked_rules(rules: RulesConfig, base: Path | None, origin: str) -> RulesConfig:
    """[rules] with config_path resolved against the file's folder, and the
    rules file it will load checked to exist."""
    rules = dataclasses.replace(rules, config_path=_resolve_path(rules.config_path, base))
    if not rules.enabled:
        return rules
    if rules.config_path is not None:
        if not Path(rules.config_path).is_file():
            raise ConfigError(
                f"{origin}: [rules] config_path: rules file not found: {rules.config_path}"
            )
        return rules
    bundled = bundled_path("config", "rules.yaml")
    if not bundled.is_file():
        # An installation without the shipped rules (a partial copy of the
        # tree): say so at start-up rather than when the rules load.
        raise ConfigError(
            f"{origin}: [rules] config_path: unset, and the default rules file "
            f"is missing ({bundled}): set config_path or [rules] enabled = false"
        )
    return rules


def _api_with_env(api: ApiConfig, env: Mapping[str, str], origin: str) -> ApiConfig:
    """[api] with $LINNIX_API_BIND_ADDRESS and $LINNIX_API_TOKEN applied, and
    the bind address checked (a non-loopback one needs a token)."""
    if env.get(ENV_API_BIND_ADDRESS, "").strip():
        # Containers and units set the address without a file of their own; the
        # origin names the variable so a bad value is traced to it.
        api = dataclasses.replace(api, bind_address=env[ENV_API_BIND_ADDRESS].strip())
        origin = f"${ENV_API_BIND_ADDRESS} (over {origin})"
    if env.get(ENV_API_TOKEN, "").strip():
        api = dataclasses.replace(api, auth_token=env[ENV_API_TOKEN].strip())
    _check_bind(origin, api)
    return api
