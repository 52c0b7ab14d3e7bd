"""Argument and I/O errors: a specific exception whose message names the bad parameter."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from native_helpers import MIB, write_pattern_file

from engine import native

SIZE = 10 * 4096 + 7  # 11 blocks of 4 KiB, the last one short
NBLOCKS = 11


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("errors") / "f.img"
    write_pattern_file(path, SIZE, seed=3)
    return path


def consume_reader(*args, **kwargs):
    """Build a BlockReader and read it to the end (errors may come from either step)."""
    with native.BlockReader(*args, **kwargs) as r:
        for _ in r:
            pass


# Callables that take (block_size) and everything else fixed and valid.
def _block_size_users(path):
    return {
        "hash_blocks": lambda bs: native.hash_blocks(b"\x01" * 8192, bs, 0),
        "zero_digest": lambda bs: native.zero_digest(bs, 0),
        "scan_file": lambda bs: native.scan_file(path, bs, 0),
        "BlockReader": lambda bs: consume_reader(path, bs, 0),
        "data_blocks": lambda bs: native.data_blocks(path, bs),
        "extents_to_blocks": lambda bs: native.extents_to_blocks([], bs, 4),
    }


FUNCS = list(_block_size_users("x"))
BAD_INT_BLOCK_SIZES = [0, -1, -4096, 1, 512, 2048, 3000, 4095, 4097, 6144, 12288, 32 * MIB, 2**40]
BAD_OTHER_BLOCK_SIZES = [4096.0, 65536.5, True, False, "4096", None, b"4096"]


@pytest.mark.parametrize("func", FUNCS)
@pytest.mark.parametrize("bs", BAD_INT_BLOCK_SIZES)
def test_bad_int_block_size(small_file, func, bs):
    with pytest.raises(ValueError, match="block_size"):
        _block_size_users(small_file)[func](bs)


@pytest.mark.parametrize("func", FUNCS)
@pytest.mark.parametrize("bs", BAD_OTHER_BLOCK_SIZES, ids=repr)
def test_bad_type_block_size(small_file, func, bs):
    with pytest.raises((ValueError, TypeError), match="block_size"):
        _block_size_users(small_file)[func](bs)


@pytest.mark.parametrize("func", FUNCS)
@pytest.mark.parametrize("bs", [4096, 8192, 16 * MIB])
def test_good_block_sizes_accepted(small_file, func, bs):
    _block_size_users(small_file)[func](bs)


def _seed_users(path):
    return {
        "hash_blocks": lambda s: native.hash_blocks(b"\x01" * 8192, 4096, s),
        "zero_digest": lambda s: native.zero_digest(4096, s),
        "scan_file": lambda s: native.scan_file(path, 4096, s),
        "BlockReader": lambda s: consume_reader(path, 4096, s),
    }


SEED_FUNCS = list(_seed_users("x"))


@pytest.mark.parametrize("func", SEED_FUNCS)
@pytest.mark.parametrize("seed", [-1, -(2**63), 2**64, 2**64 + 1, 2**100])
def test_bad_int_seed(small_file, func, seed):
    with pytest.raises(ValueError, match="seed"):
        _seed_users(small_file)[func](seed)


@pytest.mark.parametrize("func", SEED_FUNCS)
@pytest.mark.parametrize("seed", [1.0, 0.5, "1", None], ids=repr)
def test_bad_type_seed(small_file, func, seed):
    with pytest.raises((ValueError, TypeError), match="seed"):
        _seed_users(small_file)[func](seed)


# --- ranges --------------------------------------------------------------------------------

RANGE_CASES = [
    ({"start_block": -1}, "start_block"),
    ({"start_block": -(2**63)}, "start_block"),
    ({"count": -1}, "count"),
    ({"start_block": NBLOCKS + 1}, "start_block"),
    ({"start_block": 2**62}, "start_block"),
    ({"start_block": 0, "count": NBLOCKS + 1}, "start_block|count"),
    ({"start_block": NBLOCKS, "count": 1}, "start_block|count"),
    ({"start_block": 5, "count": NBLOCKS - 4}, "start_block|count"),
    ({"start_block": 1, "count": 2**63 - 1}, "start_block|count"),  # would overflow int64
]


@pytest.mark.parametrize(("kwargs", "name"), RANGE_CASES, ids=[str(c[0]) for c in RANGE_CASES])
def test_scan_file_bad_range(small_file, kwargs, name):
    with pytest.raises(ValueError, match=name):
        native.scan_file(small_file, 4096, 0, **kwargs)


@pytest.mark.parametrize(("kwargs", "name"), RANGE_CASES, ids=[str(c[0]) for c in RANGE_CASES])
def test_block_reader_bad_range(small_file, kwargs, name):
    with pytest.raises(ValueError, match=name):
        consume_reader(small_file, 4096, 0, **kwargs)


def test_full_range_is_fine(small_file):
    d, _ = native.scan_file(small_file, 4096, 0, start_block=0, count=NBLOCKS)
    assert d.shape == (NBLOCKS, 16)
    d, _ = native.scan_file(small_file, 4096, 0, start_block=NBLOCKS, count=0)
    assert d.shape == (0, 16)


# --- paths and fds -------------------------------------------------------------------------

PATH_FUNCS = {
    "scan_file": lambda p: native.scan_file(p, 4096, 0),
    "BlockReader": lambda p: consume_reader(p, 4096, 0),
    "volume_size": lambda p: native.volume_size(p),
    "data_blocks": lambda p: native.data_blocks(p, 4096),
}


@pytest.mark.parametrize("func", list(PATH_FUNCS))
def test_missing_path(tmp_path, func):
    missing = tmp_path / "no" / "such-file"
    for p in (missing, str(missing), os.fsencode(str(missing))):
        with pytest.raises(FileNotFoundError):
            PATH_FUNCS[func](p)


@pytest.mark.parametrize("func", list(PATH_FUNCS))
def test_directory(tmp_path, func):
    with pytest.raises((IsADirectoryError, ValueError)):
        PATH_FUNCS[func](tmp_path)


@pytest.mark.parametrize("func", ["scan_file", "BlockReader", "data_blocks"])
def test_write_only_fd(small_file, open_fds, func):
    fd = open_fds(small_file, os.O_WRONLY)
    with pytest.raises(OSError):
        PATH_FUNCS[func](fd)
    os.fstat(fd)  # not closed by the failed call


@pytest.mark.parametrize("func", list(PATH_FUNCS))
def test_closed_fd(small_file, func):
    fd = os.open(small_file, os.O_RDONLY)
    os.close(fd)
    with pytest.raises(OSError):
        PATH_FUNCS[func](fd)


def test_unreadable_file(tmp_path):
    """A file the caller may not read is a PermissionError naming it. Root reads anything,
    so as root the check runs in a child that first drops to an unprivileged user."""
    path = tmp_path / "secret"
    path.write_bytes(b"x" * 8192)
    path.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(PermissionError):
            native.scan_file(path, 4096, 0)
        return
    tmp_path.chmod(0o755)
    code = (
        "import os, sys\n"
        "from engine import native\n"  # import while the interpreter's files are readable
        "os.setgid(65534); os.setuid(65534)\n"
        "try:\n"
        f"    native.scan_file({str(path)!r}, 4096, 0)\n"
        "except PermissionError as e:\n"
        f"    sys.exit(0 if {str(path)!r} in str(e) else 3)\n"
        "sys.exit(2)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("func", ["scan_file", "volume_size"])
@pytest.mark.parametrize("obj", [1.5, [1], object()], ids=lambda o: type(o).__name__)
def test_path_of_wrong_type(func, obj):
    with pytest.raises(TypeError):
        PATH_FUNCS[func](obj)


def test_direct_with_wrong_flags_fd_is_still_an_error(small_file, open_fds):
    fd = open_fds(small_file, os.O_WRONLY)
    with pytest.raises(OSError):
        native.scan_file(fd, 4096, 0, direct=True)


def test_fifo_or_char_device_is_rejected(tmp_path):
    # /dev/null is neither a regular file nor a block device.
    with pytest.raises((ValueError, OSError)):
        native.volume_size("/dev/null")


# --- non-buffers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "obj", [[1, 2, 3], "abc", 12, None, (b"a",)], ids=lambda o: type(o).__name__
)
def test_hash_blocks_non_buffer(obj):
    with pytest.raises(TypeError):
        native.hash_blocks(obj, 4096, 0)


def test_hash_blocks_non_contiguous():
    with pytest.raises(ValueError):
        native.hash_blocks(memoryview(bytes(16384))[::2], 4096, 0)
    with pytest.raises(ValueError):
        native.hash_blocks(np.zeros((8, 4096), np.uint8)[:, ::4], 4096, 0)


# --- diff ----------------------------------------------------------------------------------

D3 = np.zeros((3, 16), np.uint8)
Z3 = np.zeros(3, bool)
DIFF_CASES = {
    "digests_width_15": ((np.zeros((3, 15), np.uint8), Z3, D3, Z3), "digests"),
    "digests_1d": ((np.zeros(48, np.uint8), Z3, D3, Z3), "digests"),
    "digests_3d": ((np.zeros((3, 16, 1), np.uint8), Z3, D3, Z3), "digests"),
    "digests_int64": ((np.zeros((3, 16), np.int64), Z3, D3, Z3), "digests"),
    "digests_float": ((np.zeros((3, 16), np.float64), Z3, D3, Z3), "digests"),
    "zero_too_short": ((D3, np.zeros(2, bool), D3, Z3), "zero"),
    "zero_too_long": ((D3, np.zeros(4, bool), D3, Z3), "zero"),
    "zero_2d": ((D3, np.zeros((3, 1), bool), D3, Z3), "zero"),
    "parent_digests_width_17": ((D3, Z3, np.zeros((3, 17), np.uint8), Z3), "parent_digests"),
    "parent_digests_1d": ((D3, Z3, np.zeros(3, np.uint8), Z3), "parent_digests"),
    "parent_zero_too_short": ((D3, Z3, D3, np.zeros(2, bool)), "parent_zero"),
    "parent_rows_vs_parent_zero": ((D3, Z3, np.zeros((2, 16), np.uint8), Z3), "parent_"),
}


@pytest.mark.parametrize("case", list(DIFF_CASES))
def test_diff_wrong_shapes(case):
    args, name = DIFF_CASES[case]
    with pytest.raises(ValueError, match=name):
        native.diff(*args)


# --- extents, runs, masks ------------------------------------------------------------------

EXTENT_CASES = {
    "negative_offset": (([(-1, 10)], 4096, 4), "extent"),
    "negative_length": (([(0, -1)], 4096, 4), "extent"),
    "past_end": (([(4 * 4096 - 1, 2)], 4096, 4), "extent"),
    "offset_past_end": (([(5 * 4096, 1)], 4096, 4), "extent"),
    "huge_length": (([(4096, 2**63 - 1)], 4096, 4), "extent"),  # offset+length overflows
    "past_end_array": ((np.array([[0, 5 * 4096]], np.int64), 4096, 4), "extent"),
    "negative_array": ((np.array([[4096, 1], [-4096, 1]], np.int64), 4096, 4), "extent"),
    "array_wrong_width": ((np.zeros((2, 3), np.int64), 4096, 4), "extent"),
    "negative_nblocks": (([], 4096, -1), "nblocks"),
}


@pytest.mark.parametrize("case", list(EXTENT_CASES))
def test_extents_to_blocks_bad_input(case):
    args, name = EXTENT_CASES[case]
    with pytest.raises(ValueError, match=name):
        native.extents_to_blocks(*args)


RUN_CASES = {
    "past_end": (np.array([[3, 2]], np.int64), 4),
    "start_past_end": (np.array([[5, 1]], np.int64), 4),
    "negative_first": (np.array([[-1, 2]], np.int64), 4),
    "negative_count": (np.array([[1, -1]], np.int64), 4),
    "overflow": (np.array([[1, 2**63 - 1]], np.int64), 4),
    "negative_nblocks": (np.empty((0, 2), np.int64), -1),
}


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_runs_to_mask_out_of_range(case):
    runs, nblocks = RUN_CASES[case]
    with pytest.raises(ValueError, match="runs|nblocks"):
        native.runs_to_mask(runs, nblocks)


@pytest.mark.parametrize(
    "op", ["mask_union", "mask_intersection", "mask_difference"], ids=lambda s: s
)
def test_mask_ops_length_mismatch(op):
    with pytest.raises(ValueError):
        getattr(native, op)(np.zeros(3, bool), np.zeros(4, bool))
    with pytest.raises(ValueError):
        getattr(native, op)(np.zeros(0, bool), np.zeros(1, bool))


# Values near 2**63 can overflow offset + length inside the kernels. Each case runs in a child
# interpreter so that a crash (e.g. SIGSEGV from an out-of-bounds write) fails one test instead
# of killing the whole run.
OVERFLOW_CASES = {
    "extent_end_at_2_63": ("native.extents_to_blocks([(2**63 - 4096, 4096)], 4096, 4)", "extent"),
    "extent_offset_2_63_minus_1": (
        "native.extents_to_blocks([(2**63 - 1, 10)], 4096, 4)",
        "extent",
    ),
    "extent_array_end_at_2_63": (
        "native.extents_to_blocks(np.array([[2**63 - 4096, 4096]], np.int64), 4096, 4)",
        "extent",
    ),
    "extent_uint64_array": (
        "native.extents_to_blocks(np.array([[2**64 - 4096, 4096]], np.uint64), 4096, 4)",
        "extent",
    ),
    "extent_both_2_62": ("native.extents_to_blocks([(2**62, 2**62)], 4096, 4)", "extent"),
    "runs_both_2_62": ("native.runs_to_mask(np.array([[2**62, 2**62]]), 4)", "runs"),
    "runs_first_2_63_minus_1": ("native.runs_to_mask(np.array([[2**63 - 1, 1]]), 4)", "runs"),
}

CHILD = """
import re, sys
import numpy as np
from engine import native
try:
    {expr}
except ValueError as e:
    print("ValueError:", e)
    sys.exit(0 if re.search({name!r}, str(e)) else 3)
except BaseException as e:
    print(type(e).__name__, e)
    sys.exit(2)
print("no exception raised")
sys.exit(1)
"""


@pytest.mark.parametrize("case", list(OVERFLOW_CASES))
def test_overflowing_extents_and_runs_never_crash(case):
    expr, name = OVERFLOW_CASES[case]
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD.format(expr=expr, name=name))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    what = {
        1: "no exception",
        2: "a different exception",
        3: f"a ValueError not naming {name!r}",
    }.get(proc.returncode, f"a crash (exit status {proc.returncode})")
    assert proc.returncode == 0, (
        f"{expr} gave {what}; expected ValueError naming {name!r}\n"
        f"stdout: {proc.stdout.strip()}\nstderr: {proc.stderr.strip()[-2000:]}"
    )


def test_messages_name_parameters_not_internal_names():
    # The message should be meaningful to a caller: mention the parameter as spelled in the API.
    with pytest.raises(ValueError) as info:
        native.hash_blocks(b"", 3000, 0)
    assert re.search(r"\bblock_size\b", str(info.value))
    with pytest.raises(ValueError) as info:
        native.zero_digest(4096, -5)
    assert re.search(r"\bseed\b", str(info.value))
