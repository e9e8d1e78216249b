"""User space and the kernel agree on the record layout of bpf/events.h.

The header is compiled with the host C compiler (x86-64 and BPF share the
LP64 layout of these plain integer structs) and every offset is compared
with what the decoder in otel_linnix/sources/bpf.py assumes.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from otel_linnix.sources.bpf import HEADER, TP_MAX, RecordLayout

ROOT = Path(__file__).resolve().parents[2]
FNAME_MAX, ARGV_MAX = 512, 4096

PROGRAM = r"""
#include <stddef.h>
#include <stdio.h>
#include <linux/types.h>
#include "events.h"
#define P(t, f) printf(#t "." #f " %zu\n", offsetof(struct t, f))
#define S(t) printf(#t " %zu\n", sizeof(struct t))
int main(void) {
    S(event_header); P(event_header, ts_ns); P(event_header, cgroup_id);
    P(event_header, comm); P(event_header, flags);
    S(fork_event); P(fork_event, clone_flags);
    S(exit_event); P(exit_event, exit_code); P(exit_event, cpu_ns);
    P(exit_event, peak_rss_pages);
    S(oom_event); P(oom_event, rss_pages);
    P(exec_event, fname_len); P(exec_event, argv_len); P(exec_event, tp_len);
    P(exec_event, traceparent); P(exec_event, filename); P(exec_event, argv);
    printf("TP_MAX %d\n", TP_MAX); printf("TP_COPY %d\n", TP_COPY);
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to compile the header")
def test_decoder_matches_events_h(tmp_path: Path) -> None:
    src = tmp_path / "layout.c"
    src.write_text(PROGRAM)
    exe = tmp_path / "layout"
    subprocess.run(
        [
            "gcc",
            f"-DFNAME_MAX={FNAME_MAX}",
            f"-DARGV_MAX={ARGV_MAX}",
            f"-I{ROOT / 'bpf'}",
            "-o",
            str(exe),
            str(src),
        ],
        check=True,
    )
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    got = {name: int(value) for name, value in (line.split() for line in out.splitlines())}
    layout = RecordLayout(FNAME_MAX)
    assert got["event_header"] == HEADER.size == 72
    assert got["event_header.flags"] == 20
    assert got["event_header.ts_ns"] == 24
    assert got["event_header.cgroup_id"] == 48
    assert got["event_header.comm"] == 56
    assert got["fork_event.clone_flags"] == HEADER.size
    assert got["exit_event.exit_code"] == HEADER.size
    assert got["exit_event.cpu_ns"] == HEADER.size + 8
    assert got["exit_event.peak_rss_pages"] == HEADER.size + 16
    assert got["exit_event"] == HEADER.size + 24
    assert got["oom_event.rss_pages"] == HEADER.size
    assert got["exec_event.fname_len"] == HEADER.size
    assert got["exec_event.argv_len"] == HEADER.size + 4
    assert got["exec_event.tp_len"] == HEADER.size + 8
    assert got["exec_event.traceparent"] == layout.exec_traceparent_off
    assert got["TP_MAX"] == TP_MAX
    # 55 characters of a version-00 traceparent, one more to tell a longer
    # value, and the NUL bpf_probe_read_user_str writes must fit.
    assert got["TP_COPY"] == 56
    assert got["TP_COPY"] + 1 <= TP_MAX
    assert got["exec_event.filename"] == layout.exec_filename_off
    assert got["exec_event.argv"] == layout.exec_argv_off
