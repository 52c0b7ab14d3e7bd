"""engine.datapath.buffers: a restore's scratch buffers are their own mappings, so they go
back to the OS when dropped (malloc kept them resident after a restore)."""

from __future__ import annotations

import gc
import mmap

import pytest

from engine.datapath.buffers import mapped_buffer


def _mapped(address: int) -> bool:
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= address < hi:
                return True
    return False


def test_a_buffer_is_page_aligned_zeroed_writable_and_exactly_as_long():
    buf = mapped_buffer(5 << 20)
    assert len(buf) == 5 << 20
    assert buf.ctypes.data % mmap.PAGESIZE == 0  # O_DIRECT writes take it as it is
    assert not buf.any()
    buf[:3] = (1, 2, 3)
    buf[-1] = 9
    assert bytes(memoryview(buf)[:3]) == b"\x01\x02\x03" and buf[-1] == 9


def test_a_dropped_buffer_is_unmapped_even_while_a_slice_lived_longer():
    buf = mapped_buffer(16 << 20)
    address = buf.ctypes.data
    view = memoryview(buf)[4096:8192]
    del buf
    gc.collect()
    assert _mapped(address)  # the slice still holds the mapping
    del view
    gc.collect()
    assert not _mapped(address)


def test_tiny_and_empty_buffers_still_map_a_page():
    assert len(mapped_buffer(0)) == 0
    assert len(mapped_buffer(1)) == 1


def test_a_negative_size_is_refused_with_its_value():
    with pytest.raises(ValueError, match="a buffer cannot have -1 bytes"):
        mapped_buffer(-1)
