"""The ``otel-linnix`` command: run, check-config, record, replay, bpf dump.

Only this module (and the client CLI) prints. Start-up problems are
LinnixErrors: one line per problem on stderr and a sysexits code.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO

from otel_linnix.config import Config, load_config
from otel_linnix.console import event_line
from otel_linnix.errors import EX_DATAERR, EX_SOFTWARE, DataError, LinnixError, UsageError
from otel_linnix.events import ProcessEvent
from otel_linnix.pipeline import AgentStatus, Pipeline
from otel_linnix.process_table import ProcessTable
from otel_linnix.rules_cli import add_rules_commands
from otel_linnix.sinks import JsonlWriter, SinkWorker

__all__ = ["main"]

log = logging.getLogger("otel_linnix")

# A status line this often while running, so a foreground agent shows life.
_STATUS_EVERY_S = 60.0


def _status_line(st: AgentStatus) -> str:
    kinds = " ".join(f"{k}={v}" for k, v in sorted(st.events_by_kind.items())) or "none"
    lost = st.source_stats.lost_total
    dropped = sum(st.sink_dropped.values())
    health = "degraded: " + "; ".join(st.degraded_reasons) if st.degraded else "ok"
    return (
        f"source={st.source.value} events[{kinds}] lost={lost} sink_drops={dropped} "
        f"live={st.table.live} exited={st.table.exited} "
        f"evicted={st.table.evicted_exited + st.table.evicted_live} "
        f"sweep={st.sampler.duration_s * 1000:.1f}ms status={health}"
    )


class _StopRequest:
    """Set by SIGINT/SIGTERM, waited on by the main thread.

    Python runs signal handlers in the main thread between bytecodes, possibly
    while that thread holds a lock inside ``threading.Event.wait``; an Event
    set from the handler would then deadlock on its own condition (and a
    logging call on the handler's lock). So the handler only records the
    signal and writes a byte to a pipe, and waiting is a ``select`` on it.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self.signum: int | None = None

    def handler(self, signum: int, _frame: object) -> None:
        self.signum = signum
        with contextlib.suppress(BlockingIOError):  # a byte is already waiting
            os.write(self._write, b"\0")

    def wait(self, timeout_s: float | None) -> bool:
        """True once a stop was requested; False when ``timeout_s`` passed first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.signum is None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self._read], [], [], left)
            if not ready:
                return False
            # Woken by the interpreter's wakeup byte, possibly before the
            # Python-level handler ran: drain and look again.
            with contextlib.suppress(BlockingIOError):
                os.read(self._read, 512)
        log.info("received %s, stopping", signal.Signals(self.signum).name)
        return True

    @property
    def wakeup_fd(self) -> int:
        return self._write

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[_StopRequest]:
    stop = _StopRequest()
    previous = {s: signal.signal(s, stop.handler) for s in (signal.SIGINT, signal.SIGTERM)}
    # The kernel may deliver the signal to any thread; the interpreter then
    # only flags it for the main thread, whose select would sleep on. The
    # wakeup fd gets a byte from whichever thread caught it.
    previous_fd = signal.set_wakeup_fd(stop.wakeup_fd, warn_on_full_buffer=False)
    try:
        yield stop
    finally:
        signal.set_wakeup_fd(previous_fd)
        for s, h in previous.items():
            signal.signal(s, h)
        stop.close()


def _build(config: Config, sinks: Sequence[SinkWorker] = ()) -> Pipeline:
    from otel_linnix.agent import build_pipeline  # noqa: PLC0415 - keeps `--help` fast

    return build_pipeline(config, sinks)


def cmd_run(args: argparse.Namespace) -> int:
    from otel_linnix.agent import Agent  # noqa: PLC0415 - keeps `--help` fast

    config = load_config(args.config)
    for key in config.ignored_keys:
        log.warning("config: %s is a Linnix setting this agent does not use; ignored", key)
    agent = Agent(config)
    pipeline = agent.pipeline
    with _stop_on_signals() as stop:
        agent.start()
        log.info(
            "otel-linnix running (source %s, config %s, API http://%s:%d)",
            pipeline.source.kind.value,
            config.source_path or "embedded defaults",
            agent.api.host,
            agent.api.port,
        )
        if pipeline.fallback_reason:
            log.warning(
                "health: degraded (source %s): %s",
                pipeline.source.kind.value,
                pipeline.fallback_reason,
            )
        while not stop.wait(_STATUS_EVERY_S):
            log.info("%s", _status_line(pipeline.status()))
    agent.stop(timeout_s=1.8)
    log.info("stopped: %s", _status_line(pipeline.status()))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    print(f"config ok: {config.source_path or 'embedded defaults'}")
    print(f"rules: {config.rules_path() if config.rules.enabled else 'disabled'}")
    print(
        f"capture: source={config.capture.source} "
        f"drain_interval_ms={config.capture.drain_interval_ms}"
    )
    for key in config.ignored_keys:
        print(f"ignored (Linnix setting not used here): {key}")
    return 0


class _BootstrapFilter:
    """A sink wrapper that leaves out start-up walk events."""

    def __init__(self, inner: JsonlWriter) -> None:
        self.inner = inner
        self.name = inner.name

    def emit(self, events: Sequence[ProcessEvent]) -> None:
        kept = [ev for ev in events if not ev.bootstrap]
        if kept:
            self.inner.emit(kept)

    def flush(self, timeout_s: float) -> None:
        self.inner.flush(timeout_s)

    def shutdown(self, timeout_s: float) -> None:
        self.inner.shutdown(timeout_s)


def cmd_record(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    out: IO[bytes]
    try:
        out = sys.stdout.buffer if args.out == "-" else open(args.out, "wb")  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"cannot write {args.out}: {exc.strerror}") from None
    try:
        from otel_linnix.agent import wall_from_boot  # noqa: PLC0415

        writer = JsonlWriter(out, wall_from_boot)
        sink = SinkWorker(_BootstrapFilter(writer) if args.no_bootstrap else writer)
        pipeline = _build(config, [sink])
        writer.boot_id = pipeline.table.lineage.boot_uuid
        if args.samples:
            pipeline.add_sweep_listener(writer.write_sweep)
        with _stop_on_signals() as stop:
            pipeline.start()
            log.info(
                "recording to %s (source %s)%s",
                args.out,
                pipeline.source.kind.value,
                f" for {args.duration:g} s" if args.duration else "",
            )
            stop.wait(args.duration if args.duration else None)
        pipeline.stop(timeout_s=5.0)
        st = pipeline.status()
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    print(_status_line(st), file=sys.stderr)
    if sink.dropped:
        print(
            f"otel-linnix: {sink.dropped} events did not fit the recorder's queue "
            "and are missing from the recording",
            file=sys.stderr,
        )
    return 0


class _PrintingSink:
    def __init__(self, table: ProcessTable, emit: Callable[[ProcessEvent], None]) -> None:
        self.table = table
        self.emit = emit

    def handle_batch(self, events: Sequence[ProcessEvent]) -> None:
        # Lineage ids as this replay's table computes them, not as recorded.
        lineage = self.table.apply_batch(events)
        for ev, ids in zip(events, lineage, strict=True):
            self.emit(ev.stamp(ev.seq, None, ids))


def recording_wall_offset(path: str) -> int | None:
    """Boot clock -> wall clock of the machine that recorded ``path``, from
    the first line carrying both; None when there is none (times then show
    as seconds since that machine booted)."""
    from otel_linnix.recording import open_recording, parse_iso_time  # noqa: PLC0415

    try:
        with open_recording(path) as fh:
            for line in itertools.islice(fh, 1000):
                try:
                    obj = json.loads(line)
                    wall = parse_iso_time(obj["time"]) if obj.get("time") else None
                except (ValueError, TypeError, AttributeError, KeyError):
                    continue
                ts_ns = obj.get("ts_ns")
                if wall is not None and isinstance(ts_ns, int):
                    return wall - ts_ns
    except OSError:
        return None  # reported by the replay itself
    return None


def replay_boot_id(path: str) -> str | None:
    """The boot id a recording names (None for recordings made before the
    field existed, or when the file cannot be read: the replay reports that)."""
    from otel_linnix.recording import open_recording, recording_boot_id  # noqa: PLC0415

    try:
        with open_recording(path) as fh:
            return recording_boot_id(fh)
    except OSError:
        return None


def cmd_replay(args: argparse.Namespace) -> int:
    from otel_linnix.lineage import NO_BOOT_ID, LineagePolicy, boot_id_bytes  # noqa: PLC0415
    from otel_linnix.recording import encode_event  # noqa: PLC0415
    from otel_linnix.sources.replay import ReplaySource  # noqa: PLC0415

    config = load_config(args.config)
    # Lineage ids are recomputed with the recording's boot id, so a replay
    # shows the ids the live agent showed.
    boot_text = replay_boot_id(args.file)
    try:
        boot = boot_id_bytes(boot_text) if boot_text is not None else NO_BOOT_ID
    except ValueError:
        raise DataError(f"{args.file}: boot_id {boot_text!r} is not a UUID") from None
    table = ProcessTable(
        config.process_table.max_entries,
        int(config.process_table.exited_retention_s * 1e9),
        LineagePolicy.from_config(config.lineage, boot),
    )
    out: IO[str] = sys.stdout
    colour = out.isatty() and not args.no_color

    wall_offset = recording_wall_offset(args.file)

    def emit(ev: ProcessEvent) -> None:
        if args.json:
            out.write(encode_event(ev, None, boot_text).decode() + "\n")
        elif not args.quiet:
            wall = ev.ts_ns + wall_offset if wall_offset is not None else None
            out.write(event_line(ev, wall, colour=colour) + "\n")

    source = ReplaySource(args.file)
    try:
        count = source.run(_PrintingSink(table, emit))
    except OSError as exc:
        raise DataError(f"{args.file}: cannot read recording: {exc.strerror}") from None
    for line_no, reason in source.errors:
        print(f"otel-linnix: {args.file}:{line_no}: {reason}", file=sys.stderr)
    st = table.stats()
    print(
        f"replayed {count} events from {args.file}: {st.live} processes still running, "
        f"{st.exited} exited, {source.error_count} bad lines",
        file=sys.stderr,
    )
    return EX_DATAERR if source.error_count else 0


def cmd_bpf_dump(args: argparse.Namespace) -> int:
    from otel_linnix.sources.bpf import BpfSource  # noqa: PLC0415

    config = load_config(args.config)
    print(BpfSource(config.capture, traceparent=config.lineage.traceparent).program().dump())
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="otel-linnix",
        description=(
            "Watch every process on this host from the kernel and export it the OpenTelemetry way."
        ),
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument(
            "--config",
            metavar="PATH",
            help="linnix.toml (default: $LINNIX_CONFIG, /etc/linnix/linnix.toml, "
            "else embedded defaults)",
        )
        return sp

    with_config(sub.add_parser("run", help="run the agent in the foreground")).set_defaults(
        func=cmd_run
    )
    with_config(sub.add_parser("check-config", help="validate the configuration")).set_defaults(
        func=cmd_check_config
    )
    rec = with_config(sub.add_parser("record", help="record lifecycle events as JSON Lines"))
    rec.add_argument("--out", required=True, metavar="FILE", help="output file, - for stdout")
    rec.add_argument(
        "--duration",
        type=float,
        default=0.0,
        metavar="S",
        help="stop after S seconds (default: until interrupted)",
    )
    rec.add_argument(
        "--samples",
        action="store_true",
        help="also record every sampler sweep (per-process CPU, memory, fds; host pressure)",
    )
    rec.add_argument(
        "--no-bootstrap",
        action="store_true",
        help="leave out the processes that were running at start-up",
    )
    rec.set_defaults(func=cmd_record)
    rep = with_config(sub.add_parser("replay", help="replay a recording through the agent"))
    rep.add_argument("file", metavar="FILE")
    rep.add_argument("--json", action="store_true", help="print events as JSON Lines")
    rep.add_argument("--quiet", action="store_true", help="print only the summary")
    rep.add_argument("--no-color", action="store_true")
    rep.set_defaults(func=cmd_replay)
    add_rules_commands(sub, with_config)
    bpf = sub.add_parser("bpf", help="eBPF program tools")
    bpf_sub = bpf.add_subparsers(dest="bpf_command", required=True, metavar="COMMAND")
    with_config(
        bpf_sub.add_parser("dump", help="print the final BPF program and its flags")
    ).set_defaults(func=cmd_bpf_dump)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors; sysexits says 64
        return 0 if exc.code == 0 else UsageError.exit_code
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result: int = args.func(args)
    except LinnixError as exc:
        for line in str(exc).splitlines():
            print(f"otel-linnix: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception:
        log.exception("internal error")
        return EX_SOFTWARE
    return result


if __name__ == "__main__":
    sys.exit(main())
