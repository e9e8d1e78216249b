"""Rules files: read (YAML), collect (includes, lists, macros), compile (conditions,
parameters). Every problem is collected with its file, rule and key before
anything fails, Falco-style; the caller raises one ConfigError listing them all.

Two formats load:

- ours: a mapping with ``lists``, ``macros``, ``rules`` (each rule names a
  ``detector`` and its ``params``, an optional ``condition`` and
  ``exceptions``, ``severity``, ``cooldown_s``, ``resolve_after_s``,
  ``enabled``, ``tags``, ``message``, ``description``), optional
  ``include`` (other rules files, relative to this one) and ``expect`` (what
  ``otel-linnix rules test`` checks);
- Linnix's: a list (or ``rules:`` list) of ``{name, detector, threshold,
  duration | window_seconds, severity, cooldown}`` with Linnix's detector
  names, translated to ours.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import otel_linnix.rules.detectors  # noqa: F401 - fills DETECTORS
from otel_linnix.errors import ConfigError
from otel_linnix.rules.condition import Catalog, ConditionError, compile_condition
from otel_linnix.rules.model import DETECTORS, DetectorSpec, Param, Predicate, Rule, Severity

__all__ = ["Expectation", "RuleSet", "load_rules"]

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}\Z")
_RULE_KEYS = frozenset(
    {
        "name",
        "detector",
        "params",
        "condition",
        "exceptions",
        "severity",
        "cooldown_s",
        "resolve_after_s",
        "enabled",
        "tags",
        "message",
        "description",
    }
)
_TOP_KEYS = frozenset({"lists", "macros", "rules", "include", "expect"})
_DEFAULT_COOLDOWN_S = 60.0
_DEFAULT_RESOLVE_AFTER_S = 10.0
_MAX_INCLUDE_DEPTH = 8


@dataclass(frozen=True)
class Expectation:
    """An ``expect:`` item of a rules test file: how many alerts a rule raises."""

    rule: str
    min_count: int
    max_count: int | None
    origin: str


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    expectations: tuple[Expectation, ...] = ()
    files: tuple[str, ...] = field(default=())

    @property
    def enabled(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.enabled)


# ---- Linnix's format -------------------------------------------------------------


def _linnix_params(detector: str, raw: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | str:
    """(our detector, params) for a Linnix rule, or an error text."""
    if detector == "exec_rate":  # rate_per_min, not threshold
        return _linnix_exec_rate(raw)
    if detector in _LINNIX_UNSUPPORTED:
        why = _LINNIX_UNSUPPORTED[detector]
        return f"detector: Linnix detector {detector!r} is not supported {why}"
    threshold = raw.get("threshold", raw.get("threshold_pct"))
    window = raw.get("window_seconds", raw.get("duration"))
    if not isinstance(threshold, int | float) or isinstance(threshold, bool):
        return f"threshold: expected a number, got {threshold!r}"
    if window is not None and (not isinstance(window, int | float) or window <= 0):
        return f"duration/window_seconds: expected a positive number, got {window!r}"
    w = float(window or 5)
    t = float(threshold)
    table: dict[str, tuple[str, dict[str, Any]]] = {
        "forks_per_sec": ("fork_storm", {"threshold_per_s": t, "window_s": w}),
        "fork_burst": ("fork_storm", {"threshold_per_s": t / w, "window_s": w}),
        "runaway_tree": ("fork_storm", {"threshold_per_s": t / w, "window_s": w, "per": "parent"}),
        "short_job_flood": (
            "crash_loop",
            {
                "min_exits": max(1, int(t)),
                "window_s": w,
                "abnormal_only": False,
                "max_lifetime_ms": float(raw.get("max_exec_duration_ms", 1000)),
                "group_by": "comm",
            },
        ),
        "subtree_cpu_pct": ("cpu_spike", {"threshold_pct": t, "duration_s": w}),
        "subtree_rss_mb": ("rss_high", {"threshold_bytes": int(t * 1024 * 1024), "duration_s": w}),
        "system_psi_cpu": (
            "psi_pressure",
            {"resource": "cpu", "kind": "some", "threshold_pct": t, "duration_s": w},
        ),
        "system_psi_memory": (
            "psi_pressure",
            {"resource": "memory", "kind": "full", "threshold_pct": t, "duration_s": w},
        ),
        "system_psi_io": (
            "psi_pressure",
            {"resource": "io", "kind": "full", "threshold_pct": t, "duration_s": w},
        ),
    }
    if detector not in table:
        return f"unknown Linnix detector {detector!r} (known: {', '.join(sorted(table))})"
    return table[detector]


def _linnix_exec_rate(raw: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | str:
    rate = raw.get("rate_per_min")
    if not isinstance(rate, int | float) or isinstance(rate, bool):
        return f"rate_per_min: expected a number, got {rate!r}"
    return "crash_loop", {
        "min_exits": max(1, int(rate)),
        "window_s": 60.0,
        "abnormal_only": False,
        "max_lifetime_ms": float(raw.get("median_lifetime", 1)) * 1000,
        "group_by": "comm",
    }


# Zombies are processes the kernel has already reported exiting; the sampler
# reads live processes only, so no reading could ever count them.
_LINNIX_UNSUPPORTED = {
    "zombie_count": "(zombies have exited and are not sampled); remove the rule",
}


def _is_linnix(raw: Mapping[str, Any]) -> bool:
    return "params" not in raw and (
        "threshold" in raw or "rate_per_min" in raw or "threshold_pct" in raw
    )


# ---- checking values -------------------------------------------------------------


def _check_param(name: str, spec: Param, value: Any) -> tuple[Any, str | None]:
    if value is None:
        return None, None if spec.nullable else f"expected {spec.kind.__name__}, got null"
    if spec.kind is bool:
        ok = isinstance(value, bool)
    elif spec.kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif spec.kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            value = float(value)
            ok = math.isfinite(value)
    else:
        ok = isinstance(value, str)
    if not ok:
        return (
            value,
            f"expected {'a number' if spec.kind is float else spec.kind.__name__}, got {value!r}",
        )
    if spec.choices and value not in spec.choices:
        return value, f"expected one of {', '.join(spec.choices)}, got {value!r}"
    if spec.lo is not None and value < spec.lo:
        return value, f"expected at least {spec.lo:g}, got {value!r}"
    if spec.hi is not None and value > spec.hi:
        return value, f"expected at most {spec.hi:g}, got {value!r}"
    return value, None


class _Collector:
    """Gathers every problem of every file, then fails once."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def add(self, where: str, problem: str) -> None:
        self.errors.append(f"{where}: {problem}")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping: PyYAML would keep
    the last silently, and a list or rule overwritten that way is never seen."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} defined twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read(path: Path, errors: _Collector) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        errors.add(str(path), "rules file not found")
        return None
    except OSError as exc:
        errors.add(str(path), f"cannot read rules file: {exc.strerror}")
        return None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        errors.add(where, f"invalid YAML: {problem}")
        return None


@dataclass
class _Collected:
    lists: dict[str, Any] = field(default_factory=dict)
    macros: dict[str, Any] = field(default_factory=dict)
    rules: list[tuple[str, Any]] = field(default_factory=list)  # (file, raw rule)
    expect: list[tuple[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def _collect(
    path: Path, into: _Collected, errors: _Collector, depth: int, active: tuple[Path, ...] = ()
) -> None:
    """Read ``path`` and, depth first, what it includes. ``active`` is the chain of
    files being read, to name a cycle; a file reached twice otherwise (two files
    including one common file) is read once."""
    data = _read(path, errors)
    origin = str(path)
    into.files.append(origin)
    active = (*active, path.resolve())
    if data is None:
        return
    if isinstance(data, list):  # Linnix: a bare list of rules
        into.rules.extend((origin, r) for r in data)
        return
    if not isinstance(data, dict):
        errors.add(
            origin,
            f"expected a mapping with 'rules' (or a list of rules), got {type(data).__name__}",
        )
        return
    for key in data:
        if key not in _TOP_KEYS:
            errors.add(
                origin, f"{key}: unknown top-level key (known: {', '.join(sorted(_TOP_KEYS))})"
            )
    for inc in data.get("include") or []:
        if depth >= _MAX_INCLUDE_DEPTH:
            errors.add(origin, f"include: nested more than {_MAX_INCLUDE_DEPTH} deep")
            break
        if not isinstance(inc, str):
            errors.add(origin, f"include: expected a path, got {inc!r}")
            continue
        target = (path.parent / inc).resolve()
        if target in active:
            chain = " -> ".join(str(p) for p in (*active[active.index(target) :], target))
            errors.add(origin, f"include: {inc!r} is an include cycle ({chain})")
            continue
        if str(target) in into.files:
            continue
        _collect(target, into, errors, depth + 1, active)
    _collect_names(origin, "lists", data.get("lists"), into.lists, errors)
    _collect_names(origin, "macros", data.get("macros"), into.macros, errors)
    into.rules.extend((origin, r) for r in _list_of(origin, "rules", data, errors))
    into.expect.extend((origin, e) for e in _list_of(origin, "expect", data, errors))


def _collect_names(
    origin: str, section: str, raw: Any, target: dict[str, Any], errors: _Collector
) -> None:
    if raw is None:
        return
    if not isinstance(raw, dict):
        errors.add(origin, f"{section}: expected a mapping of names, got {type(raw).__name__}")
        return
    for name, value in raw.items():
        if name in target:
            errors.add(origin, f"{section}.{name}: defined twice")
        target[str(name)] = value


def _list_of(origin: str, key: str, data: dict[str, Any], errors: _Collector) -> list[Any]:
    value = data.get(key) or []
    if not isinstance(value, list):
        errors.add(origin, f"{key}: expected a list, got {type(value).__name__}")
        return []
    return value


# ---- compiling rules -------------------------------------------------------------


def _compile_condition(
    where: str, key: str, text: Any, catalog: Catalog, errors: _Collector
) -> Predicate | None:
    if not isinstance(text, str) or not text.strip():
        errors.add(where, f"{key}: expected a condition string, got {text!r}")
        return None
    try:
        return compile_condition(text, catalog)
    except ConditionError as exc:
        errors.add(where, f"{key}: {exc}")
        return None


def _detector_and_params(
    where: str, raw: dict[str, Any], errors: _Collector
) -> tuple[DetectorSpec, dict[str, Any]] | None:
    """The rule's detector and its checked parameters (Linnix rules translated)."""
    detector = raw.get("detector")
    params_raw: Any
    if _is_linnix(raw):
        translated = _linnix_params(str(detector), raw)
        if isinstance(translated, str):
            errors.add(
                where, translated if "detector" in translated else f"{translated} (Linnix format)"
            )
            return None
        detector, params_raw = translated
    else:
        for key in raw:
            if key not in _RULE_KEYS:
                errors.add(where, f"{key}: unknown key (known: {', '.join(sorted(_RULE_KEYS))})")
        params_raw = raw.get("params") or {}
    spec = DETECTORS.get(str(detector))
    if spec is None:
        errors.add(
            where,
            f"detector: unknown detector {detector!r} (known: {', '.join(sorted(DETECTORS))})",
        )
        return None
    if not isinstance(params_raw, dict):
        errors.add(where, f"params: expected a mapping, got {params_raw!r}")
        params_raw = {}
    for key in params_raw:
        if key not in spec.params:
            errors.add(
                where,
                f"params.{key}: unknown parameter of {spec.name} "
                f"(known: {', '.join(sorted(spec.params))})",
            )
    params: dict[str, Any] = {}
    for pname, pspec in spec.params.items():
        value, problem = _check_param(pname, pspec, params_raw.get(pname, pspec.default))
        if problem:
            errors.add(where, f"params.{pname}: {problem}")
        params[pname] = value
    return spec, params


def _seconds(where: str, key: str, raw: Any, default: float, errors: _Collector) -> float:
    if isinstance(raw, int | float) and not isinstance(raw, bool) and raw >= 0:
        return float(raw)
    errors.add(where, f"{key}: expected a number of seconds >= 0, got {raw!r}")
    return default


def _severity(where: str, raw: Any, errors: _Collector) -> Severity:
    try:
        return Severity[str(raw).upper()]
    except KeyError:
        errors.add(where, f"severity: expected info, low, medium, high or critical, got {raw!r}")
        return Severity.MEDIUM


def _conditions(
    where: str, raw: dict[str, Any], catalog: Catalog, errors: _Collector
) -> tuple[Predicate | None, tuple[Predicate, ...]]:
    condition = None
    if raw.get("condition") is not None:
        condition = _compile_condition(where, "condition", raw["condition"], catalog, errors)
    exceptions: list[Predicate] = []
    exc_raw = raw.get("exceptions") or []
    if not isinstance(exc_raw, list):
        errors.add(where, f"exceptions: expected a list, got {exc_raw!r}")
        exc_raw = []
    for i, item in enumerate(exc_raw):
        text = item.get("condition") if isinstance(item, dict) else item
        compiled = _compile_condition(where, f"exceptions[{i}]", text, catalog, errors)
        if compiled is not None:
            exceptions.append(compiled)
    return condition, tuple(exceptions)


def _rule(origin: str, index: int, raw: Any, catalog: Catalog, errors: _Collector) -> Rule | None:
    if not isinstance(raw, dict):
        errors.add(f"{origin}: rule #{index + 1}", f"expected a mapping, got {raw!r}")
        return None
    name = raw.get("name")
    where = f"{origin}: rule {name!r}" if isinstance(name, str) else f"{origin}: rule #{index + 1}"
    before = len(errors.errors)
    if not isinstance(name, str) or not _NAME.match(name):
        errors.add(where, f"name: expected letters, digits, '_', '.' or '-', got {name!r}")
    # An unknown detector still leaves the rule's other keys to check: report them all.
    found = _detector_and_params(where, raw, errors)
    severity = _severity(where, raw.get("severity", "medium"), errors)
    cooldown = _seconds(
        where,
        "cooldown_s",
        raw.get("cooldown", raw.get("cooldown_s", _DEFAULT_COOLDOWN_S)),
        _DEFAULT_COOLDOWN_S,
        errors,
    )
    resolve_after = _seconds(
        where,
        "resolve_after_s",
        raw.get("resolve_after_s", _DEFAULT_RESOLVE_AFTER_S),
        _DEFAULT_RESOLVE_AFTER_S,
        errors,
    )
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        errors.add(where, f"enabled: expected true or false, got {enabled!r}")
    tags = raw.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        errors.add(where, f"tags: expected a list of strings, got {tags!r}")
    message = raw.get("message", found[0].default_message if found else "")
    if not isinstance(message, str):
        errors.add(where, f"message: expected a string, got {message!r}")
    condition, exceptions = _conditions(where, raw, catalog, errors)
    if found is None or len(errors.errors) > before:
        return None
    spec, params = found
    return Rule(
        name=str(name),
        detector=spec.name,
        params=params,
        severity=severity,
        cooldown_s=max(cooldown, 0.1),
        message=str(message),
        description=str(raw.get("description", "") or ""),
        tags=tuple(tags),
        enabled=bool(enabled),
        condition_text=raw.get("condition"),
        condition=condition,
        exceptions=exceptions,
        origin=where,
        resolve_after_s=resolve_after,
    )


def _expectation(
    origin: str, index: int, raw: Any, names: set[str], errors: _Collector
) -> Expectation | None:
    where = f"{origin}: expect #{index + 1}"
    if not isinstance(raw, dict) or not isinstance(raw.get("rule"), str):
        errors.add(where, f"expected a mapping with 'rule', got {raw!r}")
        return None
    rule = raw["rule"]
    if rule not in names:
        errors.add(where, f"rule: no rule named {rule!r}")
    count = raw.get("count")
    hi = raw.get("max", count)
    # "max: 0" alone means "at most none"; with neither bound, at least one alert.
    lo = raw.get("min", count if count is not None else (0 if "max" in raw else 1))
    for key, value in (("min", lo), ("max", hi)):
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 0
        ):
            errors.add(where, f"{key}: expected a count >= 0, got {value!r}")
            return None
    if not isinstance(lo, int):
        return None
    if hi is not None and lo > hi:
        errors.add(where, f"min: {lo} is more than max {hi}")
        return None
    return Expectation(rule, lo, hi, where)


def load_rules(path: str | Path) -> RuleSet:
    """Load a rules file (and what it includes); ConfigError lists every problem."""
    errors = _Collector()
    collected = _Collected()
    _collect(Path(path), collected, errors, 0)
    catalog, catalog_errors = Catalog.build(collected.lists, collected.macros)
    first = collected.files[0] if collected.files else str(path)
    for problem in catalog_errors:
        errors.add(first, problem)
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, (origin, raw) in enumerate(collected.rules):
        rule = _rule(origin, index, raw, catalog, errors)
        if rule is None:
            continue
        if rule.name in seen:
            errors.add(rule.origin, "name: defined twice")
            continue
        seen.add(rule.name)
        rules.append(rule)
    names = {r.get("name") for _, r in collected.rules if isinstance(r, dict)}
    expectations = [
        e
        for i, (o, raw) in enumerate(collected.expect)
        if (e := _expectation(o, i, raw, {str(n) for n in names}, errors))
    ]
    if errors.errors:
        raise ConfigError("\n".join(errors.errors))
    return RuleSet(tuple(rules), tuple(expectations), tuple(collected.files))
