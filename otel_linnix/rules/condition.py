"""Rule conditions: a small Falco-like language, compiled once into closures.

    comm in (build_tools) and not parent.comm = systemd
    exe glob "/usr/bin/*" or cmdline contains "--daemon"

Grammar (keywords are case-insensitive; ``not`` binds tighter than ``and``,
which binds tighter than ``or``)::

    condition = expr END
    expr      = conj { "or" conj }
    conj      = unary { "and" unary }
    unary     = "not" unary | "(" expr ")" | test | MACRO
    test      = FIELD ( CMP value | TEXTOP value | [ "not" ] "in" group | "exists" )
    CMP       = "=" | "!=" | "<" | "<=" | ">" | ">="
    TEXTOP    = "contains" | "icontains" | "startswith" | "endswith" | "glob"
    group     = "(" [ item { "," item } ] ")"
    item      = LIST | value
    value     = WORD | STRING

A WORD is a run of characters other than whitespace, quotes, ``( ) ,`` and
``= < > !``; a value containing any of those must be quoted. A STRING is
single- or double-quoted; ``\\"``, ``\\'`` and ``\\\\`` stand for the
character, any other backslash is kept as written. Keywords are reserved:
quote them to use them as values. Inside ``in (...)`` a bare word naming a
list expands to its items (as in Falco, any other bare word is a literal);
a quoted word is always a literal.

Absent values never match: every test, ``!=`` and ``not in`` included, is
False when ``facts.get(field)`` is None or of the wrong type (text fields
hold ``str``, numeric fields ``int``). ``not <test>`` is True there. Numeric
fields (``uid``, ``pid`` and their ``parent.`` forms) take integer literals
and the ordering operators; text fields take the text operators. ``exists``
is True when the value is not None (an empty container id exists).
"""

from __future__ import annotations

import fnmatch
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

from otel_linnix.rules.model import Facts, Predicate

__all__ = ["FIELDS", "NUMERIC_FIELDS", "Catalog", "ConditionError", "compile_condition"]

_OWN_FIELDS = ("comm", "exe", "exe_name", "cmdline", "user", "uid", "container", "pid")
FIELDS: frozenset[str] = frozenset(
    (*_OWN_FIELDS, "container_runtime", *(f"parent.{name}" for name in _OWN_FIELDS))
)
"""Every field a condition may test; the names passed to ``Facts.get``."""
NUMERIC_FIELDS: frozenset[str] = frozenset({"uid", "pid", "parent.uid", "parent.pid"})
"""The fields whose values are ``int``; all others are ``str``."""

_TEXT_OPS = frozenset({"contains", "icontains", "startswith", "endswith", "glob"})
_ORDER_OPS = frozenset({"<", "<=", ">", ">="})
_WORD_OPS = _TEXT_OPS | {"in", "exists"}
_KEYWORDS = _WORD_OPS | {"and", "or", "not"}
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<punct>[(),])
    | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')
    | (?P<op>!=|<=|>=|[=<>])
    | (?P<word>[^\s(),"'=<>!]+)
    | (?P<bad>\S)
    )""",
    re.VERBOSE | re.DOTALL,
)
_ESCAPE = re.compile(r"\\([\\\"'])")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT = re.compile(r"[+-]?[0-9]+")

_STR_TESTS: dict[str, Callable[[str, str], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "contains": operator.contains,
    "startswith": str.startswith,
    "endswith": str.endswith,
}
_INT_TESTS: dict[str, Callable[[int, int], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class ConditionError(ValueError):
    """A condition, list or macro that cannot be compiled.

    The message says what is wrong and where (``at column 17: ...``, or
    ``at line 2, column 5: ...`` for a multi-line condition); ``position`` is
    the 0-based offset into the condition text, None when no single place is
    at fault.
    """

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


class _Unusable(Exception):
    """A list or macro referenced by another one is invalid (reason inside)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Cycle(Exception):
    """Raised where a list or macro reaches one still being resolved; unwinds
    through every member of the cycle so each one records its own error."""

    def __init__(self, path: tuple[str, ...]) -> None:
        super().__init__(path)
        self.path = path


class _Invalid(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems)
        self.problems = problems


class _Token(NamedTuple):
    kind: str  # "word", "string", "op", "(", ")", ",", "end"
    value: str  # the word, the unquoted string or the operator
    pos: int
    source: str  # as written


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(tok: _Token) -> str:
    if tok.kind == "end":
        return "end of condition"
    return tok.source if tok.kind == "string" else f"'{tok.source}'"


def _locate(text: str, pos: int) -> str:
    if "\n" not in text.rstrip():
        return f"column {pos + 1}"
    line = text.count("\n", 0, pos) + 1
    column = pos - text.rfind("\n", 0, pos)
    return f"line {line}, column {column}"


def _error(text: str, pos: int, message: str) -> ConditionError:
    return ConditionError(f"at {_locate(text, pos)}: {message}", pos)


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while match := _TOKEN.match(text, pos):
        kind = str(match.lastgroup)  # exactly one named group matched
        source, start, pos = match[kind], match.start(kind), match.end()
        if kind == "bad":
            if source in "\"'":
                raise _error(text, start, "unterminated string")
            raise _error(text, start, f"unexpected '{source}' (use '!=' or 'not')")
        if kind == "string":
            tokens.append(_Token(kind, _ESCAPE.sub(r"\1", source[1:-1]), start, source))
        else:
            tokens.append(_Token(source if kind == "punct" else kind, source, start, source))
    tokens.append(_Token("end", "", len(text), ""))
    return tokens


def _is_keyword(tok: _Token, *words: str) -> bool:
    return tok.kind == "word" and tok.value.lower() in words


class _Parser:
    """Recursive descent over the tokens, building closures as it goes."""

    def __init__(self, text: str, catalog: Catalog, macro_stack: tuple[str, ...]) -> None:
        self._text = text
        self._catalog = catalog
        self._macro_stack = macro_stack
        self._tokens = _tokenize(text)
        self._i = 0

    def parse(self) -> Predicate:
        if self._peek().kind == "end":
            raise ConditionError("empty condition")
        pred = self._expr()
        tok = self._peek()
        if tok.kind == ")":
            raise self._error(tok, "unbalanced ')': there is no '(' to close")
        if tok.kind != "end":
            raise self._error(
                tok, f"expected 'and', 'or' or end of condition, got {_describe(tok)}"
            )
        return pred

    def _peek(self, ahead: int = 0) -> _Token:
        return self._tokens[min(self._i + ahead, len(self._tokens) - 1)]

    def _next(self) -> _Token:
        tok = self._peek()
        self._i += 1
        return tok

    def _error(self, tok: _Token, message: str) -> ConditionError:
        return _error(self._text, tok.pos, message)

    def _expr(self) -> Predicate:
        pred = self._conj()
        while _is_keyword(self._peek(), "or"):
            self._next()
            pred = _either(pred, self._conj())
        return pred

    def _conj(self) -> Predicate:
        pred = self._unary()
        while _is_keyword(self._peek(), "and"):
            self._next()
            pred = _both(pred, self._unary())
        return pred

    def _unary(self) -> Predicate:
        tok = self._next()
        if _is_keyword(tok, "not"):
            return _negation(self._unary())
        if tok.kind == "(":
            pred = self._expr()
            close = self._next()
            if close.kind != ")":
                expected = "')'" if close.kind == "end" else "'and', 'or' or ')'"
                raise self._error(
                    close,
                    f"expected {expected} to close the '(' at {_locate(self._text, tok.pos)}, "
                    f"got {_describe(close)}",
                )
            return pred
        if tok.kind == "word" and tok.value.lower() not in _KEYWORDS:
            return self._term(tok)
        raise self._error(tok, f"expected a field, a macro, 'not' or '(', got {_describe(tok)}")

    def _term(self, tok: _Token) -> Predicate:
        name, nxt = tok.value, self._peek()
        if (
            nxt.kind == "op"
            or (nxt.kind == "word" and nxt.value.lower() in _WORD_OPS)
            or (_is_keyword(nxt, "not") and _is_keyword(self._peek(1), "in"))
        ):
            if name not in FIELDS:
                raise self._error(tok, f"unknown field '{name}'")
            return self._test(name)
        if name in self._catalog._raw["macro"]:
            try:
                pred: Predicate = self._catalog._resolve("macro", name, self._macro_stack)
            except _Unusable as exc:
                raise self._error(tok, f"macro '{name}' is invalid: {exc.reason}") from None
            return pred
        if name in FIELDS:
            raise self._error(nxt, f"expected an operator after '{name}', got {_describe(nxt)}")
        if name in self._catalog._raw["list"]:
            raise self._error(tok, f"'{name}' is a list: use it inside in (...)")
        raise self._error(tok, f"unknown macro '{name}'")

    def _test(self, field: str) -> Predicate:
        op_tok = self._next()
        op = op_tok.value if op_tok.kind == "op" else op_tok.value.lower()
        numeric = field in NUMERIC_FIELDS
        if op == "exists":
            return _exists(field)
        if op in ("in", "not"):
            if op == "not":
                self._next()
            return _membership(field, self._group(field, numeric), numeric, negate=op == "not")
        if numeric and op in _TEXT_OPS:
            raise self._error(op_tok, f"'{op}' needs a text field; '{field}' is numeric")
        if not numeric and op in _ORDER_OPS:
            raise self._error(op_tok, f"'{op}' needs a numeric field; '{field}' is text")
        tok = self._next()
        if tok.kind not in ("word", "string") or _is_keyword(tok, *_KEYWORDS):
            raise self._error(tok, f"expected a value after '{op}', got {_describe(tok)}")
        if numeric:
            return _int_test(field, op, self._integer(field, tok))
        return _str_test(field, op, tok.value)

    def _integer(self, field: str, tok: _Token) -> int:
        if not _INT.fullmatch(tok.value):
            raise self._error(
                tok, f"'{field}' is numeric: expected an integer, got {_describe(tok)}"
            )
        return int(tok.value)

    def _group(self, field: str, numeric: bool) -> frozenset[str | int]:
        open_tok = self._next()
        if open_tok.kind != "(":
            raise self._error(open_tok, f"expected '(' after 'in', got {_describe(open_tok)}")
        items: set[str | int] = set()
        if self._peek().kind == ")":
            self._next()
            return frozenset()
        while True:
            tok = self._next()
            if tok.kind == "word" and tok.value in self._catalog._raw["list"]:
                items.update(self._list_items(field, numeric, tok))
            elif tok.kind == "string" or (tok.kind == "word" and not _is_keyword(tok, *_KEYWORDS)):
                items.add(self._integer(field, tok) if numeric else tok.value)
            else:
                raise self._error(tok, f"expected a value or a list name, got {_describe(tok)}")
            sep = self._next()
            if sep.kind == ")":
                return frozenset(items)
            if sep.kind != ",":
                raise self._error(
                    sep,
                    f"expected ',' or ')' to close the '(' at {_locate(self._text, open_tok.pos)}, "
                    f"got {_describe(sep)}",
                )

    def _list_items(self, field: str, numeric: bool, tok: _Token) -> list[str | int]:
        name = tok.value
        try:
            raw: tuple[str | int, ...] = self._catalog._resolve("list", name, ())
        except _Unusable as exc:
            raise self._error(tok, f"list '{name}' is invalid: {exc.reason}") from None
        if not numeric:
            return [str(item) for item in raw]
        out: list[str | int] = []
        for item in raw:
            if isinstance(item, str) and not _INT.fullmatch(item):
                raise self._error(tok, f"'{field}' is numeric, but list '{name}' has item {item!r}")
            out.append(int(item))
        return out


_EMPTY: Mapping[str, Any] = MappingProxyType({})


class Catalog:
    """The lists and macros of one rules file, validated and compiled eagerly.

    Lists map a name to strings and integers; an item naming another list
    expands to that list's items. Macros map a name to a condition. Names are
    identifiers (letters, digits, ``_``), neither keywords nor field names.
    ``Catalog(...)`` raises ConditionError listing every problem, one per line;
    ``Catalog.build`` returns them instead.
    """

    _raw: dict[str, dict[str, Any]]
    _done: dict[str, dict[str, Any]]
    _failed: dict[str, dict[str, list[str]]]

    def __init__(
        self,
        lists: Mapping[str, Sequence[str | int]] = _EMPTY,
        macros: Mapping[str, str] = _EMPTY,
    ) -> None:
        errors = self._load(lists, macros)
        if errors:
            raise ConditionError("\n".join(errors))

    @classmethod
    def build(
        cls, lists: Mapping[str, Sequence[str | int]], macros: Mapping[str, str]
    ) -> tuple[Catalog, list[str]]:
        """The catalog and every problem found, each naming its list or macro
        (``"macro 'x': at column 3: ..."``, ``"list 'y': item 2: ..."``).
        Valid lists and macros work; referencing an invalid one is an error."""
        catalog = cls.__new__(cls)
        return catalog, catalog._load(lists, macros)

    def _load(
        self, lists: Mapping[str, Sequence[str | int]], macros: Mapping[str, str]
    ) -> list[str]:
        self._raw = {"list": {}, "macro": {}}
        self._done = {"list": {}, "macro": {}}
        self._failed = {"list": {}, "macro": {}}
        errors: list[str] = []
        for kind, entries in (("list", lists), ("macro", macros)):
            for name, value in entries.items():
                problem = _name_problem(name)
                if problem:
                    errors.append(f"{kind} {_show(name)}: {problem}")
                    continue
                self._raw[kind][name] = value
                if kind == "list" and (
                    isinstance(value, str | bytes) or not isinstance(value, Sequence)
                ):
                    self._failed[kind][name] = [
                        f"expected a sequence of strings or numbers, got {_show(value)}"
                    ]
                elif kind == "macro" and not isinstance(value, str):
                    self._failed[kind][name] = [f"expected a condition string, got {_show(value)}"]
            for name in self._raw[kind]:
                try:
                    self._resolve(kind, name, ())
                except _Unusable:
                    errors.extend(f"{kind} '{name}': {p}" for p in self._failed[kind][name])
        return errors

    def _resolve(self, kind: str, name: str, stack: tuple[str, ...]) -> Any:
        """A list's items or a macro's predicate, resolving what it uses first."""
        if name in self._done[kind]:
            return self._done[kind][name]
        if name in self._failed[kind]:
            raise _Unusable(self._failed[kind][name][0])
        if name in stack:
            raise _Cycle(stack[stack.index(name) :])
        inner = (*stack, name)
        try:
            if kind == "list":
                value: Any = self._expand(self._raw[kind][name], inner)
            else:
                try:
                    value = _Parser(self._raw[kind][name], self, inner).parse()
                except ConditionError as exc:
                    raise _Invalid([str(exc)]) from None
        except _Cycle as cycle:
            at = cycle.path.index(name)
            others = cycle.path[at + 1 :] + cycle.path[:at]
            through = " -> ".join(f"'{other}'" for other in others)
            reason = f"uses itself through {through}" if others else "uses itself"
            self._failed[kind][name] = [reason]
            if at == 0:  # the outermost member: callers outside the cycle see a plain error
                raise _Unusable(reason) from None
            raise
        except _Invalid as exc:
            self._failed[kind][name] = exc.problems
            raise _Unusable(exc.problems[0]) from None
        self._done[kind][name] = value
        return value

    def _expand(self, items: Sequence[object], stack: tuple[str, ...]) -> tuple[str | int, ...]:
        out: list[str | int] = []
        problems: list[str] = []
        for index, item in enumerate(items, 1):
            if isinstance(item, str) and item in self._raw["list"]:
                try:
                    out.extend(self._resolve("list", item, stack))
                except _Unusable as exc:
                    problems.append(f"item {index}: list '{item}' is invalid: {exc.reason}")
            elif isinstance(item, str | int) and not isinstance(item, bool):
                out.append(item)
            else:
                problems.append(f"item {index}: expected a string or number, got {_show(item)}")
        if problems:
            raise _Invalid(problems)
        return tuple(dict.fromkeys(out))


def _name_problem(name: object) -> str | None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return "a name is letters, digits and '_', not starting with a digit"
    if name.lower() in _KEYWORDS:
        return f"'{name}' is a keyword"
    if name in FIELDS:
        return f"'{name}' is a field"
    return None


_EMPTY_CATALOG = Catalog()


def compile_condition(text: str, catalog: Catalog | None = None) -> Predicate:
    """``text`` compiled into a predicate over Facts; raises ConditionError.

    Parsing happens here, once: the predicate is a tree of closures with
    literals pre-computed (``in`` becomes a frozenset lookup, ``glob`` a
    compiled pattern, ``icontains`` a lower-cased needle).
    """
    if not isinstance(text, str):
        raise ConditionError(f"expected a condition string, got {_show(text)}")
    return _Parser(text, _EMPTY_CATALOG if catalog is None else catalog, ()).parse()


def _str_test(field: str, op: str, literal: str) -> Predicate:
    if op == "icontains":
        needle = literal.lower()

        def icontains(facts: Facts) -> bool:
            value = facts.get(field)
            return isinstance(value, str) and needle in value.lower()

        return icontains
    if op == "glob":
        match = re.compile(fnmatch.translate(literal)).match  # what fnmatchcase does per call

        def glob(facts: Facts) -> bool:
            value = facts.get(field)
            return isinstance(value, str) and match(value) is not None

        return glob
    test = _STR_TESTS[op]

    def text_test(facts: Facts) -> bool:
        value = facts.get(field)
        return isinstance(value, str) and test(value, literal)

    return text_test


def _int_test(field: str, op: str, literal: int) -> Predicate:
    test = _INT_TESTS[op]

    def int_test(facts: Facts) -> bool:
        value = facts.get(field)
        return isinstance(value, int) and test(value, literal)

    return int_test


def _membership(
    field: str, values: frozenset[str | int], numeric: bool, *, negate: bool
) -> Predicate:
    if not negate:
        return lambda facts: facts.get(field) in values
    kind = int if numeric else str

    def non_member(facts: Facts) -> bool:
        value = facts.get(field)
        return isinstance(value, kind) and value not in values

    return non_member


def _exists(field: str) -> Predicate:
    return lambda facts: facts.get(field) is not None


def _both(left: Predicate, right: Predicate) -> Predicate:
    return lambda facts: left(facts) and right(facts)


def _either(left: Predicate, right: Predicate) -> Predicate:
    return lambda facts: left(facts) or right(facts)


def _negation(inner: Predicate) -> Predicate:
    return lambda facts: not inner(facts)
