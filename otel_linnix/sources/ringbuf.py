"""A BPF ring buffer read straight from its memory mapping.

bcc hands each record to Python through a ctypes callback: libbpf's consumer
loop runs without the GIL and takes it back for every record, so each record
costs a GIL round trip (contended by the agent's other threads during a
burst) on top of the callback itself. Reading the mapping in Python keeps the
drain thread on the GIL for a whole batch and costs a few slices per record.

The protocol is libbpf's (tools/lib/bpf/ringbuf.c), which the kernel defines
(kernel/bpf/ringbuf.c):

- page 0 (read-write): the consumer position, written by user space;
- page 1 (read-only): the producer position, written by the kernel;
- then the data area, mapped twice in a row so that a record that wraps
  around the end is contiguous;
- each record starts with an 8-byte header: a u32 length whose top bits say
  "still being written" (BUSY) and "discarded" (DISCARD), and a u32 page
  offset that only the kernel uses. Records are 8-byte aligned.

Positions are read and written as aligned 8-byte words and headers as aligned
4-byte words through memoryviews (one load or store each). The loads need no
barrier on x86-64, whose loads are not reordered with other loads and whose
stores are not reordered with other stores (the acquire/release pairs libbpf
uses compile to plain moves there); ``supported()`` says whether this host is
one, and the caller keeps bcc's consumer elsewhere.
"""

from __future__ import annotations

import mmap
import platform
import select
from collections.abc import Callable

__all__ = ["RingReader", "supported"]

_BUSY = 1 << 31
_DISCARD = 1 << 30
_HEADER = 8
_PAGE = mmap.PAGESIZE


def supported() -> bool:
    """Whether plain loads and stores give the ordering the protocol needs here."""
    return platform.machine() in ("x86_64", "AMD64")


class RingReader:
    """Consumer side of one BPF_MAP_TYPE_RINGBUF map."""

    def __init__(self, map_fd: int, size: int) -> None:
        if size <= 0 or size & (size - 1) or size % _PAGE:
            raise ValueError(f"ring buffer size {size} is not a power-of-2 multiple of a page")
        self._mask = size - 1
        self._consumer = mmap.mmap(
            map_fd, _PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0
        )
        self._producer = mmap.mmap(
            map_fd, _PAGE + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=_PAGE
        )
        self._cons_pos = memoryview(self._consumer).cast("Q")
        self._prod_pos = memoryview(self._producer)[:8].cast("Q")
        # Headers as u32 words: a record's header is word (_PAGE + offset) / 4.
        self._words = memoryview(self._producer).cast("I")
        self._fd = map_fd
        self._epoll: select.epoll | None = None

    def wait(self, timeout_s: float) -> None:
        """Until the kernel wakes the consumer, or the timeout."""
        if self._epoll is None:
            self._epoll = select.epoll()
            # Edge-triggered: woken when the kernel submits a record with a
            # wakeup (every wakeup_every-th record, and the forced ones).
            # Level-triggered, as libbpf registers it, epoll_wait returns at
            # once while any record is unread, so during a burst the drain
            # loop would spin on small batches instead of waiting for the
            # wakeup or the drain interval.
            self._epoll.register(self._fd, select.EPOLLIN | select.EPOLLET)
        self._epoll.poll(timeout_s)

    @property
    def position(self) -> int:
        """Bytes consumed since the ring was created (the consumer position)."""
        return int(self._cons_pos[0])

    def consume(self, handle: Callable[[bytes], object]) -> int:
        """Hand every committed record, in order, to ``handle``; returns how many.

        Stops at the first record still being written: later ones wait for it,
        as libbpf does.
        """
        cons_pos, prod_pos, words = self._cons_pos, self._prod_pos, self._words
        data, mask = self._producer, self._mask
        pos = cons_pos[0]
        count = 0
        while True:
            end = prod_pos[0]
            if pos >= end:
                return count
            while pos < end:
                at = _PAGE + (pos & mask)
                length = words[at >> 2]
                if length & _BUSY:
                    return count
                # Advance past the header and the record, 8-byte aligned.
                size = length & ~(_BUSY | _DISCARD)
                pos += (size + _HEADER + 7) & ~7
                if length & _DISCARD:
                    cons_pos[0] = pos
                    continue
                start = at + _HEADER
                record = data[start : start + size]
                # Released before the record is handled: it is a copy, and a
                # handler that raises must not make the next call re-read it.
                cons_pos[0] = pos
                handle(record)
                count += 1

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
        # The views hold the mappings' buffers: release them first.
        for view in (self._cons_pos, self._prod_pos, self._words):
            view.release()
        self._consumer.close()
        self._producer.close()
