"""Tests of the BTF reader against small blobs encoded here, and the live kernel."""

from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path

import pytest

from otel_linnix.errors import EX_UNAVAILABLE, CaptureUnavailable
from otel_linnix.sources.btf import Btf, BtfError, KernelOffsets, kernel_offsets

# Kind numbers from Documentation/bpf/btf.rst, spelled out here rather than
# imported so a wrong table in the module cannot make the tests agree with it.
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST = range(1, 11)
RESTRICT, FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(11, 20)

VMLINUX = Path("/sys/kernel/btf/vmlinux")

Member = tuple[str, int, int] | tuple[str, int, int, int]  # name, type, bit offset[, bits]


class BlobBuilder:
    """Encodes header + type section + string section; methods return type ids."""

    def __init__(self) -> None:
        self.strings = bytearray(b"\0")
        self.types: list[bytes] = []
        self.order = "<"

    def name(self, text: str) -> int:
        if not text:
            return 0
        off = len(self.strings)
        self.strings += text.encode() + b"\0"
        return off

    def add(
        self,
        kind: int,
        name: str,
        size_or_type: int,
        vlen: int = 0,
        *,
        extra: bytes = b"",
        flag: int = 0,
    ) -> int:
        info = flag << 31 | kind << 24 | vlen
        head = struct.pack(self.order + "III", self.name(name), info, size_or_type)
        self.types.append(head + extra)
        return len(self.types)

    def words(self, *values: int) -> bytes:
        return struct.pack(f"{self.order}{len(values)}I", *values)

    def int_(self, name: str, size: int) -> int:
        return self.add(INT, name, size, extra=self.words(size * 8))

    def ref(self, kind: int, target: int, name: str = "") -> int:
        return self.add(kind, name, target)

    def array(self, elem: int, nelems: int) -> int:
        return self.add(ARRAY, "", 0, extra=self.words(elem, 1, nelems))

    def composite(
        self, name: str, size: int, members: list[Member], kind: int = STRUCT, flag: int = 0
    ) -> int:
        extra = b""
        for m in members:
            bits = m[2] | (m[3] << 24 if len(m) == 4 else 0)
            extra += self.words(self.name(m[0]), m[1], bits)
        return self.add(kind, name, size, len(members), extra=extra, flag=flag)

    def enum(self, name: str, values: dict[str, int], signed: int = 0) -> int:
        extra = b"".join(self.words(self.name(k), v & 0xFFFFFFFF) for k, v in values.items())
        return self.add(ENUM, name, 4, len(values), extra=extra, flag=signed)

    def enum64(self, name: str, values: dict[str, int], signed: int = 0) -> int:
        extra = b""
        for k, v in values.items():
            raw = v & (2**64 - 1)
            extra += self.words(self.name(k), raw & 0xFFFFFFFF, raw >> 32)
        return self.add(ENUM64, name, 8, len(values), extra=extra, flag=signed)

    def every_other_kind(self, int_id: int) -> None:
        """One type of each kind the lookups never read, so a wrong skip length shows."""
        proto = self.add(
            FUNC_PROTO, "", int_id, 2, extra=self.words(self.name("a"), int_id, 0, int_id)
        )
        self.add(FUNC, "do_thing", proto, 1)
        var = self.add(VAR, "some_var", int_id, extra=self.words(1))
        self.add(DATASEC, ".data", 16, 1, extra=self.words(var, 0, 4))
        self.add(FLOAT, "double", 8)
        self.add(DECL_TAG, "tag", int_id, extra=self.words(0xFFFFFFFF))
        self.add(TYPE_TAG, "user", int_id)
        self.add(RESTRICT, "", self.ref(PTR, int_id))
        self.add(FWD, "later", 0, flag=1)
        self.enum64("", {"BIG": 2**40})

    def blob(self, *, big_endian: bool = False) -> bytes:
        order = ">" if big_endian else "<"
        types = b"".join(self.types)
        sizes = (0, len(types), len(types), len(self.strings))  # type off/len, str off/len
        header = struct.pack(order + "HBBIIIII", 0xEB9F, 1, 0, 24, *sizes)
        return header + types + bytes(self.strings)


def write(tmp_path: Path, data: bytes, name: str = "vmlinux") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def sample(order: str = "<") -> BlobBuilder:
    """A blob with the shapes the real kernel uses, at known offsets."""
    b = BlobBuilder()
    b.order = order
    i32, i64, char = b.int_("int", 4), b.int_("long", 8), b.int_("char", 1)
    b.every_other_kind(i32)
    inner = b.composite("sched_entity", 24, [("load", i64, 0), ("sum_exec_runtime", i64, 128)])
    counter = b.composite("atomic64_t", 8, [("counter", i64, 0)])
    atomic_long = b.ref(TYPEDEF, counter, "atomic_long_t")
    counter_t = b.ref(TYPEDEF, b.ref(VOLATILE, inner), "sched_t")
    anon_union = b.composite("", 8, [("as_int", i32, 0), ("as_long", i64, 0)], UNION)
    anon_struct = b.composite("", 16, [("first", i64, 0), ("", anon_union, 64)])
    bitfields = b.composite(
        "bits",
        8,
        [("low", i32, 0, 3), ("high", i32, 3, 5), ("whole", i32, 8, 8), ("after", i32, 32)],
        flag=1,
    )
    b.composite(
        "outer",
        128,
        [
            ("pid", i32, 32),
            ("se", inner, 64),
            ("", anon_struct, 256),
            ("typed", b.ref(CONST, counter_t), 384),
            ("counts", b.array(atomic_long, 4), 576),
            ("comm", b.array(b.array(char, 3), 2), 832),
            ("parent", b.ref(PTR, b.ref(CONST, b.add(FWD, "task_struct", 0))), 896),
        ],
    )
    b.composite("bitholder", 16, [("b", bitfields, 64)])
    b.enum("", {"MM_FILEPAGES": 0, "MM_ANONPAGES": 1, "MM_SHMEMPAGES": 3})
    b.enum("signed_one", {"NEGATIVE": -2}, signed=1)
    b.enum64("wide", {"HUGE": 2**63 + 5, "NEG64": -7}, signed=0)
    b.enum("dup_a", {"SAME": 1, "CLASH": 1})
    b.enum("dup_b", {"SAME": 1, "CLASH": 2})
    return b


@pytest.fixture
def btf(tmp_path: Path) -> Btf:
    return Btf.load(write(tmp_path, sample().blob()))


def test_nested_named_member_path(btf: Btf) -> None:
    assert btf.member_offset("outer", "pid") == 4
    assert btf.member_offset("outer", "se") == 8
    assert btf.member_offset("outer", "se.sum_exec_runtime") == 8 + 16
    assert btf.struct_size("outer") == 128
    assert btf.struct_size("sched_entity") == 24


def test_anonymous_nested_members_are_found(btf: Btf) -> None:
    # anon struct at byte 32; inside it an anon union at byte 8.
    assert btf.member_offset("outer", "first") == 32
    assert btf.member_offset("outer", "as_int") == 40
    assert btf.member_offset("outer", "as_long") == 40
    assert btf.member_type_name("outer", "as_long") == "long"


def test_bitfield_offsets_with_kind_flag(btf: Btf) -> None:
    assert btf.member_offset("bits", "whole") == 1
    assert btf.member_offset("bits", "after") == 4
    assert btf.member_offset("bitholder", "b.whole") == 9
    assert btf.member_offset("bits", "low") == 0  # bit 0 is byte aligned
    with pytest.raises(BtfError, match=r"bits\.high is a bitfield at bit 3, not byte aligned"):
        btf.member_offset("bits", "high")


def test_typedefs_and_qualifiers_are_followed_and_named(btf: Btf) -> None:
    # typed is `const sched_t`, sched_t a typedef of `volatile struct sched_entity`.
    assert btf.member_offset("outer", "typed.sum_exec_runtime") == 48 + 16
    assert btf.member_type_name("outer", "typed") == "const sched_t"
    assert btf.member_type_name("outer", "counts") == "atomic_long_t[4]"
    assert btf.member_type_name("outer", "comm") == "char[2][3]"
    assert btf.member_type_name("outer", "parent") == "const struct task_struct *"
    assert btf.member_type_name("outer", "se") == "struct sched_entity"


def test_enum_values_named_anonymous_signed_and_64_bit(btf: Btf) -> None:
    assert btf.enum_value("MM_ANONPAGES") == 1
    assert btf.enum_value("MM_SHMEMPAGES") == 3
    assert btf.enum_value("NEGATIVE") == -2
    assert btf.enum_value("HUGE") == 2**63 + 5
    assert btf.enum_value("NEG64") == 2**64 - 7  # unsigned enum64: no sign applied
    assert btf.enum_value("BIG") == 2**40
    assert btf.enum_value("SAME") == 1
    with pytest.raises(BtfError, match="CLASH has conflicting values"):
        btf.enum_value("CLASH")
    with pytest.raises(BtfError, match="no enumerator NOPE"):
        btf.enum_value("NOPE")


def test_missing_member_struct_and_bad_path_messages(btf: Btf, tmp_path: Path) -> None:
    with pytest.raises(BtfError) as info:
        btf.member_offset("outer", "se.nosuch")
    assert str(info.value) == f"{tmp_path / 'vmlinux'}: struct outer has no member se.nosuch"
    with pytest.raises(BtfError, match="no struct or union named task_struct"):
        btf.struct_size("task_struct")  # only a FWD declaration exists
    with pytest.raises(BtfError, match=r"outer\.pid is int, which has no member x"):
        btf.member_offset("outer", "pid.x")
    with pytest.raises(BtfError, match=r"bad member path 'se\.'"):
        btf.member_offset("outer", "se.")


def test_big_endian_blob_reads_the_same(tmp_path: Path) -> None:
    btf = Btf.load(write(tmp_path, sample(">").blob(big_endian=True)))
    assert btf.member_offset("outer", "se.sum_exec_runtime") == 24
    assert btf.member_offset("bits", "whole") == 1
    assert btf.enum_value("NEGATIVE") == -2


def _patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


GOOD = sample().blob()
FIRST_TYPE_INFO = 24 + 4  # info word of type id 1
ONE_STRUCT = BlobBuilder()
ONE_STRUCT.composite("outer", 8, [])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"", "truncated: 0 bytes", id="empty"),
        pytest.param(GOOD[:20], "less than a BTF header", id="short-header"),
        pytest.param(GOOD[: len(GOOD) // 2], "sections past the end", id="cut-in-half"),
        pytest.param(b"\x00\x00" + GOOD[2:], "not BTF: bad magic 0x0000", id="magic"),
        pytest.param(_patched(GOOD, 2, "<B", 2), "BTF version 2", id="version"),
        pytest.param(_patched(GOOD, 12, "<I", 10), "not 4-aligned", id="type-len-odd"),
        pytest.param(_patched(GOOD, 12, "<I", 20), "last type runs past", id="type-len-short"),
        pytest.param(GOOD[:-1] + b"x", "not NUL-terminated", id="strings"),
        pytest.param(_patched(GOOD, FIRST_TYPE_INFO, "<I", 25 << 24), "has kind 25", id="kind"),
        pytest.param(
            _patched(ONE_STRUCT.blob(), 24, "<I", 10**6), "string offset 1000000", id="name"
        ),
    ],
)
def test_corrupt_blobs_raise_btf_error(tmp_path: Path, data: bytes, message: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(BtfError, match=message) as info:
        Btf.load(path).struct_size("outer")
    assert str(path) in str(info.value)


def test_dangling_type_reference_is_a_btf_error(tmp_path: Path) -> None:
    b = BlobBuilder()
    b.composite("broken", 8, [("", 999, 0)])
    btf = Btf.load(write(tmp_path, b.blob()))
    with pytest.raises(BtfError, match="missing type id 999"):
        btf.member_offset("broken", "x")


def test_typedef_cycle_is_a_btf_error(tmp_path: Path) -> None:
    b = BlobBuilder()
    b.add(TYPEDEF, "loop", 1)  # type 1 refers to itself
    b.composite("holder", 8, [("x", 1, 0)])
    btf = Btf.load(write(tmp_path, b.blob()))
    with pytest.raises(BtfError, match="does not end"):
        btf.member_offset("holder", "x.y")


def test_missing_file_is_capture_unavailable(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "vmlinux"
    with pytest.raises(BtfError) as info:
        kernel_offsets(missing)
    message = str(info.value)
    assert message.startswith(f"{missing} is missing: ")
    assert "CONFIG_DEBUG_INFO_BTF" in message
    assert isinstance(info.value, CaptureUnavailable)
    assert info.value.exit_code == EX_UNAVAILABLE


def test_unreadable_path_is_a_btf_error(tmp_path: Path) -> None:
    with pytest.raises(BtfError, match="cannot read BTF from"):
        Btf.load(tmp_path)  # a directory


def kernel_like(new_rss: bool) -> bytes:
    """task_struct and mm_struct shaped like 6.18 (new_rss) or like 5.x."""
    b = BlobBuilder()
    i32, i64, char = b.int_("int", 4), b.int_("long unsigned int", 8), b.int_("char", 1)
    b.every_other_kind(i32)
    task_ptr = b.ref(PTR, b.add(FWD, "task_struct", 0))
    mm_ptr = b.ref(PTR, b.add(FWD, "mm_struct", 0))
    se = b.composite("sched_entity", 64, [("load", i64, 0), ("sum_exec_runtime", i64, 256)])
    atomic_long = b.ref(
        TYPEDEF, b.composite("atomic64_t", 8, [("counter", i64, 0)]), "atomic_long_t"
    )
    if new_rss:
        pcp = b.composite(
            "percpu_counter", 40, [("lock", i32, 0), ("count", i64, 64), ("list", i64, 128)]
        )
        rss = b.array(pcp, 4)
        enum = {"MM_FILEPAGES": 4, "MM_ANONPAGES": 5, "MM_SWAPENTS": 6, "MM_SHMEMPAGES": 7}
    else:
        rss = b.composite("mm_rss_stat", 32, [("count", b.array(atomic_long, 4), 0)])
        enum = {"MM_FILEPAGES": 0, "MM_ANONPAGES": 1, "MM_SWAPENTS": 2, "MM_SHMEMPAGES": 3}
    b.enum("", enum)
    fields = [("hiwater_rss", i64, 64), ("arg_start", i64, 128), ("arg_end", i64, 192)]
    fields += [("env_start", i64, 256), ("env_end", i64, 320), ("rss_stat", rss, 384)]
    body = b.composite("", 320, [("", b.composite("", 8, [("mmap", i64, 0)]), 0), *fields])
    b.composite("mm_struct", 400, [("", body, 64), ("cpu_bitmap", i64, 3000)])
    # kind_flag set like the real task_struct, which has bitfields.
    boottime = "start_boottime" if new_rss else "real_start_time"
    task: list[Member] = [
        ("flags", i32, 96, 0), ("in_execve", i32, 128, 1), ("mm", mm_ptr, 192, 0),
        ("exit_code", i32, 256, 0), ("pid", i32, 288, 0), ("tgid", i32, 320, 0),
        ("real_parent", task_ptr, 384, 0), ("group_leader", task_ptr, 448, 0),
        ("se", se, 512, 0), (boottime, i64, 1024, 0), ("comm", b.array(char, 16), 1088, 0),
    ]  # fmt: skip
    b.composite("task_struct", 1024, task, flag=1)
    return b.blob()


def test_kernel_offsets_new_rss_layout(tmp_path: Path) -> None:
    got = kernel_offsets(write(tmp_path, kernel_like(new_rss=True)))
    expected = KernelOffsets(
        task_pid=36, task_tgid=40, task_flags=12, task_real_parent=48, task_group_leader=56,
        task_start_boottime=128, task_exit_code=32, task_mm=24, task_comm=136,
        task_sum_exec_runtime=64 + 32, mm_arg_start=8 + 16, mm_arg_end=8 + 24,
        mm_env_start=8 + 32, mm_env_end=8 + 40, mm_hiwater_rss=8 + 8, mm_rss_stat=8 + 48,
        rss_counter_stride=40, rss_counter_value=8,
        mm_filepages=4, mm_anonpages=5, mm_shmempages=7,
    )  # fmt: skip
    assert got == expected
    flags = got.cflags()
    assert len(flags) == len(dataclasses.fields(KernelOffsets))
    assert flags[0] == "-DOFF_TASK_PID=36"
    assert "-DOFF_TASK_SUM_EXEC_RUNTIME=96" in flags
    assert "-DOFF_MM_RSS_STAT=56" in flags
    assert flags[-5:] == [
        "-DRSS_STRIDE=40",
        "-DRSS_VALUE_OFF=8",
        "-DRSS_FILEPAGES=4",
        "-DRSS_ANONPAGES=5",
        "-DRSS_SHMEMPAGES=7",
    ]


def test_kernel_offsets_old_rss_layout(tmp_path: Path) -> None:
    got = kernel_offsets(write(tmp_path, kernel_like(new_rss=False)))
    assert got.task_start_boottime == 128  # read from real_start_time
    assert (got.mm_rss_stat, got.rss_counter_stride, got.rss_counter_value) == (56, 8, 0)
    assert (got.mm_filepages, got.mm_anonpages, got.mm_shmempages) == (0, 1, 3)


def test_kernel_offsets_names_the_missing_member(tmp_path: Path) -> None:
    data = kernel_like(new_rss=True).replace(b"\0exit_code\0", b"\0exit_kode\0")
    with pytest.raises(BtfError, match="struct task_struct has no member exit_code"):
        kernel_offsets(write(tmp_path, data))


@pytest.mark.skipif(not os.access(VMLINUX, os.R_OK), reason=f"{VMLINUX} is not readable")
def test_live_kernel_offsets_are_plausible() -> None:
    btf = Btf.load()
    got = kernel_offsets()
    task_size, mm_size = btf.struct_size("task_struct"), btf.struct_size("mm_struct")
    for field in dataclasses.fields(got):
        value = getattr(got, field.name)
        limit = task_size if field.name.startswith("task_") else mm_size
        assert 0 <= value < limit, field.name
    assert got.task_tgid == got.task_pid + 4  # pid_t pid; pid_t tgid; adjacent since 2.6
    assert got.mm_arg_end == got.mm_arg_start + 8
    assert got.mm_env_start == got.mm_arg_end + 8
    assert got.task_comm + 16 <= task_size
    assert got.rss_counter_value + 8 <= got.rss_counter_stride
    assert got.mm_rss_stat + 4 * got.rss_counter_stride <= mm_size
    assert (got.mm_filepages, got.mm_anonpages) == (0, 1)
    assert btf.member_type_name("task_struct", "comm") == "char[16]"
