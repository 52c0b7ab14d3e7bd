"""Change maps over block indices: digest diffs, byte extents → blocks, masks ↔ runs.

A mask is a numpy ``bool`` array with one entry per block. Inputs arrive validated by
:mod:`engine.native`; each function here is one GIL-free pass.
"""

import numpy as np

from libc.stdint cimport INT64_MAX, int64_t, uint8_t, uint64_t
from libc.string cimport memcmp, memcpy


def diff(const uint8_t[:, ::1] digests, const uint8_t[::1] zero,
         const uint8_t[:, ::1] parent_digests, const uint8_t[::1] parent_zero):
    cdef Py_ssize_t n = digests.shape[0]
    cdef Py_ssize_t m = parent_digests.shape[0]
    cdef Py_ssize_t common = n if n < m else m
    cdef Py_ssize_t i
    changed = np.ones(n, dtype=np.bool_)
    if common == 0:
        return changed
    cdef uint8_t[::1] c = changed.view(np.uint8)
    with nogil:
        for i in range(common):
            # Two zero blocks are equal whatever their digests say (a short final zero block
            # and a full one differ in digest, not in content).
            c[i] = (zero[i] != parent_zero[i]
                    or (not zero[i]
                        and memcmp(&digests[i, 0], &parent_digests[i, 0], 16) != 0))
    return changed


def extents_to_blocks(const int64_t[:, ::1] extents, uint64_t block_size, Py_ssize_t nblocks):
    """Mark every block an extent touches; extents are validated (in range, non-negative)."""
    mask = np.zeros(nblocks, dtype=np.bool_)
    if nblocks == 0 or extents.shape[0] == 0:
        return mask
    cdef uint8_t[::1] m = mask.view(np.uint8)
    cdef Py_ssize_t k
    cdef uint64_t first, last, b
    with nogil:
        for k in range(extents.shape[0]):
            if extents[k, 1] == 0:
                continue
            first = <uint64_t> extents[k, 0] // block_size
            last = (<uint64_t> extents[k, 0] + <uint64_t> extents[k, 1] - 1) // block_size
            for b in range(first, last + 1):
                m[b] = 1
    return mask


cdef inline uint64_t _word(const uint8_t *p) noexcept nogil:
    cdef uint64_t w
    memcpy(&w, p, 8)
    return w


cdef Py_ssize_t _runs_pass(const uint8_t *m, Py_ssize_t n, int64_t *out) noexcept nogil:
    """Count the runs of set bytes of m[0:n] (0/1 bytes), writing them to ``out`` unless it
    is NULL. Eight bytes at a time through long runs of zeros or ones, so a mostly-empty
    map of millions of blocks costs a fraction of a byte-by-byte pass. -1 when a byte is
    neither 0 nor 1 (every such byte is looked at one by one: a word of zeros or of ones
    holds none)."""
    cdef Py_ssize_t i = 0, start, k = 0
    cdef uint64_t ones = 0x0101010101010101ULL
    while i < n:
        while i + 8 <= n and _word(m + i) == 0:
            i += 8
        while i < n and not m[i]:
            i += 1
        if i >= n:
            break
        start = i
        while i + 8 <= n and _word(m + i) == ones:
            i += 8
        while i < n and m[i]:
            if m[i] != 1:
                return -1
            i += 1
        if out != NULL:
            out[2 * k] = start
            out[2 * k + 1] = i - start
        k += 1
    return k


def mask_to_runs(const uint8_t[::1] mask):
    """Runs of the set entries of a mask (bytes 0 or 1), or None when a byte is neither
    (a block map's kinds are checked this way, at no extra pass)."""
    cdef Py_ssize_t n = mask.shape[0]
    cdef Py_ssize_t nruns = 0
    if n:
        with nogil:
            nruns = _runs_pass(&mask[0], n, NULL)
    if nruns < 0:
        return None
    runs = np.empty((nruns, 2), dtype=np.int64)
    if nruns == 0:
        return runs
    cdef int64_t[:, ::1] r = runs
    with nogil:
        _runs_pass(&mask[0], n, &r[0, 0])
    return runs


def runs_to_mask(const int64_t[:, ::1] runs, Py_ssize_t nblocks):
    """Inverse of mask_to_runs; runs are validated (non-negative, inside nblocks)."""
    mask = np.zeros(nblocks, dtype=np.bool_)
    if nblocks == 0 or runs.shape[0] == 0:
        return mask
    cdef uint8_t[::1] m = mask.view(np.uint8)
    cdef Py_ssize_t k, b
    with nogil:
        for k in range(runs.shape[0]):
            for b in range(runs[k, 0], runs[k, 0] + runs[k, 1]):
                m[b] = 1
    return mask


cdef Py_ssize_t _first_run_ending_after(const int64_t[:, ::1] runs, int64_t b) noexcept nogil:
    """Index of the first run whose end is past block ``b`` (runs sorted, disjoint)."""
    cdef Py_ssize_t lo = 0, hi = runs.shape[0], mid
    while lo < hi:
        mid = (lo + hi) // 2
        if runs[mid, 0] + runs[mid, 1] <= b:
            lo = mid + 1
        else:
            hi = mid
    return lo


def window_delta(int64_t first, const uint8_t[:, ::1] digests, const uint8_t[::1] zero,
                 const int64_t[:, ::1] p_runs, const int64_t[::1] p_row,
                 const uint8_t[:, ::1] p_data, int64_t p_nblocks):
    """One window of a backup against its parent's sparse map, in one pass.

    The window holds blocks ``[first, first + n)`` with their digests and zero flags; the
    parent is given as its data runs, the row in ``p_data`` of each run's first block, and
    its data digests (``p_nblocks`` 0 and no runs for a full backup). Returns
    ``(runs, data_digests, store, n_changed)``: the window's data runs (absolute block
    numbers) and their digests, the window indices of the data blocks that differ from the
    parent (to be stored), and how many blocks inside the parent's extent changed. A block
    is unchanged when both are zero blocks or both are data blocks with equal digests.
    """
    cdef Py_ssize_t n = digests.shape[0]
    cdef Py_ssize_t nr = 0, nd = 0, ns = 0, nchanged = 0, i, k
    cdef int64_t b, run_start = 0, run_end = 0
    cdef bint in_run = False, p_is_data, changed
    runs = np.empty(((n + 1) // 2, 2), dtype=np.int64)
    data = np.empty((n, 16), dtype=np.uint8)
    store = np.empty(n, dtype=np.int64)
    if n == 0:
        return runs[:0], data[:0], store[:0], 0
    cdef int64_t[:, ::1] r = runs
    cdef uint8_t[:, ::1] d = data
    cdef int64_t[::1] s = store
    cdef Py_ssize_t nruns = p_runs.shape[0]
    cdef int64_t row, nrows = p_data.shape[0]
    if p_row.shape[0] != nruns:
        raise ValueError("parent rows and runs differ in length")
    with nogil:
        k = _first_run_ending_after(p_runs, first)
        for i in range(n):
            b = first + i
            while k < nruns and p_runs[k, 0] + p_runs[k, 1] <= b:
                k += 1
            p_is_data = k < nruns and p_runs[k, 0] <= b
            if zero[i]:
                changed = p_is_data or b >= p_nblocks
                in_run = False
            else:
                if in_run:
                    r[nr - 1, 1] += 1
                else:
                    r[nr, 0] = b
                    r[nr, 1] = 1
                    nr += 1
                    in_run = True
                memcpy(&d[nd, 0], &digests[i, 0], 16)
                nd += 1
                if p_is_data:
                    row = p_row[k] + b - p_runs[k, 0]
                    if row < 0 or row >= nrows:
                        nchanged = -1  # inconsistent parent arrays: refused below
                        break
                    changed = memcmp(&digests[i, 0], &p_data[row, 0], 16) != 0
                else:
                    changed = True
                if changed:
                    s[ns] = i
                    ns += 1
            if changed and b < p_nblocks:
                nchanged += 1
    if nchanged < 0:
        raise ValueError("parent runs, rows and digests are inconsistent")
    return runs[:nr], data[:nd], store[:ns], nchanged


cdef bint _normal(const int64_t[:, ::1] runs) noexcept nogil:
    """Sorted, no empty run, none overlapping or touching the next (``runs_normalize``'s
    output)."""
    cdef Py_ssize_t k
    for k in range(runs.shape[0]):
        if runs[k, 1] <= 0:
            return False
        if k and runs[k, 0] <= runs[k - 1, 0] + runs[k - 1, 1]:
            return False
    return True


def runs_are_normal(const int64_t[:, ::1] runs):
    cdef bint ok
    with nogil:
        ok = _normal(runs)
    return ok


def runs_merge_sorted(const int64_t[:, ::1] runs):
    """Normalized runs from runs sorted by their first block (counts >= 0): empty runs
    dropped, overlapping or touching ones merged. One pass."""
    cdef Py_ssize_t n = runs.shape[0], k, m = 0
    out = np.empty((n, 2), dtype=np.int64)
    cdef int64_t[:, ::1] o = out
    cdef int64_t start = 0, end = 0, e
    with nogil:
        for k in range(n):
            if runs[k, 1] <= 0:
                continue
            e = runs[k, 0] + runs[k, 1]
            if m and runs[k, 0] <= end:
                if e > end:
                    end = e
                continue
            if m:
                o[m - 1, 1] = end - start
            start, end = runs[k, 0], e
            o[m, 0] = start
            m += 1
        if m:
            o[m - 1, 1] = end - start
    return out[:m].copy() if m < n else out


def runs_to_indices(const int64_t[:, ::1] runs, int64_t total):
    """The block indices of ``runs`` (counts >= 0, summing to ``total``), in run order."""
    out = np.empty(total, dtype=np.int64)
    cdef int64_t[::1] o = out
    cdef Py_ssize_t k, j = 0
    cdef int64_t b, end
    with nogil:
        for k in range(runs.shape[0]):
            end = runs[k, 0] + runs[k, 1]
            b = runs[k, 0]
            while b < end and j < total:
                o[j] = b
                j += 1
                b += 1
    if j != total:
        raise ValueError("runs do not hold the number of blocks given")
    return out


cdef int64_t _INF = INT64_MAX

# Operations of runs_combine: which blocks (in a, in b) are kept.
OP_UNION = 0
OP_INTERSECTION = 1
OP_DIFFERENCE = 2


cdef inline bint _keep(int op, bint x, bint y) noexcept nogil:
    if op == 0:
        return x or y
    if op == 1:
        return x and y
    return x and not y


def runs_combine(const int64_t[:, ::1] a, const int64_t[:, ::1] b, int op):
    """Normalized runs of the blocks ``op`` keeps, from two normalized run lists: one merge
    of their boundaries, linear in the runs (``runs_are_normal`` holds for both)."""
    cdef Py_ssize_t na = a.shape[0], nb = b.shape[0]
    out = np.empty((na + nb + 1, 2), dtype=np.int64)
    cdef int64_t[:, ::1] o = out
    cdef Py_ssize_t ia = 0, ib = 0, k = 0
    cdef bint in_a = False, in_b = False, kept = False
    cdef int64_t pa, pb, p, start = 0
    with nogil:
        while True:
            if ia >= na:
                pa = _INF
            else:
                pa = a[ia, 0] + a[ia, 1] if in_a else a[ia, 0]
            if ib >= nb:
                pb = _INF
            else:
                pb = b[ib, 0] + b[ib, 1] if in_b else b[ib, 0]
            p = pa if pa < pb else pb
            if p == _INF:
                break
            if pa == p:
                if in_a:
                    ia += 1
                in_a = not in_a
            if pb == p:
                if in_b:
                    ib += 1
                in_b = not in_b
            if _keep(op, in_a, in_b):
                if not kept:
                    start, kept = p, True
            elif kept:
                o[k, 0] = start
                o[k, 1] = p - start
                k += 1
                kept = False
    return out[:k].copy()

