"""Removes secrets from argv before an event leaves the agent.

Applied once, in the pipeline, to every exec record: the process table, the
API, /stream, recordings and exporters only ever see the redacted argv. The
rules are compiled once (no per-event regex compilation):

- a flag naming a secret (``--password``, ``--api-key``, ``--token``,
  ``--client-secret``...) hides the argument that follows it;
- ``key=value`` where the key names a secret (``--password=x``,
  ``DB_PASSWORD=x``, ``token=x``) keeps the key and hides the value;
- ``Authorization: Bearer x`` / ``Basic x`` and bare ``Bearer x`` hide the
  credential; ``scheme://user:password@host`` hides the password;
- AWS access key ids (``AKIA...``, ``ASIA...``) are hidden wherever they appear;
- configured extra flags and regular expressions (a pattern's first group,
  or the whole match when it has none, is hidden).

Short forms glued to their value (``mysql -phunter2``) are ambiguous and not
recognised; add a pattern for them if your hosts use them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["REDACTED", "Redactor"]

REDACTED = "<redacted>"

# Words that name a secret (what to look for, not a secret itself).
_SECRET_WORDS = (
    r"pass(?:word|wd|phrase)?|pwd|secret|token|api[-_]?key|access[-_]?key"  # noqa: S105
    r"|private[-_]?key|credentials?|auth(?:orization)?"
)
# A whole argument that is a flag naming a secret: its value is the next argument.
_SECRET_FLAG = re.compile(rf"^--?[\w.-]*(?:{_SECRET_WORDS})[\w.-]*$", re.IGNORECASE)
# The same inside a longer argument (sh -c "... --password x").
_SECRET_FLAG_INLINE = re.compile(
    rf"((?:^|\s)--?[\w.-]*(?:{_SECRET_WORDS})[\w.-]*\s+)([^\s-][^\s]*)", re.IGNORECASE
)
# key=value, also inside a longer argument (a connection string, a shell line).
_SECRET_ASSIGN = re.compile(rf"([\w.-]*(?:{_SECRET_WORDS})[\w.-]*=)([^\s&;,]+)", re.IGNORECASE)
# An HTTP header argument: "Authorization: Bearer x", "X-Api-Key: x".
_SECRET_HEADER = re.compile(rf"^([\w-]*(?:{_SECRET_WORDS})[\w-]*:\s*)(.+)$", re.IGNORECASE)
_AUTH_SCHEME = re.compile(r"\b(Bearer|Basic)\s+([A-Za-z0-9._~+/=-]{6,})", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]*://[^/\s:@]+:)([^/\s@]+)(@)", re.IGNORECASE)
_AWS_KEY_ID = re.compile(r"\b((?:AKIA|ASIA|AIDA|AROA)[0-9A-Z]{16})\b")
# Substrings that every match of the patterns above contains (lower case):
# a few C-level substring searches decide whether an argv needs the regular
# expressions at all, which almost none does.
_HINTS = (
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "credential",
    "auth",
    "bearer",
    "basic",
    "://",
    "akia",
    "asia",
    "aida",
    "aroa",
)


class Redactor:
    """Redacts secrets in argv; thread-safe (holds only compiled patterns)."""

    def __init__(self, extra_flags: Sequence[str] = (), extra_patterns: Sequence[str] = ()) -> None:
        self._extra_flags = frozenset(f.lower() for f in extra_flags)
        # Errors in user patterns are reported by the config loader, which
        # compiles them first; here they are known to be valid.
        self._extra = [re.compile(p) for p in extra_patterns]

    def _is_secret_flag(self, arg: str) -> bool:
        return arg.lower() in self._extra_flags or bool(_SECRET_FLAG.match(arg))

    def _redact_arg(self, arg: str) -> str:
        out = _SECRET_HEADER.sub(lambda m: m.group(1) + REDACTED, arg)
        out = _SECRET_ASSIGN.sub(lambda m: m.group(1) + REDACTED, out)
        out = _SECRET_FLAG_INLINE.sub(lambda m: m.group(1) + REDACTED, out)
        out = _AUTH_SCHEME.sub(lambda m: f"{m.group(1)} {REDACTED}", out)
        out = _URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + m.group(3), out)
        return _AWS_KEY_ID.sub(REDACTED, out)

    def redact(self, argv: tuple[str, ...]) -> tuple[str, ...]:
        """argv with every recognised secret replaced by ``<redacted>``.

        Returns the very same tuple when nothing was found (the common case),
        so callers can test ``is`` to know whether anything changed.
        """
        joined = "\0".join(argv).lower()
        builtin = any(hint in joined for hint in _HINTS)
        if not builtin and not self._extra and not self._extra_flags:
            return argv
        out: list[str] | None = None
        hide_next = False
        for i, arg in enumerate(argv):
            if hide_next:
                new = REDACTED
                hide_next = False
            else:
                new = self._redact_arg(arg) if builtin else arg
                for pattern in self._extra:
                    new = pattern.sub(_replace_group, new)
                # "--password=x" was handled above; "--password x" hides x.
                hide_next = "=" not in arg and self._is_secret_flag(arg)
            if new != arg and out is None:
                out = list(argv[:i])
            if out is not None:
                out.append(new)
        return tuple(out) if out is not None else argv


def _replace_group(match: re.Match[str]) -> str:
    if match.re.groups == 0:
        return REDACTED
    start, end = match.span(1)
    whole_start = match.start()
    text = match.group(0)
    return text[: start - whole_start] + REDACTED + text[end - whole_start :]
