"""Struct offsets and enum values of the running kernel, read from its BTF.

The kernel probes read ``task_struct`` and ``mm_struct`` fields with
``bpf_probe_read_kernel`` at fixed offsets. Those offsets must come from the
running kernel: the installed header tree may be years older than the kernel
(6.1 headers on a 6.18 kernel put ``task_struct.pid`` 1150 bytes off). The
kernel describes its own types in /sys/kernel/btf/vmlinux (format:
Documentation/bpf/btf.rst), so this module reads that blob with the standard
library only and hands the offsets to the BPF compiler as ``-D`` flags.

Loading is lazy on purpose: the vmlinux blob holds ~130k types, most of them
functions. One pass over the type section records where each type starts and
the names of structs and unions; members and enumerators are decoded only for
the few types a query touches.
"""

from __future__ import annotations

import os
import struct
import sys
from array import array
from dataclasses import dataclass, fields

from otel_linnix.errors import CaptureUnavailable

__all__ = ["VMLINUX_BTF", "Btf", "BtfError", "KernelOffsets", "kernel_offsets"]

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"

# struct btf_header: magic, version, flags, hdr_len, type_off, type_len, str_off, str_len.
_HEADER = "HBBIIIII"
_HEADER_SIZE = struct.calcsize("<" + _HEADER)
_BYTE_ORDER = {b"\x9f\xeb": "<", b"\xeb\x9f": ">"}  # the magic 0xeB9F as stored

(INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC,
 FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64) = range(1, 20)  # fmt: skip
_MAX_KIND = ENUM64

# 32-bit words that follow the 12-byte struct btf_type, indexed by kind: a fixed
# part plus a part per vlen item. Walking with these tables is what lets the
# first pass skip every type without decoding it.
_FIXED_WORDS = (0, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0)
_WORDS_PER_ITEM = (0, 0, 0, 0, 3, 3, 2, 0, 0, 0, 0, 0, 0, 2, 0, 3, 0, 0, 0, 3)

# Kinds that only qualify or rename another type; they have the same layout.
_ALIASES = frozenset({TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG})
_QUALIFIERS = {VOLATILE: "volatile", CONST: "const", RESTRICT: "restrict"}
_SIZED = frozenset({INT, STRUCT, UNION, ENUM, ENUM64, FLOAT, DATASEC})
_COMPOSITE = frozenset({STRUCT, UNION})
_TAGS = {STRUCT: "struct", UNION: "union", ENUM: "enum", ENUM64: "enum"}
_WRAPPERS = frozenset({PTR, ARRAY, FUNC_PROTO, VOLATILE, CONST, RESTRICT, TYPE_TAG})

# Real type chains are a handful of links long; a longer one is a corrupt
# blob looping on itself, and stopping beats a RecursionError.
_MAX_CHAIN = 64

# BTF does not record pointer size; a 64-bit agent runs on a 64-bit kernel.
_POINTER_SIZE = struct.calcsize("P")


class BtfError(CaptureUnavailable):
    """The BTF file is absent or unusable, or lacks a type or member we need."""


def _sections(name: str, data: bytes) -> tuple[array[int], bytes]:
    """Check the header; return the type section as native u32 words, and the strings."""
    if len(data) < _HEADER_SIZE:
        raise BtfError(f"{name} is truncated: {len(data)} bytes, less than a BTF header")
    order = _BYTE_ORDER.get(data[:2])
    if order is None:
        raise BtfError(f"{name} is not BTF: bad magic 0x{data[:2].hex()}")
    _, version, _, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
        order + _HEADER, data
    )
    if version != 1:
        raise BtfError(f"{name} has BTF version {version}, only version 1 is understood")
    type_start, str_start = hdr_len + type_off, hdr_len + str_off
    if hdr_len < _HEADER_SIZE or max(type_start + type_len, str_start + str_len) > len(data):
        raise BtfError(f"{name} is truncated: its header describes sections past the end")
    if type_len % 4:
        raise BtfError(f"{name} is corrupt: type section length {type_len} is not 4-aligned")
    strings = data[str_start : str_start + str_len]
    if not strings or strings[-1] != 0:
        raise BtfError(f"{name} is corrupt: string section is not NUL-terminated")
    words = array("I", data[type_start : type_start + type_len])  # 'I' is 32-bit on CPython
    if (order == "<") != (sys.byteorder == "little"):
        words.byteswap()
    return words, strings


class Btf:
    """Lazily indexed BTF type information; create it with :meth:`load`."""

    __slots__ = ("_enumerators", "_names", "_path", "_starts", "_strings", "_words")

    def __init__(self, path: str, words: array[int], starts: array[int], strings: bytes) -> None:
        self._path = path
        self._words = words  # the type section as native-order u32 words
        self._starts = starts  # word index of each type id; id 0 is void
        self._strings = strings
        self._names: dict[str, int] = {}
        self._enumerators: dict[str, int | None] | None = None  # None value: ambiguous

    @classmethod
    def load(cls, path: str | os.PathLike[str] = VMLINUX_BTF) -> Btf:
        """Read and index a raw BTF file such as /sys/kernel/btf/vmlinux."""
        name = os.fspath(path)
        try:
            with open(name, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise BtfError(
                f"{name} is missing: the kernel was built without CONFIG_DEBUG_INFO_BTF, "
                "so the struct offsets kernel capture needs cannot be read"
            ) from None
        except OSError as e:
            raise BtfError(f"cannot read BTF from {name}: {e.strerror or e}") from e
        return cls._parse(name, data)

    @classmethod
    def _parse(cls, name: str, data: bytes) -> Btf:
        words, strings = _sections(name, data)
        btf = cls(name, words, array("I", [0]), strings)
        starts, named, fixed, per_item = btf._starts, [], _FIXED_WORDS, _WORDS_PER_ITEM
        i, end = 0, len(words)
        # The hot loop: ~130k iterations on vmlinux, so it only records offsets.
        try:
            while i < end:
                starts.append(i)
                info = words[i + 1]
                kind = (info >> 24) & 0x1F
                if not 0 < kind <= _MAX_KIND:
                    raise BtfError(f"{name} is corrupt: type {len(starts) - 1} has kind {kind}")
                if 4 <= kind <= 5 and words[i]:  # a named STRUCT or UNION
                    named.append(len(starts) - 1)
                i += 3 + fixed[kind] + per_item[kind] * (info & 0xFFFF)
        except IndexError:
            i = end + 1
        if i != end:
            raise BtfError(f"{name} is truncated: the last type runs past the type section")
        for tid in named:
            # The first definition wins should two translation units disagree.
            btf._names.setdefault(btf._str(words[starts[tid]]), tid)
        return btf

    # -- public queries -------------------------------------------------------

    def member_offset(self, struct: str, path: str) -> int:
        """Byte offset of ``path`` (``"se.sum_exec_runtime"``) inside ``struct``.

        Members of anonymous structs and unions are searched as C does.
        """
        bits, _, _ = self._locate(struct, path)
        if bits % 8:
            raise BtfError(
                f"{self._path}: {struct}.{path} is a bitfield at bit {bits}, not byte aligned"
            )
        return bits // 8

    def member_type_name(self, struct: str, path: str) -> str:
        """C spelling of a member's declared type, e.g. ``struct percpu_counter[4]``."""
        return self._type_name(self._locate(struct, path)[1])

    def struct_size(self, name: str) -> int:
        """``sizeof(struct name)`` (or union)."""
        return self._words[self._starts[self._named(name)] + 2]

    def enum_value(self, enumerator: str) -> int:
        """Value of an enumerator in any enum of the file, named or anonymous."""
        if self._enumerators is None:
            self._enumerators = self._index_enumerators()
        if enumerator not in self._enumerators:
            raise BtfError(f"{self._path} has no enumerator {enumerator}")
        value = self._enumerators[enumerator]
        if value is None:
            raise BtfError(f"{self._path}: enumerator {enumerator} has conflicting values")
        return value

    # -- internals -------------------------------------------------------------

    def _str(self, off: int) -> str:
        end = self._strings.find(b"\0", off)
        if off >= len(self._strings) or end < 0:
            raise BtfError(f"{self._path} is corrupt: string offset {off} is out of range")
        return self._strings[off:end].decode("utf-8", "replace")

    def _type(self, tid: int) -> tuple[int, int, int, int]:
        """(word index, kind, vlen, kind_flag) of a type id."""
        if not 0 < tid < len(self._starts):
            raise BtfError(f"{self._path} is corrupt: reference to missing type id {tid}")
        i = self._starts[tid]
        info = self._words[i + 1]
        return i, (info >> 24) & 0x1F, info & 0xFFFF, info >> 31

    def _named(self, name: str) -> int:
        tid = self._names.get(name)
        if tid is None:
            raise BtfError(f"{self._path} has no struct or union named {name}")
        return tid

    def _strip(self, tid: int) -> int:
        """Follow typedefs and qualifiers to the type that decides the layout."""
        for _ in range(_MAX_CHAIN):
            if tid == 0:
                return 0
            i, kind, _, _ = self._type(tid)
            if kind not in _ALIASES:
                return tid
            tid = self._words[i + 2]
        raise BtfError(f"{self._path} is corrupt: type chain at id {tid} does not end")

    def _kind(self, tid: int) -> int:
        return self._type(tid)[1] if tid else 0  # 0: void

    def _find(self, tid: int, name: bytes, depth: int = 0) -> tuple[int, int, int] | None:
        """(bit offset, type id, bitfield size) of member ``name`` of composite ``tid``."""
        if depth > _MAX_CHAIN:
            raise BtfError(f"{self._path} is corrupt: anonymous members nest without end")
        i, _, vlen, kind_flag = self._type(tid)
        words, strings, key = self._words, self._strings, name + b"\0"
        for m in range(i + 3, i + 3 + 3 * vlen, 3):
            name_off, mtype, raw = words[m], words[m + 1], words[m + 2]
            # With kind_flag the top 8 bits hold the bitfield size.
            bits, size = (raw & 0xFFFFFF, raw >> 24) if kind_flag else (raw, 0)
            if name_off == 0:
                inner = self._strip(mtype)
                if self._kind(inner) in _COMPOSITE:
                    found = self._find(inner, name, depth + 1)
                    if found is not None:
                        return bits + found[0], found[1], found[2]
            elif strings.startswith(key, name_off):
                return bits, mtype, size
        return None

    def _locate(self, struct: str, path: str) -> tuple[int, int, int]:
        """(bit offset, type id, bitfield size) of a dotted member path."""
        parts = path.split(".")
        if not all(parts):
            raise BtfError(f"bad member path {path!r} for struct {struct}")
        bits, tid, size = 0, self._named(struct), 0
        for n, part in enumerate(parts):
            outer = self._strip(tid)
            if self._kind(outer) not in _COMPOSITE:
                raise BtfError(
                    f"{self._path}: {struct}.{'.'.join(parts[:n])} is "
                    f"{self._type_name(tid)}, which has no member {part}"
                )
            found = self._find(outer, part.encode())
            if found is None:
                raise BtfError(f"{self._path}: struct {struct} has no member {path}")
            bits, tid, size = bits + found[0], found[1], found[2]
        return bits, tid, size

    def _size(self, tid: int) -> int:
        tid = self._strip(tid)
        kind = self._kind(tid)
        if kind in _SIZED:
            return self._words[self._starts[tid] + 2]
        if kind == ARRAY:
            i = self._starts[tid]
            return self._words[i + 5] * self._size(self._words[i + 3])
        if kind == PTR:
            return _POINTER_SIZE
        raise BtfError(f"{self._path}: {self._type_name(tid)} has no size")

    def _type_name(self, tid: int, depth: int = 0) -> str:
        """C-like spelling of a type, for member_type_name and error messages."""
        if tid == 0:
            return "void"
        if depth > _MAX_CHAIN:
            raise BtfError(f"{self._path} is corrupt: type chain at id {tid} does not end")
        i, kind, _, kind_flag = self._type(tid)
        words = self._words
        if kind not in _WRAPPERS:
            name = self._str(words[i]) if words[i] else "(anon)"
            tag = ("union" if kind_flag else "struct") if kind == FWD else _TAGS.get(kind)
            return f"{tag} {name}" if tag else name
        inner = self._type_name(words[i + 3] if kind == ARRAY else words[i + 2], depth + 1)
        if kind == PTR:
            text = inner + ("*" if inner.endswith("*") else " *")
        elif kind == ARRAY:  # int[2][3] is an array of 2 int[3]: the new bound goes first
            head, bracket, rest = inner.partition("[")
            text = f"{head}[{words[i + 5]}]{bracket}{rest}"
        elif kind == FUNC_PROTO:
            text = f"{inner} (...)"
        elif kind in _QUALIFIERS:
            text = f"{_QUALIFIERS[kind]} {inner}"
        else:  # TYPE_TAG is an annotation only
            text = inner
        return text

    def _index_enumerators(self) -> dict[str, int | None]:
        words, found = self._words, dict[str, int | None]()
        for tid in range(1, len(self._starts)):
            i = self._starts[tid]
            info = words[i + 1]
            kind, vlen, signed = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            if kind == ENUM:
                items = [(words[m], words[m + 1]) for m in range(i + 3, i + 3 + 2 * vlen, 2)]
                width = 32
            elif kind == ENUM64:
                items = [
                    (words[m], words[m + 1] | words[m + 2] << 32)
                    for m in range(i + 3, i + 3 + 3 * vlen, 3)
                ]
                width = 64
            else:
                continue
            for name_off, raw in items:
                # kind_flag marks a signed enum; stored values are two's complement.
                value = raw - (1 << width) if signed and raw >> (width - 1) else raw
                name = self._str(name_off)
                if found.setdefault(name, value) != value:
                    found[name] = None
        return found


@dataclass(frozen=True, slots=True)
class KernelOffsets:
    """Byte offsets and enum values the kernel probes compile in.

    ``rss_counter_stride`` is the size of one ``mm_struct.rss_stat`` element
    (``struct percpu_counter`` on 6.2+, ``atomic_long_t`` before) and
    ``rss_counter_value`` the offset of the counter inside it, so counter ``k``
    lives at ``mm + mm_rss_stat + k * rss_counter_stride + rss_counter_value``.
    ``mm_filepages`` and friends are the enumerator values used as ``k``.
    """

    task_pid: int
    task_tgid: int
    task_flags: int
    task_real_parent: int
    task_group_leader: int
    task_start_boottime: int
    task_exit_code: int
    task_mm: int
    task_comm: int
    task_sum_exec_runtime: int
    mm_arg_start: int
    mm_arg_end: int
    mm_env_start: int
    mm_env_end: int
    mm_hiwater_rss: int
    mm_rss_stat: int
    rss_counter_stride: int
    rss_counter_value: int
    mm_filepages: int
    mm_anonpages: int
    mm_shmempages: int

    def cflags(self) -> list[str]:
        """One ``-DNAME=value`` per field, in field order.

        Offsets are ``OFF_<FIELD>``: OFF_TASK_PID, OFF_TASK_TGID, OFF_TASK_FLAGS,
        OFF_TASK_REAL_PARENT, OFF_TASK_GROUP_LEADER, OFF_TASK_START_BOOTTIME,
        OFF_TASK_EXIT_CODE, OFF_TASK_MM, OFF_TASK_COMM, OFF_TASK_SUM_EXEC_RUNTIME,
        OFF_MM_ARG_START, OFF_MM_ARG_END, OFF_MM_ENV_START, OFF_MM_ENV_END,
        OFF_MM_HIWATER_RSS, OFF_MM_RSS_STAT. The rest are RSS_STRIDE,
        RSS_VALUE_OFF, RSS_FILEPAGES, RSS_ANONPAGES and RSS_SHMEMPAGES.

        The enumerators are deliberately not ``-DMM_FILEPAGES``: bcc compiles
        against a kernel header tree whose <linux/mm_types_task.h> declares
        ``enum { MM_FILEPAGES, ... }``, which such a macro would break.
        """
        return [
            f"-D{_MACROS.get(f.name, 'OFF_' + f.name.upper())}={getattr(self, f.name)}"
            for f in fields(self)
        ]


_MACROS = {
    "rss_counter_stride": "RSS_STRIDE",
    "rss_counter_value": "RSS_VALUE_OFF",
    "mm_filepages": "RSS_FILEPAGES",
    "mm_anonpages": "RSS_ANONPAGES",
    "mm_shmempages": "RSS_SHMEMPAGES",
}


def _rss_layout(btf: Btf) -> tuple[int, int, int]:
    """(offset, stride, value offset) of the mm_struct RSS counter array."""
    path = "rss_stat"
    tid = btf._strip(btf._locate("mm_struct", path)[1])
    if btf._kind(tid) == STRUCT:  # before 6.2: struct mm_rss_stat { atomic_long_t count[]; }
        path = "rss_stat.count"
        tid = btf._strip(btf._locate("mm_struct", path)[1])
    if btf._kind(tid) != ARRAY:
        raise BtfError(
            f"{btf._path}: mm_struct.{path} is {btf.member_type_name('mm_struct', path)}, "
            "expected an array of struct percpu_counter or atomic_long_t"
        )
    elem = btf._strip(btf._words[btf._starts[tid] + 3])
    value = 0  # a bare integer element (or atomic_long_t.counter) is the value
    if btf._kind(elem) in _COMPOSITE:
        # percpu_counter keeps the summed value in .count; atomic64_t in .counter.
        found = btf._find(elem, b"count") or btf._find(elem, b"counter")
        if found is None or found[0] % 8:
            raise BtfError(
                f"{btf._path}: {btf._type_name(elem)} in mm_struct.{path} has no counter member"
            )
        value = found[0] // 8
    return btf.member_offset("mm_struct", path), btf._size(elem), value


def kernel_offsets(path: str | os.PathLike[str] = VMLINUX_BTF) -> KernelOffsets:
    """Read every offset the kernel probes need from the kernel's BTF.

    Raises BtfError when the file is absent or a struct, member or enumerator
    is missing; the message names the file and the missing piece.
    """
    btf = Btf.load(path)

    def task(member: str, *older: str) -> int:
        # Older kernels spell some members differently (real_start_time became
        # start_boottime in 5.5); the error names the current spelling.
        try:
            return btf.member_offset("task_struct", member)
        except BtfError as first:
            for name in older:
                try:
                    return btf.member_offset("task_struct", name)
                except BtfError:
                    continue
            raise first from None

    def mm(member: str) -> int:
        return btf.member_offset("mm_struct", member)

    rss_stat, stride, value = _rss_layout(btf)
    return KernelOffsets(
        task_pid=task("pid"),
        task_tgid=task("tgid"),
        task_flags=task("flags"),
        task_real_parent=task("real_parent"),
        task_group_leader=task("group_leader"),
        task_start_boottime=task("start_boottime", "real_start_time"),
        task_exit_code=task("exit_code"),
        task_mm=task("mm"),
        task_comm=task("comm"),
        task_sum_exec_runtime=task("se.sum_exec_runtime"),
        mm_arg_start=mm("arg_start"),
        mm_arg_end=mm("arg_end"),
        mm_env_start=mm("env_start"),
        mm_env_end=mm("env_end"),
        mm_hiwater_rss=mm("hiwater_rss"),
        mm_rss_stat=rss_stat,
        rss_counter_stride=stride,
        rss_counter_value=value,
        mm_filepages=btf.enum_value("MM_FILEPAGES"),
        mm_anonpages=btf.enum_value("MM_ANONPAGES"),
        mm_shmempages=btf.enum_value("MM_SHMEMPAGES"),
    )
