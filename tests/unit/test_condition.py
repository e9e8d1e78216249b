"""The condition language: table-driven evaluation, every error message, catalogs, speed."""

from __future__ import annotations

import time
from collections.abc import Mapping

import pytest

from otel_linnix.rules import condition as condition_module
from otel_linnix.rules.condition import (
    FIELDS,
    NUMERIC_FIELDS,
    Catalog,
    ConditionError,
    compile_condition,
)
from otel_linnix.rules.model import Facts


class DictFacts:
    """Facts backed by a dict; a missing key is an absent value."""

    def __init__(self, values: Mapping[str, str | int | None]) -> None:
        self._values = dict(values)

    def get(self, name: str) -> str | int | None:
        return self._values.get(name)


PROCESS: dict[str, str | int | None] = {
    "comm": "python3",
    "exe": "/usr/bin/python3.11",
    "exe_name": "python3.11",
    "cmdline": 'python3 -m http.server --bind 0.0.0.0 --name "My Server"',
    "user": "alice",
    "uid": 1000,
    "container": "",
    "pid": 4242,
    # container_runtime is absent: a host process.
    "parent.comm": "bash",
    "parent.exe": "/usr/bin/bash",
    "parent.exe_name": "bash",
    "parent.cmdline": "-bash",
    "parent.user": "root",
    "parent.uid": 0,
    "parent.container": "",
    "parent.pid": 4000,
}
FACTS: Facts = DictFacts(PROCESS)

LISTS: dict[str, list[str | int]] = {
    "shells": ["bash", "sh", "zsh"],
    "interpreters": ["python3", "perl", "ruby"],
    "scripting": ["shells", "interpreters"],  # a list of lists
    "dev_tools": ["scripting", "make", "gcc"],  # two levels deep
    "system_uids": [0, "1", 2],
    "daemons": ["systemd", "cron"],
}
MACROS: dict[str, str] = {
    "from_shell": "parent.comm in (shells)",
    "privileged_parent": "parent.uid < 1000",
    "shell_tool": "from_shell and comm in (dev_tools)",  # a macro using a macro
    "admin_shell_tool": "shell_tool and privileged_parent",  # and again
    "never": "comm = nothing-runs-this",
}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog(LISTS, MACROS)


def test_field_names() -> None:
    own = {"comm", "exe", "exe_name", "cmdline", "user", "uid", "container", "pid"}
    fields, numeric = FIELDS, NUMERIC_FIELDS
    assert fields == own | {"container_runtime"} | {f"parent.{name}" for name in own}
    assert numeric == {"uid", "pid", "parent.uid", "parent.pid"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # = and != on text
        ("comm = python3", True),
        ("comm = python", False),
        ("comm != python", True),
        ("comm != python3", False),
        ("exe = /usr/bin/python3.11", True),
        ("comm=python3", True),
        # quoted strings: spaces, escaped quotes, both quote kinds
        ('cmdline contains "--name \\"My Server\\""', True),
        ("cmdline contains '--name \"My Server\"'", True),
        ("cmdline contains 'My Server'", True),
        ("cmdline contains 'my server'", False),
        ("parent.cmdline = '-bash'", True),
        (r"cmdline contains 'it\'s'", False),
        ('comm = "and"', False),
        # text operators
        ("cmdline contains http.server", True),
        ("cmdline contains https", False),
        ("cmdline icontains 'MY SERVER'", True),
        ("cmdline icontains 'YOUR SERVER'", False),
        ("exe startswith /usr/bin/", True),
        ("exe startswith /usr/sbin/", False),
        ("exe endswith 3.11", True),
        ("exe endswith 3.12", False),
        ('exe glob "/usr/bin/*"', True),
        ('exe glob "/usr/bin/python3.[0-9][0-9]"', True),
        ('exe glob "/usr/bin/?ython3.1?"', True),
        ('exe glob "/usr/sbin/*"', False),
        ('exe glob "/USR/BIN/*"', False),  # case-sensitive, like fnmatchcase
        ('exe_name glob "python*"', True),
        # numeric comparisons
        ("uid = 1000", True),
        ("uid = 999", False),
        ("uid != 0", True),
        ("uid != 1000", False),
        ("uid > 999", True),
        ("uid > 1000", False),
        ("uid >= 1000", True),
        ("uid >= 1001", False),
        ("uid < 1001", True),
        ("uid < 1000", False),
        ("uid <= 1000", True),
        ("uid <= 999", False),
        ("pid > +4000", True),
        ("parent.pid < 4242", True),
        ("parent.uid = '0'", True),
        ("uid > -1", True),
        # in / not in with literals, lists and nested lists
        ("comm in (bash, python3)", True),
        ("comm in (bash, 'perl')", False),
        ("comm in ()", False),
        ("comm not in (bash, sh)", True),
        ("comm not in (python3)", False),
        ("not comm in (python3)", False),
        ("comm in (interpreters)", True),
        ("comm in (shells)", False),
        ("comm in (scripting)", True),
        ("parent.comm in (dev_tools)", True),
        ("parent.comm in (daemons, scripting)", True),
        ("comm in ('interpreters')", False),  # quoted: a literal, not the list
        ("comm in (bash, interpreters, cron)", True),
        ("parent.uid in (system_uids)", True),
        ("uid in (system_uids)", False),
        ("uid in (0, 1000)", True),
        ("uid not in (system_uids, 5)", True),
        ("uid not in (1000)", False),
        # parent fields
        ("parent.comm = bash", True),
        ("parent.exe_name = bash and parent.user = root", True),
        ("parent.container = ''", True),
        # exists
        ("parent.comm exists", True),
        ("container exists", True),  # an empty id is a value
        ("container_runtime exists", False),
        ("not container_runtime exists", True),
        # absent values never match, whatever the operator
        ("container_runtime = docker", False),
        ("container_runtime != docker", False),
        ("container_runtime in (docker, containerd)", False),
        ("container_runtime not in (docker, containerd)", False),
        ("container_runtime contains d", False),
        ("container_runtime glob '*'", False),
        ("not container_runtime = docker", True),
        # boolean operators, precedence, parentheses, keyword case
        ("comm = python3 and uid = 1000", True),
        ("comm = python3 and uid = 0", False),
        ("comm = bash or uid = 1000", True),
        ("comm = bash or uid = 0", False),
        ("not comm = bash", True),
        ("not not comm = bash", False),
        ("comm = bash and uid = 0 or comm = python3", True),  # (F and F) or T
        ("comm = python3 or comm = bash and uid = 0", True),  # T or (F and F)
        ("(comm = python3 or comm = bash) and uid = 0", False),
        ("not comm = python3 or uid = 1000", True),  # (not T) or T
        ("not (comm = python3 or uid = 1000)", False),
        ("not comm = bash and uid = 0", False),  # (not F) and F
        ("((comm = python3))", True),
        ("comm = python3 AND NOT parent.comm = systemd", True),
        ("comm = bash Or Not uid = 0", True),
        ("comm IN (python3) and exe GLOB '*python*'", True),
        ("comm = python3\n  and parent.comm in (shells)", True),
        # macros
        ("from_shell", True),
        ("not from_shell", False),
        ("shell_tool", True),
        ("admin_shell_tool", True),
        ("admin_shell_tool and never", False),
        ("never or from_shell and uid > 999", True),
        ("(never or privileged_parent) and not never", True),
    ],
)
def test_evaluation(catalog: Catalog, text: str, expected: bool) -> None:
    assert compile_condition(text, catalog)(FACTS) is expected


def test_the_brief_examples(catalog: Catalog) -> None:
    build = Catalog({"build_tools": ["make", "gcc", "cc1"]}, {})
    rule = compile_condition("comm in (build_tools) and not parent.comm = systemd", build)
    assert rule(DictFacts({"comm": "gcc", "parent.comm": "make"}))
    assert not rule(DictFacts({"comm": "gcc", "parent.comm": "systemd"}))
    assert not rule(DictFacts({"comm": "python3", "parent.comm": "make"}))
    daemon = compile_condition('exe glob "/usr/bin/*" or cmdline contains "--daemon"', catalog)
    assert daemon(DictFacts({"exe": "/usr/bin/dockerd"}))
    assert daemon(DictFacts({"exe": "/opt/x/agent", "cmdline": "agent --daemon"}))
    assert not daemon(DictFacts({"exe": "/opt/x/agent", "cmdline": "agent"}))
    assert not daemon(DictFacts({}))


def test_values_of_the_wrong_type_count_as_absent() -> None:
    odd = DictFacts({"comm": 7, "uid": "1000"})
    for text in ("comm != x", "comm contains 7", "comm not in (x)", "uid > 1", "uid != 5"):
        assert compile_condition(text)(odd) is False, text
    assert compile_condition("uid not in (5)")(DictFacts({"uid": 6})) is True


def test_integers_on_text_fields_are_text() -> None:
    facts = DictFacts({"comm": "123", "user": "1000"})
    assert compile_condition("comm = 123")(facts)
    assert compile_condition("user in (system_ids)", Catalog({"system_ids": [0, 1000]}, {}))(facts)


def test_a_catalog_is_optional() -> None:
    assert compile_condition("comm = python3")(FACTS)


def test_predicates_do_not_parse_when_evaluated(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    pred = compile_condition("comm in (scripting) and (uid >= 1000 or from_shell)", catalog)

    def no_parsing(text: str) -> list[object]:
        raise AssertionError(f"tokenized {text!r} while evaluating")

    monkeypatch.setattr(condition_module, "_tokenize", no_parsing)
    assert pred(FACTS) is True
    assert pred(DictFacts({"comm": "vim"})) is False


def test_evaluation_is_cheap(catalog: Catalog) -> None:
    pred = compile_condition(
        "(comm in (dev_tools) or exe glob '/opt/*') and not parent.comm in (daemons)"
        " and uid >= 1000 and cmdline icontains 'server' and from_shell",
        catalog,
    )
    other = DictFacts({**PROCESS, "parent.comm": "cron"})
    assert pred(FACTS) is True
    assert pred(other) is False
    started = time.perf_counter()
    for _ in range(50_000):
        pred(FACTS)
        pred(other)
    elapsed_s = time.perf_counter() - started
    # A sanity bound, not a benchmark: parsing per call would take far longer.
    assert elapsed_s < 2.0, f"100k evaluations took {elapsed_s:.2f} s"


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ("", "empty condition", None),
        ("  \n ", "empty condition", None),
        ("cmd = x", "at column 1: unknown field 'cmd'", 0),
        ("comm = a and parent.cmd contains x", "at column 14: unknown field 'parent.cmd'", 13),
        ("Comm in (a)", "at column 1: unknown field 'Comm'", 0),
        ("comm foo", "at column 6: expected an operator after 'comm', got 'foo'", 5),
        ("comm", "at column 5: expected an operator after 'comm', got end of condition", 4),
        (
            "uid = 1 and comm",
            "at column 17: expected an operator after 'comm', got end of condition",
            16,
        ),
        (
            "(comm = a or comm = b",
            "at column 22: expected ')' to close the '(' at column 1, got end of condition",
            21,
        ),
        (
            "(comm = a comm = b)",
            "at column 11: expected 'and', 'or' or ')' to close the '(' at column 1, got 'comm'",
            10,
        ),
        ("comm = a)", "at column 9: unbalanced ')': there is no '(' to close", 8),
        ("()", "at column 2: expected a field, a macro, 'not' or '(', got ')'", 1),
        (
            "comm = a uid = 1",
            "at column 10: expected 'and', 'or' or end of condition, got 'uid'",
            9,
        ),
        (
            "comm = a and",
            "at column 13: expected a field, a macro, 'not' or '(', got end of condition",
            12,
        ),
        ("and comm = a", "at column 1: expected a field, a macro, 'not' or '(', got 'and'", 0),
        ("comm =", "at column 7: expected a value after '=', got end of condition", 6),
        ("comm = or", "at column 8: expected a value after '=', got 'or'", 7),
        ('"comm" = a', "at column 1: expected a field, a macro, 'not' or '(', got \"comm\"", 0),
        ("comm contains (", "at column 15: expected a value after 'contains', got '('", 14),
        ("comm in bash", "at column 9: expected '(' after 'in', got 'bash'", 8),
        (
            "comm in (bash sh)",
            "at column 15: expected ',' or ')' to close the '(' at column 9, got 'sh'",
            14,
        ),
        (
            "comm in (bash,",
            "at column 15: expected a value or a list name, got end of condition",
            14,
        ),
        (
            "comm in (bash",
            "at column 14: expected ',' or ')' to close the '(' at column 9, got end of condition",
            13,
        ),
        ("comm not bash", "at column 6: expected an operator after 'comm', got 'not'", 5),
        ('comm = "abc', "at column 8: unterminated string", 7),
        ("comm = 'it\\'", "at column 8: unterminated string", 7),
        ("comm ! bash", "at column 6: unexpected '!' (use '!=' or 'not')", 5),
        ("uid = root", "at column 7: 'uid' is numeric: expected an integer, got 'root'", 6),
        ("uid > '1k'", "at column 7: 'uid' is numeric: expected an integer, got '1k'", 6),
        (
            "parent.pid in (1, x)",
            "at column 19: 'parent.pid' is numeric: expected an integer, got 'x'",
            18,
        ),
        (
            "uid in (daemons)",
            "at column 9: 'uid' is numeric, but list 'daemons' has item 'systemd'",
            8,
        ),
        ("uid contains 1", "at column 5: 'contains' needs a text field; 'uid' is numeric", 4),
        ("comm >= a", "at column 6: '>=' needs a numeric field; 'comm' is text", 5),
        ("from_shel and comm = a", "at column 1: unknown macro 'from_shel'", 0),
        ("shells", "at column 1: 'shells' is a list: use it inside in (...)", 0),
        (
            "from_shell comm = a",
            "at column 12: expected 'and', 'or' or end of condition, got 'comm'",
            11,
        ),
        (
            "comm = a and\n  parent.comm foo",
            "at line 2, column 15: expected an operator after 'parent.comm', got 'foo'",
            27,
        ),
    ],
)
def test_errors(catalog: Catalog, text: str, message: str, position: int | None) -> None:
    with pytest.raises(ConditionError) as caught:
        compile_condition(text, catalog)
    assert str(caught.value) == message
    assert caught.value.position == position


def test_a_condition_must_be_a_string() -> None:
    with pytest.raises(ConditionError, match=r"^expected a condition string, got 42$"):
        compile_condition(42)  # type: ignore[arg-type]


BROKEN_LISTS: dict[str, object] = {
    "good": ["a", 1],
    "uses_good": ["good", "b"],
    "ring_a": ["x", "ring_b"],
    "ring_b": ["ring_c"],
    "ring_c": ["ring_a"],
    "selfish": ["selfish"],
    "uses_ring": ["ring_b", "y"],
    "bad_items": ["ok", {"k": 1}, True, 2.5],
    "not_a_list": "bash",
    "in": ["a"],
    "comm": ["a"],
    "9lives": ["a"],
}
BROKEN_MACROS: dict[str, object] = {
    "fine": "comm in (uses_good)",
    "m_a": "comm = a or m_b",
    "m_b": "not m_a",
    "m_self": "m_self and comm = x",
    "uses_cycle": "uid = 0 and m_b",
    "typo": "comm = a and cmd = b",
    "uses_typo": "typo",
    "uses_bad_list": "comm in (ring_a)",
    "numbers": 42,
    "not": "comm = a",
}


def test_catalog_build_reports_every_error() -> None:
    catalog, errors = Catalog.build(BROKEN_LISTS, BROKEN_MACROS)  # type: ignore[arg-type]
    assert errors == [
        "list 'in': 'in' is a keyword",
        "list 'comm': 'comm' is a field",
        "list '9lives': a name is letters, digits and '_', not starting with a digit",
        "list 'ring_a': uses itself through 'ring_b' -> 'ring_c'",
        "list 'ring_b': uses itself through 'ring_c' -> 'ring_a'",
        "list 'ring_c': uses itself through 'ring_a' -> 'ring_b'",
        "list 'selfish': uses itself",
        "list 'uses_ring': item 1: list 'ring_b' is invalid: uses itself through 'ring_c' -> "
        "'ring_a'",
        "list 'bad_items': item 2: expected a string or number, got {'k': 1}",
        "list 'bad_items': item 3: expected a string or number, got True",
        "list 'bad_items': item 4: expected a string or number, got 2.5",
        "list 'not_a_list': expected a sequence of strings or numbers, got 'bash'",
        "macro 'not': 'not' is a keyword",
        "macro 'm_a': uses itself through 'm_b'",
        "macro 'm_b': uses itself through 'm_a'",
        "macro 'm_self': uses itself",
        "macro 'uses_cycle': at column 13: macro 'm_b' is invalid: uses itself through 'm_a'",
        "macro 'typo': at column 14: unknown field 'cmd'",
        "macro 'uses_typo': at column 1: macro 'typo' is invalid: "
        "at column 14: unknown field 'cmd'",
        "macro 'uses_bad_list': at column 10: list 'ring_a' is invalid: "
        "uses itself through 'ring_b' -> 'ring_c'",
        "macro 'numbers': expected a condition string, got 42",
    ]
    # The valid parts still work; the invalid ones are errors where used.
    assert compile_condition("fine", catalog)(DictFacts({"comm": "1"}))
    assert compile_condition("comm in (good)", catalog)(DictFacts({"comm": "a"}))
    with pytest.raises(ConditionError) as caught:
        compile_condition("comm = z or m_a", catalog)
    assert str(caught.value) == "at column 13: macro 'm_a' is invalid: uses itself through 'm_b'"
    assert caught.value.position == 12
    with pytest.raises(ConditionError) as caught:
        compile_condition("comm in (bad_items)", catalog)
    assert str(caught.value) == (
        "at column 10: list 'bad_items' is invalid: item 2: expected a string or number, "
        "got {'k': 1}"
    )


def test_catalog_constructor_raises_with_every_error() -> None:
    with pytest.raises(ConditionError) as caught:
        Catalog({"a": ["b"], "b": ["a"]}, {"m": "cmd = 1"})
    assert str(caught.value) == (
        "list 'a': uses itself through 'b'\n"
        "list 'b': uses itself through 'a'\n"
        "macro 'm': at column 1: unknown field 'cmd'"
    )
    assert caught.value.position is None


def test_a_clean_catalog_has_no_errors() -> None:
    catalog, errors = Catalog.build(LISTS, MACROS)
    assert errors == []
    assert compile_condition("admin_shell_tool", catalog)(FACTS)


def test_list_items_are_deduplicated_and_literals_kept() -> None:
    catalog = Catalog({"a": ["x", "x", "y"], "b": ["a", "a", "z"]}, {})
    for value, expected in (("x", True), ("y", True), ("z", True), ("a", False), ("w", False)):
        assert compile_condition("comm in (b)", catalog)(DictFacts({"comm": value})) is expected
