"""Agent threads that carry their name into the kernel.

CPython names a thread only for itself, so ``top -H``, ``ps -L`` and
/proc/<pid>/task/<tid>/comm show every agent thread as ``otel-linnix``.
An operator asking which part of the agent uses the CPU (the drain loop,
the rules engine, an exporter) needs the OS name; so do the benchmarks that
report CPU per thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

# The kernel keeps 15 bytes of a task's comm; the common prefix would use 7.
_PREFIX = "linnix-"
COMM_MAX = 15


def os_thread_name(name: str) -> str:
    """The comm an agent thread called ``name`` gets: ``linnix-bpf-drain`` -> ``bpf-drain``."""
    return name.removeprefix(_PREFIX)[:COMM_MAX]


class AgentThread(threading.Thread):
    """A daemon thread that sets its OS name from its Python name when it starts."""

    def __init__(
        self, target: Callable[..., object], name: str, args: tuple[object, ...] = ()
    ) -> None:
        super().__init__(target=target, name=name, args=args, daemon=True)

    def run(self) -> None:
        # Best effort: a name is for people and tools reading /proc; a kernel
        # or sandbox refusing it must not stop the thread's work.
        comm = f"/proc/self/task/{threading.get_native_id()}/comm"
        with contextlib.suppress(OSError), open(comm, "w") as fh:
            fh.write(os_thread_name(self.name))
        super().run()
