"""One exception family for start-up problems, each mapped to a sysexits code.

Run-time failures of a sink or exporter are logged and counted where they
happen; only problems that stop the agent from starting are raised as these.
"""

from __future__ import annotations

__all__ = [
    "EX_CONFIG",
    "EX_DATAERR",
    "EX_NOPERM",
    "EX_SOFTWARE",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "CaptureUnavailable",
    "ConfigError",
    "DataError",
    "LinnixError",
    "UsageError",
]

# sysexits.h values, so shell scripts and systemd can tell failures apart.
EX_USAGE = 64
EX_DATAERR = 65
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_NOPERM = 77
EX_CONFIG = 78


class LinnixError(Exception):
    """Base of every error the CLI turns into one line and an exit code."""

    exit_code: int = EX_SOFTWARE


class UsageError(LinnixError):
    """The command line asked for something that cannot be done."""

    exit_code = EX_USAGE


class ConfigError(LinnixError):
    """A configuration or rules file is unreadable, malformed or inconsistent."""

    exit_code = EX_CONFIG


class DataError(LinnixError):
    """Input data (a recording, a fixture) is malformed."""

    exit_code = EX_DATAERR


class CaptureUnavailable(LinnixError):
    """Kernel capture cannot run here; the message says exactly why.

    The agent catches this at start-up and falls back to /proc polling; only
    commands that need the kernel (``bpf dump`` without BTF) report it.
    """

    exit_code = EX_UNAVAILABLE
