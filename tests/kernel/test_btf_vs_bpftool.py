"""The BTF reader agrees with bpftool, an independent reader of the same file.

Offsets of nested and anonymous members are computed here from bpftool's raw
dump, so the only shared input is /sys/kernel/btf/vmlinux itself.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from otel_linnix.sources.btf import Btf, BtfError, kernel_offsets

VMLINUX = Path("/sys/kernel/btf/vmlinux")

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool is not on PATH"),
    pytest.mark.skipif(not VMLINUX.exists(), reason=f"{VMLINUX} is absent (no kernel BTF)"),
]

# "[264] STRUCT 'mm_struct' size=1472 vlen=2"
TYPE_LINE = re.compile(r"\[(\d+)\] (\w+) '([^']*)'(.*)")
# "\t'cpu_bitmap' type_id=488 bits_offset=11776[ bitfield_size=1]"
MEMBER_LINE = re.compile(r"\t'([^']*)' type_id=(\d+) bits_offset=(\d+)")
# "\t'MM_ANONPAGES' val=1", "\t'PERF_TXN_SYNC' val=4ULL" (ENUM64)
VALUE_LINE = re.compile(r"\t'([^']*)' val=(-?\d+)(?:U?LL)?$")
ALIASES = {"TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"}


@dataclass
class RawType:
    kind: str
    name: str
    attrs: dict[str, str]
    members: list[tuple[str, int, int]] = field(default_factory=list)  # name, type, bits
    values: list[tuple[str, int]] = field(default_factory=list)


class RawDump:
    """bpftool's raw dump, with the C rules for member lookup written out again."""

    def __init__(self, text: str) -> None:
        self.types: dict[int, RawType] = {}
        current: RawType | None = None
        for line in text.splitlines():
            if line.startswith("\t"):
                # Items of other kinds (parameters, section entries) are not needed.
                assert current is not None, line
                if current.kind in {"STRUCT", "UNION"}:
                    member = MEMBER_LINE.match(line)
                    assert member is not None, line
                    current.members.append((member[1], int(member[2]), int(member[3])))
                elif current.kind in {"ENUM", "ENUM64"}:
                    value = VALUE_LINE.match(line)
                    assert value is not None, line
                    current.values.append((value[1], int(value[2])))
                continue
            head = TYPE_LINE.match(line)
            assert head is not None, line
            attrs = dict(kv.split("=", 1) for kv in head[4].split() if "=" in kv)
            current = RawType(head[2], head[3], attrs)
            self.types[int(head[1])] = current
        self.structs = Counter(t.name for t in self.types.values() if t.kind in {"STRUCT", "UNION"})

    def named(self, name: str) -> int:
        return next(
            tid for tid, t in self.types.items() if t.kind in {"STRUCT", "UNION"} and t.name == name
        )

    def strip(self, tid: int) -> int:
        while tid and self.types[tid].kind in ALIASES:
            tid = int(self.types[tid].attrs["type_id"])
        return tid

    def find(self, tid: int, name: str) -> tuple[int, int] | None:
        for member, mtype, bits in self.types[tid].members:
            if member == name:
                return bits, mtype
            inner = self.strip(mtype)
            if member == "(anon)" and self.types[inner].kind in {"STRUCT", "UNION"}:
                found = self.find(inner, name)
                if found is not None:
                    return bits + found[0], found[1]
        return None

    def member_names(self, tid: int) -> list[str]:
        """Every member name reachable without a dot, through anonymous members."""
        names = []
        for member, mtype, _ in self.types[tid].members:
            inner = self.strip(mtype)
            if member != "(anon)":
                names.append(member)
            elif self.types[inner].kind in {"STRUCT", "UNION"}:
                names += self.member_names(inner)
        return names

    def locate(self, struct: str, path: str) -> tuple[int, int]:
        bits, tid = 0, self.named(struct)
        for part in path.split("."):
            found = self.find(self.strip(tid), part)
            assert found is not None, f"bpftool: {struct} has no {path}"
            bits, tid = bits + found[0], found[1]
        return bits, tid

    def offset(self, struct: str, path: str) -> int:
        bits = self.locate(struct, path)[0]
        assert bits % 8 == 0
        return bits // 8

    def size(self, tid: int) -> int:
        t = self.types[self.strip(tid)]
        if t.kind == "ARRAY":
            return int(t.attrs["nr_elems"]) * self.size(int(t.attrs["type_id"]))
        return int(t.attrs["size"])

    def enum_value(self, name: str) -> int:
        return next(
            value
            for t in self.types.values()
            if t.kind in {"ENUM", "ENUM64"}
            for enumerator, value in t.values
            if enumerator == name
        )


@pytest.fixture(scope="module")
def dump() -> RawDump:
    cmd = ["bpftool", "btf", "dump", "file", str(VMLINUX), "format", "raw"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
    return RawDump(out.stdout)


def expected_offsets(d: RawDump) -> dict[str, int]:
    task = {
        "pid": "pid",
        "tgid": "tgid",
        "flags": "flags",
        "real_parent": "real_parent",
        "group_leader": "group_leader",
        "start_boottime": "start_boottime",
        "exit_code": "exit_code",
        "mm": "mm",
        "comm": "comm",
        "sum_exec_runtime": "se.sum_exec_runtime",
    }
    mm = ["arg_start", "arg_end", "env_start", "env_end", "hiwater_rss"]
    out = {f"task_{k}": d.offset("task_struct", v) for k, v in task.items()}
    out |= {f"mm_{k}": d.offset("mm_struct", k) for k in mm}
    path = "rss_stat"
    array = d.types[d.strip(d.locate("mm_struct", path)[1])]
    if array.kind == "STRUCT":  # struct mm_rss_stat before 6.2
        path = "rss_stat.count"
        array = d.types[d.strip(d.locate("mm_struct", path)[1])]
    assert array.kind == "ARRAY"
    elem = d.strip(int(array.attrs["type_id"]))
    counter = d.find(elem, "count") or d.find(elem, "counter")
    assert counter is not None
    out |= {
        "mm_rss_stat": d.offset("mm_struct", path),
        "rss_counter_stride": d.size(elem),
        "rss_counter_value": counter[0] // 8,
        "mm_filepages": d.enum_value("MM_FILEPAGES"),
        "mm_anonpages": d.enum_value("MM_ANONPAGES"),
        "mm_shmempages": d.enum_value("MM_SHMEMPAGES"),
    }
    return out


def test_kernel_offsets_match_bpftool(dump: RawDump) -> None:
    got = dataclasses.asdict(kernel_offsets())
    assert got == expected_offsets(dump)


def test_every_uniquely_named_struct_size_matches_bpftool(dump: RawDump) -> None:
    # Sizes of ~10k structs spread over the whole type section: a wrong skip
    # length for any kind would shift every later type.
    btf = Btf.load()
    checked = 0
    for t in dump.types.values():
        if t.kind in {"STRUCT", "UNION"} and dump.structs[t.name] == 1 and t.name != "(anon)":
            assert btf.struct_size(t.name) == int(t.attrs["size"]), t.name
            checked += 1
    assert checked > 1000


def test_all_member_offsets_of_probed_structs_match_bpftool(dump: RawDump) -> None:
    btf = Btf.load()
    for struct in ("task_struct", "mm_struct", "sched_entity", "percpu_counter"):
        names = dump.member_names(dump.named(struct))
        assert len(names) > 3, struct
        for name in names:
            bits = dump.locate(struct, name)[0]
            if bits % 8 == 0:
                assert btf.member_offset(struct, name) == bits // 8, f"{struct}.{name}"
            else:
                with pytest.raises(BtfError, match="not byte aligned"):
                    btf.member_offset(struct, name)


def test_every_unambiguous_enumerator_matches_bpftool(dump: RawDump) -> None:
    btf = Btf.load()
    values: dict[str, set[int]] = {}
    for t in dump.types.values():
        for name, value in t.values:
            values.setdefault(name, set()).add(value)
    unique = {name: v.pop() for name, v in values.items() if len(v) == 1}
    assert len(unique) > 10000
    assert any(v < 0 for v in unique.values())  # signed enums are covered
    assert any(v >= 2**32 for v in unique.values())  # and 64-bit ones
    for name, value in unique.items():
        assert btf.enum_value(name) == value, name
