"""The ring buffer consumer's record walk: busy, discarded and wrapping records.

The kernel tier reads real rings (tests/kernel/test_capture.py); a record
still being written or a discarded one cannot be produced there on demand,
so here the same memory layout is laid out in a memfd: consumer page,
producer page, then the data area twice in a row, as the kernel maps a ring.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator

import pytest

from otel_linnix.sources.ringbuf import RingReader

PAGE = mmap.PAGESIZE
SIZE = 4 * PAGE
BUSY, DISCARD = 1 << 31, 1 << 30


class FakeRing:
    """A memfd laid out as a BPF ring buffer map's mapping."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("ring")
        os.ftruncate(self.fd, 2 * PAGE + 2 * SIZE)
        self.mem = mmap.mmap(self.fd, 2 * PAGE + 2 * SIZE)
        self.prod = 0

    def put(self, body: bytes, flags: int = 0) -> int:
        """Append one record (header and body) at the producer position; returns its position."""
        pos = self.prod
        record = struct.pack("<II", len(body) | flags, 0) + body
        for copy in (0, SIZE):  # the kernel maps the data area twice
            for i, byte in enumerate(record):
                at = (pos + i) % SIZE
                self.mem[2 * PAGE + copy + at] = byte
        self.prod += (len(body) + 8 + 7) & ~7
        struct.pack_into("<Q", self.mem, PAGE, self.prod)
        return pos

    def set_flags(self, pos: int, length: int, flags: int) -> None:
        for copy in (0, SIZE):
            struct.pack_into("<I", self.mem, 2 * PAGE + copy + pos % SIZE, length | flags)

    def consumer_pos(self) -> int:
        return int(struct.unpack_from("<Q", self.mem, 0)[0])

    def close(self) -> None:
        self.mem.close()
        os.close(self.fd)


@pytest.fixture
def ring() -> Iterator[FakeRing]:
    fake = FakeRing()
    yield fake
    fake.close()


def _read(reader: RingReader) -> list[bytes]:
    got: list[bytes] = []
    reader.consume(got.append)
    return got


def test_records_come_in_order_and_the_consumer_position_follows(ring: FakeRing) -> None:
    reader = RingReader(ring.fd, SIZE)
    bodies = [b"a" * 5, b"b" * 8, b"c" * 13]
    for body in bodies:
        ring.put(body)
    assert _read(reader) == bodies
    assert ring.consumer_pos() == ring.prod == 16 + 16 + 24  # 8-byte aligned with headers
    assert _read(reader) == []
    reader.close()


def test_a_record_still_being_written_holds_back_the_ones_after_it(ring: FakeRing) -> None:
    reader = RingReader(ring.fd, SIZE)
    ring.put(b"first")
    busy_at = ring.put(b"second", BUSY)
    ring.put(b"third")
    assert _read(reader) == [b"first"]
    assert ring.consumer_pos() == busy_at
    ring.set_flags(busy_at, len(b"second"), 0)  # the kernel commits it
    assert _read(reader) == [b"second", b"third"]
    assert ring.consumer_pos() == ring.prod
    reader.close()


def test_discarded_records_are_skipped_and_consumed(ring: FakeRing) -> None:
    reader = RingReader(ring.fd, SIZE)
    ring.put(b"kept")
    ring.put(b"kthread", DISCARD)
    ring.put(b"also kept")
    assert _read(reader) == [b"kept", b"also kept"]
    assert ring.consumer_pos() == ring.prod
    reader.close()


def test_a_record_wrapping_the_end_of_the_ring_arrives_whole(ring: FakeRing) -> None:
    reader = RingReader(ring.fd, SIZE)
    filler = b"x" * (SIZE - 8 - 8 - 16)  # leaves 16 bytes before the end
    ring.put(filler)
    assert _read(reader) == [filler]
    wrapping = bytes(range(100))
    ring.put(wrapping)  # header at SIZE-16, body runs past the end
    assert _read(reader) == [wrapping]
    assert ring.consumer_pos() == ring.prod > SIZE
    reader.close()


def test_a_size_that_is_not_a_power_of_two_pages_is_refused() -> None:
    with pytest.raises(ValueError, match="power-of-2 multiple of a page"):
        RingReader(-1, 3 * PAGE)


def test_a_handler_that_raises_does_not_get_the_same_record_again(ring: FakeRing) -> None:
    reader = RingReader(ring.fd, SIZE)
    ring.put(b"bad")
    ring.put(b"good")
    seen: list[bytes] = []

    def handle(raw: bytes) -> None:
        seen.append(raw)
        if raw == b"bad":
            raise RuntimeError("handler bug")

    with pytest.raises(RuntimeError):
        reader.consume(handle)
    reader.consume(handle)
    assert seen == [b"bad", b"good"]
    reader.close()
