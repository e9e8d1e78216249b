"""The agent as users run it: the real CLI, real signals, real fallbacks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
AGENT = [sys.executable, "-m", "otel_linnix.cli"]


class AgentProcess:
    """`otel-linnix ...` as a child process, its stderr collected line by line."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str] | None = None,
        prefix: list[str] | None = None,
        launcher: list[str] = AGENT,
    ) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [*(prefix or []), *launcher, *argv],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for_line(self, text: str, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    pytest.fail(f"{text!r} not printed; stderr was:\n" + "\n".join(self.lines))
                self._cond.wait(min(left, 0.5))

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 10.0) -> float:
        """Send ``sig`` and return how long the agent took to exit."""
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            # Do not leave a hung agent holding the API port for the tests after this one.
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"{sig.name}: still running after {timeout_s} s:\n{self.output()}")
        took = time.monotonic() - started
        self._reader.join(5)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return took

    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)


@pytest.fixture
def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("LINNIX_", "OTEL_"))}


def test_sigterm_and_sigint_stop_within_two_seconds(needs_ebpf: None, env: dict[str, str]) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        agent = AgentProcess(["run", "--config", "config/linnix.toml"], env)
        agent.wait_for_line("otel-linnix running (source ebpf")
        took = agent.stop(sig)
        assert agent.proc.returncode == 0, agent.output()
        assert took < 2.0, f"{sig.name}: stopped after {took:.2f} s"
        assert "Traceback" not in agent.output()
        assert "stopped: source=ebpf" in agent.output()


def test_record_writes_the_documented_format(
    needs_ebpf: None, env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "events.jsonl"
    agent = AgentProcess(["record", "--out", str(out), "--duration", "30", "--no-bootstrap"], env)
    agent.wait_for_line("recording to")
    proc = subprocess.run(["sh", "-c", "exit 42"], check=False)
    assert proc.returncode == 42
    agent.stop(signal.SIGINT)
    assert agent.proc.returncode == 0, agent.output()
    assert "lost=0" in agent.output()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["v"] == 1 and not r["bootstrap"] for r in records)
    assert [r["seq"] for r in records] == sorted(r["seq"] for r in records)
    mine = [
        r for r in records if r["kind"] == "exit" and r["exit_code"] == 42 and r["comm"] == "sh"
    ]
    assert len(mine) == 1
    pid = mine[0]["pid"]
    kinds = [r["kind"] for r in records if r["pid"] == pid]
    assert kinds == ["fork", "exec", "exit"]
    execs = [r for r in records if r["pid"] == pid and r["kind"] == "exec"]
    assert execs[0]["argv"] == ["sh", "-c", "exit 42"]
    assert execs[0]["ppid"] == os.getpid()
    # The recording replays cleanly.
    replay = subprocess.run(
        [*AGENT, "replay", "--quiet", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert replay.returncode == 0, replay.stderr
    assert f"replayed {len(records)} events" in replay.stderr


def _assert_falls_back(agent: AgentProcess, reason: str) -> None:
    line = agent.wait_for_line("polling /proc instead")
    assert reason in line, line
    agent.wait_for_line("otel-linnix running (source procfs")
    degraded = agent.wait_for_line("health: degraded (source procfs)")
    assert reason in degraded
    assert agent.proc.poll() is None, "the agent must keep running on /proc"
    agent.stop()
    assert agent.proc.returncode == 0, agent.output()
    assert "Traceback" not in agent.output()


def test_falls_back_without_btf(needs_ebpf: None, env: dict[str, str]) -> None:
    env["LINNIX_KERNEL_BTF"] = "/nonexistent/vmlinux"
    agent = AgentProcess(["run", "--config", "config/linnix.toml"], env)
    _assert_falls_back(agent, "/nonexistent/vmlinux")


def test_falls_back_when_not_root(needs_ebpf: None, env: dict[str, str]) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop privileges")
    # An unprivileged user with no capabilities at all: what `sudo -u nobody` gives.
    agent = AgentProcess(
        ["run", "--config", "config/linnix.toml"],
        env,
        prefix=[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ],
    )
    _assert_falls_back(agent, "no permission to load eBPF programs")


def test_falls_back_without_bcc(needs_ebpf: None, env: dict[str, str]) -> None:
    # A real interpreter on which bcc is not importable: the venv without the
    # link to Debian's bcc package on its path.
    code = (
        "import sys; sys.path = [p for p in sys.path if 'debian-bcc' not in p]; "
        "from otel_linnix.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    agent = AgentProcess(
        ["run", "--config", "config/linnix.toml"], env, launcher=[sys.executable, "-c", code]
    )
    _assert_falls_back(agent, "bcc is not importable")


def test_falls_back_without_tracefs(needs_ebpf: None, env: dict[str, str]) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is needed for a private mount namespace")
    # In a private mount namespace, tracefs really is absent for the agent.
    script = (
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing "
        '2>/dev/null; umount /sys/kernel/debug 2>/dev/null; exec "$@"'
    )
    agent = AgentProcess(
        ["run", "--config", "config/linnix.toml"],
        env,
        prefix=["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"],
    )
    _assert_falls_back(agent, "tracefs is not mounted")


def test_source_ebpf_without_btf_is_a_startup_error(
    needs_ebpf: None, env: dict[str, str], tmp_path: Path
) -> None:
    cfg = tmp_path / "linnix.toml"
    cfg.write_text('[capture]\nsource = "ebpf"\nbtf_path = "/nonexistent/vmlinux"\n')
    proc = subprocess.run(
        [*AGENT, "run", "--config", str(cfg)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 69
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("otel-linnix:")]
    assert len(lines) == 1 and "/nonexistent/vmlinux" in lines[0]
    assert "Traceback" not in proc.stderr


def test_bpf_dump_prints_program_and_flags(needs_ebpf: None, env: dict[str, str]) -> None:
    proc = subprocess.run(
        [*AGENT, "bpf", "dump"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "//   -DOFF_TASK_PID=" in proc.stdout
    assert "RAW_TRACEPOINT_PROBE(task_newtask)" in proc.stdout
    assert '#include "events.h"' not in proc.stdout  # the header is inlined
    # The TRACEPARENT scan ([lineage] traceparent) and its documented cap.
    assert "//   -DTRACEPARENT_SCAN=1" in proc.stdout
    assert "//   -DENV_SCAN_MAX=8192" in proc.stdout
    assert "read_traceparent(e, mm)" in proc.stdout
