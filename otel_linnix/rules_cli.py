"""``otel-linnix rules validate [FILE]`` and ``otel-linnix rules test RULES --events FILE``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from otel_linnix.config import load_config
from otel_linnix.errors import EX_DATAERR, DataError
from otel_linnix.recording import iso_time

__all__ = ["add_rules_commands"]


def cmd_rules_validate(args: argparse.Namespace) -> int:
    from otel_linnix.rules.loader import load_rules  # noqa: PLC0415

    path = args.file or str(load_config(args.config).rules_path())
    ruleset = load_rules(path)  # ConfigError: every problem, exit 78
    enabled = len(ruleset.enabled)
    print(f"rules ok: {path}: {len(ruleset.rules)} rules ({enabled} enabled)")
    for rule in ruleset.rules:
        state = "" if rule.enabled else " (disabled)"
        print(f"  {rule.name}: {rule.detector} [{rule.severity.label}]{state}")
    return 0


def _line(state: str, alert: Any, wall_offset: int | None) -> str:
    # Stamped with the transition's own time: a resolution comes resolve_after_s
    # or more after the alert was last seen.
    at = alert.resolved_ns if state == "resolved" and alert.resolved_ns else alert.last_seen_ns
    stamp = iso_time(at + wall_offset) if wall_offset is not None else f"{at / 1e9:.3f}"
    return (
        f"{stamp} {state.upper():<8} {alert.severity.label:<8} {alert.rule}: "
        f"{alert.subject.key}: {alert.message}"
    )


def cmd_rules_test(args: argparse.Namespace) -> int:
    from otel_linnix.cli import recording_wall_offset  # noqa: PLC0415
    from otel_linnix.rules.loader import load_rules  # noqa: PLC0415
    from otel_linnix.rules.replay import check_expectations, replay_rules  # noqa: PLC0415

    ruleset = load_rules(args.rules)
    try:
        result = replay_rules(ruleset.enabled, args.events)
    except OSError as exc:
        raise DataError(f"{args.events}: cannot read recording: {exc.strerror}") from None
    offset = recording_wall_offset(args.events)
    for state, alert in result.transitions:
        if args.json:
            print(json.dumps({"transition": state, **alert.to_json(offset or 0)}))
        else:
            print(_line(state, alert, offset))
    for line_no, reason in result.bad_lines:
        print(f"otel-linnix: {args.events}:{line_no}: {reason}", file=sys.stderr)
    fired = sorted({a.rule for s, a in result.transitions if s == "firing"})
    print(
        f"replayed {result.events} events and {result.sweeps} sweeps: "
        f"{len({a.id for _, a in result.transitions})} alert(s)"
        + (f" ({', '.join(fired)})" if fired else ""),
        file=sys.stderr,
    )
    outcomes = check_expectations(result, ruleset.expectations)
    for outcome in outcomes:
        print(outcome.describe(), file=sys.stderr)
    if result.bad_lines:
        return EX_DATAERR
    return 1 if any(not o.met for o in outcomes) else 0


def add_rules_commands(sub: Any, with_config: Any) -> None:
    """The ``rules`` command group of ``otel-linnix``."""
    rules = sub.add_parser("rules", help="validate and test detection rules")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, metavar="COMMAND")
    validate = with_config(
        rules_sub.add_parser(
            "validate", help="check a rules file (default: the configured one); exit 78 on errors"
        )
    )
    validate.add_argument("file", nargs="?", metavar="FILE")
    validate.set_defaults(func=cmd_rules_validate)
    test = rules_sub.add_parser(
        "test",
        help="replay a recording through the rules and print the alerts; exit 1 "
        "when an expect: block of the rules file is not met",
    )
    test.add_argument("rules", metavar="RULES")
    test.add_argument(
        "--events",
        required=True,
        metavar="FILE.jsonl",
        help="a recording (otel-linnix record --samples)",
    )
    test.add_argument("--json", action="store_true", help="print alerts as JSON")
    test.set_defaults(func=cmd_rules_test)
