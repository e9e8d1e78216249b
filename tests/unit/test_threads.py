"""Agent threads carry their names into /proc (what top -H and ps -L show)."""

from __future__ import annotations

import threading
from pathlib import Path

from otel_linnix.threads import COMM_MAX, AgentThread, os_thread_name


def test_os_name_drops_the_common_prefix_and_fits_the_kernel_comm() -> None:
    assert os_thread_name("linnix-bpf-drain") == "bpf-drain"
    assert os_thread_name("linnix-sink-metrics") == "sink-metrics"
    assert os_thread_name("linnix-metrics-shutdown") == "metrics-shutdow"
    assert len(os_thread_name("linnix-" + "x" * 40)) == COMM_MAX
    assert os_thread_name("other") == "other"


def test_a_running_agent_thread_has_its_os_name() -> None:
    seen: dict[str, str] = {}

    def work(tag: str) -> None:
        tid = threading.get_native_id()
        seen[tag] = Path(f"/proc/self/task/{tid}/comm").read_text().strip()

    thread = AgentThread(work, "linnix-sink-rules", ("t",))
    assert thread.daemon
    thread.start()
    thread.join(5)
    assert seen == {"t": "sink-rules"}
    # The main thread keeps the process's own name.
    main_comm = Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()
    assert main_comm != "sink-rules"
