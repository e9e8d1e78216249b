"""Rules files: the shipped defaults, every problem reported at once, includes,
lists and macros, Linnix's format translated, and ``expect:`` blocks."""

from __future__ import annotations

import string
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from otel_linnix.errors import ConfigError
from otel_linnix.rules import condition as condition_module
from otel_linnix.rules.condition import Catalog
from otel_linnix.rules.loader import Expectation, RuleSet, load_rules
from otel_linnix.rules.model import DETECTORS, Severity, render_message
from tests.unit.conftest import FIXTURES

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "config" / "rules.yaml"
RULE_FIXTURES = FIXTURES / "rules"
THREE_MISTAKES = RULE_FIXTURES / "three_mistakes.yaml"
LINNIX_DEMO = RULE_FIXTURES / "linnix_demo.yaml"
MIB = 1024 * 1024


def write(directory: Path, text: str, name: str = "rules.yaml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def problems(path: Path) -> list[str]:
    """Every line of the one ConfigError that loading ``path`` raises."""
    with pytest.raises(ConfigError) as info:
        load_rules(path)
    return str(info.value).splitlines()


class DictFacts:
    """Condition facts backed by a dict; a missing key is an absent value."""

    def __init__(self, **values: str | int) -> None:
        self._values = values

    def get(self, name: str) -> str | int | None:
        return self._values.get(name.replace(".", "_"))


# ---- the shipped defaults --------------------------------------------------------------


SHIPPED_RULES = {
    "fork_storm": "fork_storm",
    "fork_storm_by_parent": "fork_storm",
    "runaway_tree": "runaway_tree",
    "crash_loop": "crash_loop",
    "cpu_spike": "cpu_spike",
    "runaway_process": "runaway_process",
    "memory_leak": "memory_leak",
    "fd_exhaustion": "fd_exhaustion",
    "oom_kill": "oom_kill",
    "cpu_thrashing": "cpu_thrashing",
}


def test_shipped_rules_load_ten_enabled_rules() -> None:
    ruleset = load_rules(SHIPPED)
    assert isinstance(ruleset, RuleSet)
    assert ruleset.files == (str(SHIPPED),)
    assert ruleset.expectations == ()
    assert {r.name: r.detector for r in ruleset.rules} == SHIPPED_RULES
    assert len(ruleset.rules) == 10
    assert ruleset.enabled == ruleset.rules
    for rule in ruleset.rules:
        assert rule.origin == f"{SHIPPED}: rule {rule.name!r}"
        assert rule.cooldown_s >= 60
        assert rule.resolve_after_s == 10.0
        assert rule.tags, rule.name
        assert rule.description.strip(), rule.name
        # Every parameter of the detector is filled (given or default).
        assert set(rule.params) == set(DETECTORS[rule.detector].params)
    by_name = {r.name: r for r in ruleset.rules}
    assert by_name["fork_storm"].params["per"] == "host"
    assert by_name["fork_storm_by_parent"].params["per"] == "parent"


def test_shipped_build_tool_conditions_select_what_they_say() -> None:
    by_name = {r.name: r for r in load_rules(SHIPPED).rules}
    crash_loop, cpu_spike = by_name["crash_loop"], by_name["cpu_spike"]
    compiler = DictFacts(comm="cc1", parent_comm="make")
    under_make = DictFacts(comm="sh", parent_comm="make")
    installer = DictFacts(comm="sh", parent_comm="apt-get")
    service = DictFacts(comm="nginx", parent_comm="systemd")
    assert not crash_loop.matches(compiler)
    assert not crash_loop.matches(under_make)
    assert not crash_loop.matches(installer)
    assert crash_loop.matches(service)
    assert not cpu_spike.matches(compiler)
    assert cpu_spike.matches(service)


# What each detector puts in a finding's evidence (detectors_events.py and
# detectors_samples.py), with plausible values, and the subject it names.
_PROCESS = {"pid": 4242, "comm": "leaker", "exe": "/opt/app/leaker", "container": None}
EVIDENCE: dict[str, tuple[dict[str, Any], Mapping[str, Any]]] = {
    "fork_storm": (
        {
            "rate": 412.6,
            "count": 2063,
            "window_s": 5.0,
            "threshold_per_s": 300.0,
            "top_parents": "bash(100)=2000, make(200)=40",
        },
        {"pid": None, "comm": None, "exe": None, "container": None},
    ),
    "fork_storm_by_parent": (
        {
            "rate": 250.0,
            "count": 1250,
            "window_s": 5.0,
            "threshold_per_s": 200.0,
            "pid": 100,
            "comm": "bash",
        },
        {"pid": 100, "comm": "bash", "exe": "/usr/bin/bash", "container": None},
    ),
    "runaway_tree": (
        {
            "births": 1800,
            "rate": 360.0,
            "live_descendants": 1700,
            "window_s": 5.0,
            "births_per_s": 150.0,
            "max_live_descendants": 1500,
            "trigger": "births",
            "top_child_share": 0.5,
            "pid": 300,
            "comm": "bomb",
        },
        {"pid": 300, "comm": "bomb", "exe": "/usr/bin/bash", "container": None},
    ),
    "crash_loop": (
        {
            "exits": 9,
            "window_s": 30.0,
            "min_exits": 8,
            "abnormal_only": True,
            "max_lifetime_ms": None,
            "last_status": "signal SIGSEGV (core dumped)",
            "last_pids": "5009,5008,5007,5006,5005",
            "executable": "/opt/app/flaky",
        },
        {"pid": None, "comm": "flaky", "exe": "/opt/app/flaky", "container": None},
    ),
    "cpu_spike": (
        {
            "cpu_percent": 99.2,
            "avg_cpu_percent": 98.7,
            "threshold_pct": 90.0,
            "since_s": 21.0,
            "duration_s": 20.0,
            "pid": 4242,
            "comm": "spin",
        },
        {**_PROCESS, "comm": "spin"},
    ),
    "runaway_process": (
        {
            "cpu_percent": 100.0,
            "avg_cpu_percent": 99.9,
            "threshold_pct": 95.0,
            "since_s": 61.0,
            "duration_s": 60.0,
            "pid": 4242,
            "comm": "spin",
        },
        {**_PROCESS, "comm": "spin"},
    ),
    "memory_leak": (
        {
            "rate_bytes_per_s": 20.0 * MIB,
            "growth_bytes": 180 * MIB,
            "r2": 0.999,
            "rss_bytes": 400 * MIB,
            "samples": 10,
            "span_s": 9.0,
            "window_s": 30.0,
            "min_growth_bytes": 50 * MIB,
            "min_rate_bytes_per_s": float(MIB),
            "min_r2": 0.9,
            "growth_mib": 180.0,
            "rss_mib": 400.0,
            "rate_mib_per_s": 20.0,
            "pid": 4242,
            "comm": "leaker",
        },
        _PROCESS,
    ),
    "fd_exhaustion": (
        {
            "fds": 700,
            "limit": 1024,
            "ratio_used": 0.68,
            "rate_per_s": 20.0,
            "eta_s": 16.2,
            "outlook": "limit in 16 s at 20.0/s",
            "trigger": "trend",
            "ratio": 0.8,
            "horizon_s": 60.0,
            "window_s": 30.0,
            "pid": 4242,
            "comm": "fdhog",
        },
        {**_PROCESS, "comm": "fdhog"},
    ),
    "oom_kill": (
        {
            "pid": 4242,
            "comm": "leaker",
            "rss_bytes": 900 * MIB,
            "resident": "900 MiB",
            "container_id": None,
            "hold_s": 5.0,
        },
        _PROCESS,
    ),
    "cpu_thrashing": (
        {
            "measure": "psi_cpu_some_pct",
            "figure": 91.5,
            "threshold": 80.0,
            "load1": 7.5,
            "cpus": 2,
            "since_s": 61.0,
            "duration_s": 60.0,
            "top_consumers": "spin(4242) 100%, spin(4243) 99%",
        },
        {"pid": None, "comm": None, "exe": None, "container": None},
    ),
}


@pytest.mark.parametrize("name", sorted(SHIPPED_RULES))
def test_shipped_messages_only_use_what_the_engine_provides(name: str) -> None:
    rule = next(r for r in load_rules(SHIPPED).rules if r.name == name)
    evidence, subject = EVIDENCE[name]
    # What docs/rules.md promises a template: evidence, pid, comm, exe, container, rule, value.
    values = {**evidence, **subject, "rule": rule.name, "value": 1.0}
    used = {field for _, field, _, _ in string.Formatter().parse(rule.message) if field}
    assert used <= set(values), f"{name}: {sorted(used - set(values))} are never provided"
    text = render_message(rule.message, values)
    assert "{" not in text and "}" not in text, text
    assert "None" not in text, text
    assert text != rule.message


def test_shipped_messages_format_numbers() -> None:
    rules = {r.name: r for r in load_rules(SHIPPED).rules}

    def render(name: str) -> str:
        evidence, subject = EVIDENCE[name]
        return render_message(rules[name].message, {**evidence, **subject, "rule": name})

    assert render("fork_storm") == (
        "413 processes/s created over 5 s (threshold 300/s); "
        "top parents: bash(100)=2000, make(200)=40"
    )
    assert render("memory_leak") == (
        "leaker (4242) RSS grows 20.0 MiB/s (+180 MiB in 9 s, R² 1.00), now 400 MiB"
    )
    assert render("crash_loop") == (
        "/opt/app/flaky exited abnormally 9 times in 30 s "
        "(last: signal SIGSEGV (core dumped); pids 5009,5008,5007,5006,5005)"
    )


# ---- every problem, with its file, rule and key -----------------------------------------


def test_three_mistakes_are_reported_together_in_one_error() -> None:
    lines = problems(THREE_MISTAKES)
    assert len(lines) == 3, lines
    where = f"{THREE_MISTAKES}: rule"
    assert lines[0] == f"{where} 'slow_oom': params.hold_s: expected a number, got 'a minute'"
    assert lines[1].startswith(f"{where} 'bomb': detector: unknown detector 'fork_bomb' (known: ")
    assert "crash_loop" in lines[1]
    assert lines[2] == f"{where} 'crashes': condition: at column 5: unknown field 'procname'"


def test_every_problem_of_one_rule_is_reported_even_with_an_unknown_detector(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        """
        rules:
          - name: broken
            detector: fork_bomb
            severity: urgent
            cooldown_s: -1
            condition: procname = make
        """,
    )
    lines = problems(path)
    where = f"{path}: rule 'broken'"
    assert lines[0].startswith(f"{where}: detector: unknown detector 'fork_bomb'")
    assert any(line.startswith(f"{where}: severity: ") for line in lines), lines
    assert any(line.startswith(f"{where}: cooldown_s: ") for line in lines), lines
    assert any(line.startswith(f"{where}: condition: ") for line in lines), lines
    assert len(lines) == 4, lines


_RULE = "  - name: r\n    detector: oom_kill\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            f"rules:\n{_RULE}rulez: []\n",
            "rulez: unknown top-level key (known: expect, include, lists, macros, rules)",
        ),
        (
            f"rules:\n{_RULE}    sevrity: high\n",
            "rule 'r': sevrity: unknown key (known: condition, cooldown_s, ",
        ),
        (
            f"rules:\n{_RULE}    params: {{hold: 5}}\n",
            "rule 'r': params.hold: unknown parameter of oom_kill (known: hold_s)",
        ),
        (f"rules:\n{_RULE}{_RULE}", "rule 'r': name: defined twice"),
        (
            f"rules:\n{_RULE}    severity: urgent\n",
            "rule 'r': severity: expected info, low, medium, high or critical, got 'urgent'",
        ),
        (
            f"rules:\n{_RULE}    cooldown_s: -5\n",
            "rule 'r': cooldown_s: expected a number of seconds >= 0, got -5",
        ),
        (
            f"rules:\n{_RULE}    resolve_after_s: '10'\n",
            "rule 'r': resolve_after_s: expected a number of seconds >= 0, got '10'",
        ),
        (
            f"rules:\n{_RULE}    tags: [memory, 7]\n",
            "rule 'r': tags: expected a list of strings, got ['memory', 7]",
        ),
        (f"rules:\n{_RULE}    tags: memory\n", "rule 'r': tags: expected a list of strings"),
        (
            f"rules:\n{_RULE}    enabled: 'yes'\n",
            "rule 'r': enabled: expected true or false, got 'yes'",
        ),
        (f"rules:\n{_RULE}    message: [a]\n", "rule 'r': message: expected a string, got ['a']"),
        (
            f"macros:\n  build_job: comm = make\nrules:\n{_RULE}    condition: not build_jobs\n",
            "rule 'r': condition: at column 5: unknown macro 'build_jobs'",
        ),
        (
            f"rules:\n{_RULE}    condition: ''\n",
            "rule 'r': condition: expected a condition string, got ''",
        ),
        (
            f"rules:\n{_RULE}    exceptions:\n"
            "      - comm = a\n"
            "      - {name: ci, condition: 'parent.nope = b'}\n",
            "rule 'r': exceptions[1]: at column 1: unknown field 'parent.nope'",
        ),
        (
            f"rules:\n{_RULE}    exceptions: comm = a\n",
            "rule 'r': exceptions: expected a list, got 'comm = a'",
        ),
        (
            "rules:\n  - name: r\n    detector: fork_storm\n    params: {per: cluster}\n",
            "rule 'r': params.per: expected one of host, parent, got 'cluster'",
        ),
        (
            "rules:\n  - name: r\n    detector: fork_storm\n    params: {window_s: 0.1}\n",
            "rule 'r': params.window_s: expected at least 0.5, got 0.1",
        ),
        (
            "rules:\n  - name: r\n    detector: crash_loop\n    params: {abnormal_only: 1}\n",
            "rule 'r': params.abnormal_only: expected bool, got 1",
        ),
        (f"rules:\n{_RULE}    params: [1]\n", "rule 'r': params: expected a mapping, got [1]"),
        (
            "rules:\n  - name: has space\n    detector: oom_kill\n",
            "rule 'has space': name: expected letters, digits, '_', '.' or '-', got 'has space'",
        ),
        ("rules:\n  - oom_kill\n", "rule #1: expected a mapping, got 'oom_kill'"),
        ("rules: {r: 1}\n", "rules: expected a list, got dict"),
        ("lists: [a]\n", "lists: expected a mapping of names, got list"),
        ("just text\n", "expected a mapping with 'rules' (or a list of rules), got str"),
    ],
    ids=[
        "unknown-top-level-key",
        "unknown-rule-key",
        "unknown-param",
        "duplicate-rule",
        "bad-severity",
        "negative-cooldown",
        "resolve-after-not-a-number",
        "tags-not-strings",
        "tags-not-a-list",
        "enabled-not-bool",
        "message-not-text",
        "unknown-macro",
        "empty-condition",
        "bad-exception",
        "exceptions-not-a-list",
        "param-choice",
        "param-below-bound",
        "param-type-bool",
        "params-not-a-mapping",
        "bad-name",
        "rule-not-a-mapping",
        "rules-not-a-list",
        "lists-not-a-mapping",
        "not-a-mapping",
    ],
)
def test_each_mistake_is_one_line_naming_file_rule_and_key(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = write(tmp_path, text)
    lines = problems(path)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}: {problem}"), lines[0]


def test_exceptions_as_conditions_and_as_named_items(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        rules:
          - name: r
            detector: crash_loop
            condition: comm startswith w
            exceptions:
              - comm = worker-probe
              - {name: ci, condition: parent.comm = gitlab-runner}
        """,
    )
    (rule,) = load_rules(path).rules
    assert len(rule.exceptions) == 2
    assert rule.matches(DictFacts(comm="worker", parent_comm="bash"))
    assert not rule.matches(DictFacts(comm="worker-probe", parent_comm="bash"))
    assert not rule.matches(DictFacts(comm="worker", parent_comm="gitlab-runner"))
    assert not rule.matches(DictFacts(comm="server", parent_comm="bash"))


def test_a_rule_with_every_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        rules:
          - name: flaky.v2-probe
            detector: crash_loop
            params: {min_exits: 3, window_s: 10}
            condition: exe glob "/opt/*"
            severity: Critical
            cooldown_s: 0
            resolve_after_s: 2.5
            enabled: false
            tags: [reliability]
            description: dies a lot
            message: "{exe} died {exits} times"
        """,
    )
    ruleset = load_rules(path)
    (rule,) = ruleset.rules
    assert ruleset.enabled == ()
    assert rule.name == "flaky.v2-probe"
    assert rule.params["min_exits"] == 3
    assert rule.params["window_s"] == 10.0
    assert isinstance(rule.params["window_s"], float)
    assert rule.params["abnormal_only"] is True  # default filled
    assert rule.severity is Severity.CRITICAL
    assert rule.cooldown_s == 0.1  # zero is raised to the smallest cooldown
    assert rule.resolve_after_s == 2.5
    assert rule.enabled is False
    assert rule.tags == ("reliability",)
    assert rule.description == "dies a lot"
    assert rule.message == "{exe} died {exits} times"
    assert rule.condition_text == 'exe glob "/opt/*"'


def test_a_rule_without_message_gets_the_detectors_default(tmp_path: Path) -> None:
    path = write(tmp_path, f"rules:\n{_RULE}")
    (rule,) = load_rules(path).rules
    assert rule.message == DETECTORS["oom_kill"].default_message
    assert rule.severity is Severity.MEDIUM
    assert rule.cooldown_s == 60.0
    assert rule.params == {"hold_s": 60.0}


# ---- lists and macros ------------------------------------------------------------------


def test_lists_and_macros_are_compiled_once_and_shared_by_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[str] = []

    class CountingParser(condition_module._Parser):
        def __init__(self, text: str, catalog: Catalog, macro_stack: tuple[str, ...]) -> None:
            parsed.append(text)
            super().__init__(text, catalog, macro_stack)

    monkeypatch.setattr(condition_module, "_Parser", CountingParser)
    path = write(
        tmp_path,
        """
        lists:
          compilers: [cc1, gcc]
          build_tools: [make, compilers]
        macros:
          build_job: comm in (build_tools) or parent.comm in (build_tools)
        rules:
          - {name: a, detector: crash_loop, condition: not build_job}
          - {name: b, detector: cpu_spike, condition: not build_job and uid >= 1000}
          - {name: c, detector: rss_high, exceptions: [build_job]}
        """,
    )
    rules = {r.name: r for r in load_rules(path).rules}
    macro_text = "comm in (build_tools) or parent.comm in (build_tools)"
    assert parsed.count(macro_text) == 1, parsed
    assert sorted(parsed) == sorted(
        [macro_text, "not build_job", "not build_job and uid >= 1000", "build_job"]
    )
    gcc_under_bash = DictFacts(comm="gcc", parent_comm="bash", uid=1000)
    sh_under_make = DictFacts(comm="sh", parent_comm="make", uid=1000)
    service = DictFacts(comm="nginx", parent_comm="systemd", uid=1000)
    for facts, counted in ((gcc_under_bash, False), (sh_under_make, False), (service, True)):
        assert rules["a"].matches(facts) is counted
        assert rules["b"].matches(facts) is counted
        assert rules["c"].matches(facts) is counted


def test_duplicate_list_across_included_files(tmp_path: Path) -> None:
    write(tmp_path, "lists:\n  tools: [gcc]\n", "extra.yaml")
    path = write(tmp_path, f"include: [extra.yaml]\nlists:\n  tools: [make]\nrules:\n{_RULE}")
    assert problems(path) == [f"{path}: lists.tools: defined twice"]


def test_duplicate_list_in_one_file_is_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"lists:\n  tools: [make]\n  tools: [gcc]\nrules:\n{_RULE}    condition: comm in (tools)\n",
    )
    lines = problems(path)
    assert any("tools" in line and "twice" in line for line in lines), lines


def test_lists_and_macros_problems_name_the_entry(tmp_path: Path) -> None:
    path = write(
        tmp_path, f"lists:\n  tools: make\nmacros:\n  loop: loop or comm = a\nrules:\n{_RULE}"
    )
    lines = problems(path)
    assert lines == [
        f"{path}: list 'tools': expected a sequence of strings or numbers, got 'make'",
        f"{path}: macro 'loop': uses itself",
    ]


# ---- includes ----------------------------------------------------------------------------


def test_include_is_relative_to_the_including_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = write(
        tmp_path,
        """
        lists:
          build_tools: [make, gcc]
        macros:
          build_job: comm in (build_tools)
        rules:
          - {name: shared_oom, detector: oom_kill}
        """,
        "shared/common.yaml",
    )
    main = write(
        tmp_path,
        """
        include: [../shared/common.yaml]
        rules:
          - {name: spikes, detector: cpu_spike, condition: not build_job}
        """,
        "site/rules.yaml",
    )
    monkeypatch.chdir(tmp_path / "shared")  # neither the cwd nor the including file's dir
    ruleset = load_rules(main)
    assert [r.name for r in ruleset.rules] == ["shared_oom", "spikes"]
    assert ruleset.files == (str(main), str(common.resolve()))
    origins = {r.name: r.origin for r in ruleset.rules}
    assert origins["shared_oom"] == f"{common.resolve()}: rule 'shared_oom'"
    assert origins["spikes"] == f"{main}: rule 'spikes'"
    spikes = ruleset.rules[1]
    assert not spikes.matches(DictFacts(comm="gcc"))
    assert spikes.matches(DictFacts(comm="nginx"))


def test_include_problems_name_the_included_file(tmp_path: Path) -> None:
    write(tmp_path, "rules:\n  - {name: x, detector: nope}\n", "inc/bad.yaml")
    main = write(tmp_path, f"include: [inc/bad.yaml, inc/missing.yaml, 7]\nrules:\n{_RULE}")
    bad = (tmp_path / "inc" / "bad.yaml").resolve()
    missing = (tmp_path / "inc" / "missing.yaml").resolve()
    lines = problems(main)
    assert f"{missing}: rules file not found" in lines
    assert f"{main}: include: expected a path, got 7" in lines
    assert any(line.startswith(f"{bad}: rule 'x': detector: unknown detector") for line in lines)
    assert len(lines) == 3, lines


def test_include_chain_deeper_than_the_limit(tmp_path: Path) -> None:
    for depth in range(12):
        write(tmp_path, f"include: [level{depth + 1}.yaml]\n", f"level{depth}.yaml")
    write(tmp_path, f"rules:\n{_RULE}", "level12.yaml")
    lines = problems(tmp_path / "level0.yaml")
    assert len(lines) == 1, lines
    assert lines[0].endswith("level8.yaml: include: nested more than 8 deep"), lines[0]


def test_include_cycle_is_an_error(tmp_path: Path) -> None:
    a = write(tmp_path, f"include: [b.yaml]\nrules:\n{_RULE}", "a.yaml")
    write(tmp_path, "include: [a.yaml]\n", "b.yaml")
    lines = problems(a)
    assert any("include: 'a.yaml' is an include cycle" in line for line in lines), lines


def test_include_cycle_is_reported_without_false_duplicates(tmp_path: Path) -> None:
    a = write(tmp_path, f"include: [b.yaml]\nlists:\n  tools: [make]\nrules:\n{_RULE}", "a.yaml")
    write(tmp_path, "include: [a.yaml]\n", "b.yaml")
    lines = problems(a)
    assert any("include" in line for line in lines), lines
    # Each list and rule is written once: a cycle must not report them as duplicates.
    assert not [line for line in lines if "defined twice" in line], lines


# ---- unreadable files ---------------------------------------------------------------------


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "rules:\n  - name: r\n    detector: oom_kill\n   severity: high\n")
    lines = problems(path)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}:4: invalid YAML: "), lines[0]


def test_invalid_yaml_in_an_included_file(tmp_path: Path) -> None:
    write(tmp_path, "rules: [\n", "broken.yaml")
    main = write(tmp_path, f"include: [broken.yaml]\nrules:\n{_RULE}")
    lines = problems(main)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{(tmp_path / 'broken.yaml').resolve()}:2: invalid YAML: ")


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert problems(missing) == [f"{missing}: rules file not found"]


def test_a_directory_is_not_a_rules_file(tmp_path: Path) -> None:
    lines = problems(tmp_path)
    assert len(lines) == 1
    assert lines[0].startswith(f"{tmp_path}: cannot read rules file: ")


# ---- Linnix's format ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("linnix", "detector", "params"),
    [
        (
            {"detector": "forks_per_sec", "threshold": 10, "duration": 2},
            "fork_storm",
            {"threshold_per_s": 10.0, "window_s": 2.0, "per": "host"},
        ),
        (
            {"detector": "fork_burst", "threshold": 30, "window_seconds": 5},
            "fork_storm",
            {"threshold_per_s": 6.0, "window_s": 5.0, "per": "host"},
        ),
        (
            {"detector": "runaway_tree", "threshold": 50, "window_seconds": 10},
            "fork_storm",
            {"threshold_per_s": 5.0, "window_s": 10.0, "per": "parent"},
        ),
        (
            {
                "detector": "short_job_flood",
                "threshold": 20,
                "window_seconds": 10,
                "max_exec_duration_ms": 500,
            },
            "crash_loop",
            {
                "min_exits": 20,
                "window_s": 10.0,
                "abnormal_only": False,
                "max_lifetime_ms": 500.0,
                "group_by": "comm",
            },
        ),
        (
            {"detector": "short_job_flood", "threshold": 20, "window_seconds": 10},
            "crash_loop",
            {
                "min_exits": 20,
                "window_s": 10.0,
                "abnormal_only": False,
                "max_lifetime_ms": 1000.0,
                "group_by": "comm",
            },
        ),
        (
            # Linnix's ExecRate: {regex, rate_per_min, median_lifetime}, no threshold.
            {
                "detector": "exec_rate",
                "regex": ".*",
                "rate_per_min": 120,
                "median_lifetime": 2,
            },
            "crash_loop",
            {
                "min_exits": 120,
                "window_s": 60.0,
                "abnormal_only": False,
                "max_lifetime_ms": 2000.0,
                "group_by": "comm",
            },
        ),
        (
            {"detector": "subtree_cpu_pct", "threshold": 50, "duration": 5},
            "cpu_spike",
            {"threshold_pct": 50.0, "duration_s": 5.0},
        ),
        (
            {"detector": "subtree_rss_mb", "threshold": 100, "duration": 5},
            "rss_high",
            {"threshold_bytes": 100 * MIB, "duration_s": 5.0},
        ),
        (
            {"detector": "system_psi_cpu", "threshold_pct": 60, "duration": 15},
            "psi_pressure",
            {"resource": "cpu", "kind": "some", "threshold_pct": 60.0, "duration_s": 15.0},
        ),
        (
            {"detector": "system_psi_memory", "threshold_pct": 20.5, "duration": 10},
            "psi_pressure",
            {"resource": "memory", "kind": "full", "threshold_pct": 20.5, "duration_s": 10.0},
        ),
        (
            {"detector": "system_psi_io", "threshold_pct": 30, "duration": 60},
            "psi_pressure",
            {"resource": "io", "kind": "full", "threshold_pct": 30.0, "duration_s": 60.0},
        ),
    ],
    ids=lambda v: v["detector"] if isinstance(v, dict) and "detector" in v else None,
)
def test_linnix_detectors_are_translated(
    tmp_path: Path, linnix: dict[str, Any], detector: str, params: dict[str, Any]
) -> None:
    lines = [f"- name: {linnix['detector']}_rule", "  severity: High", "  cooldown: 45"]
    lines += [f"  {key}: {value!r}" for key, value in linnix.items()]
    path = write(tmp_path, "\n".join(lines) + "\n")
    (rule,) = load_rules(path).rules
    assert rule.detector == detector
    assert dict(rule.params) == params
    assert rule.severity is Severity.HIGH
    assert rule.cooldown_s == 45.0
    assert rule.message == DETECTORS[detector].default_message
    assert rule.enabled


def test_linnix_demo_file_loads() -> None:
    ruleset = load_rules(LINNIX_DEMO)
    assert [(r.name, r.detector, r.severity) for r in ruleset.rules] == [
        ("fork_storm_demo", "fork_storm", Severity.HIGH),
        ("fork_burst_demo", "fork_storm", Severity.MEDIUM),
        ("memory_leak_demo", "rss_high", Severity.HIGH),
        ("cpu_spike_demo", "cpu_spike", Severity.MEDIUM),
    ]
    assert all(r.cooldown_s == 30.0 for r in ruleset.rules)
    assert ruleset.rules[2].params["threshold_bytes"] == 50 * MIB


def test_linnix_rules_under_a_rules_key_mix_with_ours(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        rules:
          - {name: theirs, detector: subtree_rss_mb, threshold: 5, duration: 10}
          - {name: ours, detector: rss_high, params: {threshold_bytes: 5242880, duration_s: 10}}
        """,
    )
    theirs, ours = load_rules(path).rules
    assert theirs.detector == ours.detector == "rss_high"
    assert theirs.params == ours.params


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (
            "detector: fork_bombs\n  threshold: 5",
            "rule 'x': unknown Linnix detector 'fork_bombs' (known: ",
        ),
        (
            "detector: zombie_count\n  threshold: 5",
            "rule 'x': detector: Linnix detector 'zombie_count' is not supported (zombies have "
            "exited and are not sampled); remove the rule",
        ),
        (
            "detector: forks_per_sec\n  threshold: lots",
            "rule 'x': threshold: expected a number, got 'lots' (Linnix format)",
        ),
        (
            "detector: forks_per_sec\n  threshold: 5\n  duration: 0",
            "rule 'x': duration/window_seconds: expected a positive number, got 0 (Linnix format)",
        ),
        (
            "detector: forks_per_sec\n  threshold: 5\n  cooldown: -1",
            "rule 'x': cooldown_s: expected a number of seconds >= 0, got -1",
        ),
    ],
    ids=[
        "unknown-detector",
        "zombies",
        "threshold-not-a-number",
        "zero-window",
        "negative-cooldown",
    ],
)
def test_linnix_mistakes(tmp_path: Path, body: str, problem: str) -> None:
    path = write(tmp_path, f"- name: x\n  {body}\n")
    lines = problems(path)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}: {problem}"), lines[0]


# ---- expect: -----------------------------------------------------------------------------


def _expect(tmp_path: Path, items: str) -> tuple[Expectation, ...]:
    path = write(tmp_path, f"rules:\n{_RULE}  - {{name: s, detector: rss_high}}\nexpect:\n{items}")
    return load_rules(path).expectations


def test_expect_count_min_and_max(tmp_path: Path) -> None:
    found = _expect(
        tmp_path,
        "  - {rule: r, count: 2}\n"
        "  - {rule: s, min: 3}\n"
        "  - {rule: r, min: 1, max: 4}\n"
        "  - {rule: s}\n"
        "  - {rule: r, count: 0}\n",
    )
    path = tmp_path / "rules.yaml"
    assert [(e.rule, e.min_count, e.max_count) for e in found] == [
        ("r", 2, 2),
        ("s", 3, None),
        ("r", 1, 4),
        ("s", 1, None),
        ("r", 0, 0),
    ]
    assert [e.origin for e in found] == [f"{path}: expect #{i}" for i in range(1, 6)]


def test_expect_max_alone_allows_no_alert(tmp_path: Path) -> None:
    (none_at_all,) = _expect(tmp_path, "  - {rule: r, max: 0}\n")
    assert (none_at_all.min_count, none_at_all.max_count) == (0, 0)


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        ("{rule: nope, count: 1}", "expect #1: rule: no rule named 'nope'"),
        ("{rule: r, count: -1}", "expect #1: min: expected a count >= 0, got -1"),
        ("{rule: r, max: many}", "expect #1: max: expected a count >= 0, got 'many'"),
        ("r", "expect #1: expected a mapping with 'rule', got 'r'"),
    ],
    ids=["unknown-rule", "negative-count", "max-not-a-number", "not-a-mapping"],
)
def test_expect_mistakes(tmp_path: Path, item: str, problem: str) -> None:
    path = write(tmp_path, f"rules:\n{_RULE}expect:\n  - {item}\n")
    assert problems(path) == [f"{path}: {problem}"]
