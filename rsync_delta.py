"""The sender's side of rsync's delta algorithm: weak checksums and block search.

The receiver sends the weak (rolling) and strong checksum of each block of
its copy of a file; the sender looks for those blocks at every offset of its
own version and sends the rest as literal data. checksum1 is rsync's weak
checksum, match() its block search (match.c's hash_search), choosing the
same blocks as the rsync 3.5.0 sender does, including the limits it puts on
the work a receiver's choice of block sums can cause.

The byte-at-a-time loops run in C when the optional library built from
contrib/rsync_delta.c (`python3 setup.py build_ext --inplace`) sits next to
this file; it is loaded with ctypes, which releases the GIL during calls.
Otherwise, or with GOKR_RSYNC_PURE=1 in the environment, the same search runs
in pure Python. IMPLEMENTATION says which ("c" or "python").
"""
import array
import ctypes
import importlib.machinery
import mmap
import os
import weakref
from itertools import accumulate

__all__ = ["CHUNK_SIZE", "MAX_CHAIN_LEN", "MAX_STREAK", "FLUSH", "IMPLEMENTATION", "checksum1",
           "block_checksum1s", "BlockTable", "MatchStats", "match", "SafeMap"]

CHUNK_SIZE = 32 * 1024
"""rsync's unit for reading files and sending literal data."""

MAX_CHAIN_LEN = 1024
"""The most blocks with the window's weak sum and length compared at one
offset before rolling on (match.c's MAX_CHAIN_LEN, CVE-2026-70453): without
it, files made of many identical blocks make the search quadratic."""

MAX_STREAK = 3
"""After more than this many offsets in a row where blocks with the window's
weak sum were compared in vain, the search moves on by a whole block instead
of a byte, as rsync's sender does: a receiver that sends thousands of blocks
with the weak sum of a run of zeros then costs about one strong sum per block
of such a run, not one per byte."""

FLUSH = 256 * 1024
"""match() hands out pending literal data once it reaches this many bytes."""

_SEGMENT = 1 << 16
_ABI_VERSION = 4
_END, _CANDIDATES, _FLUSH = 0, 1, 2
_JUMP = object()


def _byte_view(buf):
    """A flat unsigned-byte memoryview of buf (bytes-like or mmap), no copy;
    a SafeMap's pread window as it is."""
    if isinstance(buf, _ReadView):
        return buf
    mv = memoryview(buf)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv


_LANE = (1 << 64) - 1
_LANE2 = _LANE * _LANE
_MOST = 1 << 20
_PAIR_SUM = sum(1 << (16 * m) for m in range(4))
_EVEN_WEIGHTS = sum((6 - 2 * m) << (16 * m) for m in range(4))
_ODD_WEIGHTS = sum((7 - 2 * m) << (16 * m) for m in range(4))
_masks = {}


def _lane_masks(k):
    """Masks over k bytes: 0x80 in each byte, the even bytes in 16-bit lanes,
    the low 16 bits of each 64-bit lane."""
    m = _masks.get(k)
    if m is None:
        n = k + 7 >> 3
        m = (int.from_bytes(b"\x80" * k, "little"), int.from_bytes(b"\xff\x00" * 4 * n, "little"),
             int.from_bytes((b"\xff\xff" + bytes(6)) * n, "little"))
        if len(_masks) >= 16:
            _masks.clear()
        _masks[k] = m
    return m


def _weak_sums(data):
    """Exact (s1, s2) of rsync's weak checksum over bytes-like data.

    s1 is the sum of the bytes taken as signed, s2 the sum of each byte
    times its distance from the end: (len - j) * b[j].
    """
    k = len(data)
    if k < 256:
        signed = memoryview(data).cast("b")
        return sum(signed), sum(accumulate(signed))
    if k > _MOST:
        s1 = s2 = 0
        for pos in range(0, k, _MOST):
            part = data[pos:pos + _MOST]
            p1, p2 = _weak_sums(part)
            s2 += len(part) * s1 + p2
            s1 += p1
        return s1, s2
    # The bytes plus 128, u[j], in one integer, then in 16-bit lanes: the
    # even ones and the odd ones. Multiplying those by constants adds the
    # four lanes of each 64-bit lane into its top one, weighted or not
    # (no lane exceeds 16 bits): per 8 bytes i, S[i] = sum(u[8i+l]) and
    # W[i] = sum(l * u[8i+l]). With Z = 8S + W - (W shifted down a lane),
    # taken as 64-bit lanes z[i], sum(z) = 8 sum(S) + W[0] and
    # sum(i * z[i]) + W[0] = sum(j * u[j]); modulo (2**64 - 1)**2, 2**(64*h)
    # is congruent to 1 + h * (2**64 - 1), so Z is congruent to sum(z) +
    # sum(i * z[i]) * (2**64 - 1): both at once, Z folded in half
    # repeatedly to keep the final division small.
    flip, even, low = _lane_masks(k)
    x = int.from_bytes(data, "little") ^ flip
    e = x & even
    o = (x >> 8) & even
    lanes = (((e + o) * _PAIR_SUM) >> 48) & low
    inner = ((e * _EVEN_WEIGHTS + o * _ODD_WEIGHTS) >> 48) & low
    x = (lanes << 3) + inner - (inner >> 64)
    lanes = k + 7 >> 3
    while lanes > 16:
        half = lanes >> 1
        x = (x & ((1 << (64 * half)) - 1)) + (x >> (64 * half)) * (1 + half * _LANE)
        lanes = max(half, lanes - half + 3)
    weighted, total = divmod(x % _LANE2, _LANE)
    w0 = inner & 0xFFFF
    total = (total - w0) >> 3
    return total - 128 * k, k * total - weighted - w0 - 64 * k * (k + 1)


def _checksum1_py(buf):
    s1, s2 = _weak_sums(_byte_view(buf))
    return (s1 & 0xFFFF) | ((s2 & 0xFFFF) << 16)


def _block_checksum1s_py(buf, blength):
    if blength <= 0:
        raise ValueError("blength must be positive")
    view = _byte_view(buf)
    out = array.array("I")
    for pos in range(0, len(view), blength):
        s1, s2 = _weak_sums(view[pos:pos + blength])
        out.append((s1 & 0xFFFF) | ((s2 & 0xFFFF) << 16))
    return out


class MatchStats:
    """Counters of one match() run, left on its BlockTable as .stats.

    comparisons: strong sums compared with blocks, false_alarms: of which
    differed, matches: blocks sent, max_chain: most blocks compared at one
    offset (at most MAX_CHAIN_LEN), capped: offsets where MAX_CHAIN_LEN cut
    that short, pruned: blocks dropped for having the strong sum of the
    block compared just before them, jumps: times the search moved on by a
    block after a run of false alarms (MAX_STREAK).
    """

    __slots__ = ("comparisons", "false_alarms", "matches", "max_chain", "capped",
                 "pruned", "jumps")

    def __init__(self):
        self.comparisons = self.false_alarms = 0
        self.matches = self.max_chain = self.capped = 0
        self.pruned = self.jumps = 0

    def __repr__(self):
        fields = ", ".join(f"{name}={getattr(self, name)}" for name in self.__slots__)
        return f"MatchStats({fields})"


class BlockTable:
    """The receiver's block sums for one file (rsync's sum_struct).

    count = len(sum1s) blocks, each blength long except the last, which is
    remainder long when remainder != 0. sum1s may be read as signed 32-bit
    ints. sum2s are the strong sums, already truncated to s2length bytes.
    """

    def __init__(self, sum1s, sum2s, blength, remainder, s2length):
        if not isinstance(sum1s, array.array):
            sum1s = list(sum1s)
        try:
            self.sum1s = array.array("I", sum1s)
        except OverflowError:
            self.sum1s = array.array("I", (s & 0xFFFFFFFF for s in sum1s))
        self.count = len(self.sum1s)
        self.sum2s = [s if type(s) is bytes else bytes(s) for s in sum2s]
        self.blength = blength
        self.remainder = remainder
        self.s2length = s2length
        if len(self.sum2s) != self.count:
            raise ValueError(f"{self.count} weak sums but {len(self.sum2s)} strong sums")
        if self.count:
            if blength <= 0 or not 0 <= remainder < blength:
                raise ValueError(f"bad block length {blength} / remainder {remainder}")
            if s2length < 0 or any(len(s) != s2length for s in self.sum2s):
                raise ValueError(f"strong sums must be {s2length} bytes long")
        self.lastlen = remainder or blength
        self._sum2_packed = b"".join(self.sum2s)
        self.stats = MatchStats()

    def block_len(self, i):
        """The length of block i."""
        return self.lastlen if i == self.count - 1 else self.blength

    def __len__(self):
        return self.count


def _literal_only(length):
    pos = 0
    while length - pos > FLUSH:
        yield pos, FLUSH, -1
        pos += FLUSH
    yield pos, length - pos, -1


class _Chooser:
    """rsync's choice of block once one matched at an offset.

    It prefers the block after the previous match (want_i), which the
    receiver's run-length coding likes; with inplace (rsync's
    updating_basis_file, the receiver writing into its basis file) it first
    prefers the block at the same offset, and after matching a zero-sum block
    off the block grid moves the match onto the grid when the data there is
    the same, so the receiver can seek instead of write.
    """

    __slots__ = ("table", "view", "length", "strong", "inplace", "same_offset",
                 "checksum1", "want_i", "aligned_offset", "aligned_i")

    def __init__(self, table, view, length, strong, inplace, same_offset, checksum1):
        self.table = table
        self.view = view
        self.length = length
        self.strong = strong
        self.inplace = inplace
        self.same_offset = same_offset
        self.checksum1 = checksum1
        self.want_i = self.aligned_offset = self.aligned_i = 0

    def choose(self, offset, l, sum1, sum2, i):
        """Returns (offset, block) to send for block i matching at offset."""
        t = self.table
        count = t.count
        blength = t.blength
        realign_failed = False
        if self.inplace:
            if self.aligned_offset < offset:
                steps = -((self.aligned_offset - offset) // blength)
                self.aligned_offset += steps * blength
                self.aligned_i += steps
            aligned_offset, aligned_i = self.aligned_offset, self.aligned_i
            if ((offset == aligned_offset
                 or (sum1 == 0 and l == blength and aligned_offset + l <= self.length))
                    and aligned_i < count
                    and (i == aligned_i
                         or (t.sum1s[aligned_i] == sum1 and t.block_len(aligned_i) == l
                             and t.sum2s[aligned_i] == sum2))):
                i = aligned_i
                if offset != aligned_offset:
                    data = self.view[aligned_offset:aligned_offset + l]
                    if (self.checksum1(data) != t.sum1s[i]
                            or bytes(self.strong(data)[:t.s2length]) != t.sum2s[i]):
                        # rsync then tests want_i against the sums of the
                        # data on the grid, which can only accept a block
                        # that differs from the data at offset: keep block i.
                        realign_failed = True
                    else:
                        offset = aligned_offset
                if not realign_failed:
                    self.same_offset[i] = 1
                    self.want_i = i
        want = self.want_i
        if (not realign_failed and i != want and want < count
                and (not self.inplace or want * blength >= offset or self.same_offset[want])
                and t.sum1s[want] == sum1 and t.block_len(want) == l
                and t.sum2s[want] == sum2):
            i = want
        self.want_i = i + 1
        return offset, i


def _strong_prefix(strong, data, s2length):
    digest = bytes(strong(data)[:s2length])
    if len(digest) != s2length:
        raise ValueError(f"strong sum shorter than {s2length} bytes")
    return digest


def _chains(sum1s, chained):
    """Blocks 0..chained-1 linked by weak sum, highest block first (the order
    in which rsync tries them): {sum: first block}, next block per block."""
    heads = {}
    chain = [-1] * len(sum1s)
    get = heads.get
    for i in range(chained):
        s = sum1s[i]
        chain[i] = get(s, -1)
        heads[s] = i
    return heads, chain


def _match_py(table, buf, length, strong, inplace=False):
    stats = table.stats = MatchStats()
    if not length or not table.count:
        yield from _literal_only(length)
        return
    view = _byte_view(buf)
    count, bl, lastlen, s2length = table.count, table.blength, table.lastlen, table.s2length
    sum1s = table.sum1s.tolist()
    sum2s = table.sum2s
    # A last block shorter than the others can only match the final window.
    last = count - 1
    chained = count if lastlen == bl else last
    heads, chain = _chains(sum1s, chained)
    occupied = bytearray(1 << 16)
    for s in heads:
        occupied[((s & 0xFFFF) + (s >> 16)) & 0xFFFF] = 1
    same_offset = bytearray(count)
    chooser = _Chooser(table, view, length, strong, inplace, same_offset, _checksum1_py)
    streak = 0
    streak_next = -1

    def search(offset, k, sum1):
        """(block, sum1, sum2) of the first block matching the window, None
        when there is none, _JUMP when false alarms call for a jump."""
        nonlocal streak, streak_next
        sum2 = None
        compared = 0
        found = -1
        if k == bl:
            i = heads.get(sum1, -1)
            prev = before = -1
            while i >= 0:
                following = chain[i]
                if inplace and i * bl < offset and not same_offset[i]:
                    # The receiver has written over block i.
                    drop = True
                elif (before >= 0 and sum2s[i] == sum2s[before]
                      and not (inplace and same_offset[i] and not same_offset[before])):
                    # Block `before` differed from this window, and so does i.
                    stats.pruned += 1
                    drop = True
                else:
                    drop = False
                if drop:
                    if prev < 0:
                        heads[sum1] = following
                    else:
                        chain[prev] = following
                    i = following
                    continue
                if sum2 is None:
                    sum2 = _strong_prefix(strong, view[offset:offset + k], s2length)
                if compared == MAX_CHAIN_LEN:
                    stats.capped += 1
                    break
                compared += 1
                if sum2s[i] == sum2:
                    found = i
                    break
                before = prev = i
                i = following
        elif (chained == last and k == lastlen and sum1 == sum1s[last]
              and not (inplace and last * bl < offset and not same_offset[last])):
            sum2 = _strong_prefix(strong, view[offset:offset + k], s2length)
            compared = 1
            if sum2s[last] == sum2:
                found = last
        if not compared:
            return None
        stats.comparisons += compared
        if compared > stats.max_chain:
            stats.max_chain = compared
        if found >= 0:
            stats.false_alarms += compared - 1
            streak = 0
            streak_next = -1
            return found, sum1, sum2
        stats.false_alarms += compared
        streak = streak + 1 if offset == streak_next else 1
        if streak > MAX_STREAK:
            streak_next = offset + bl
            return _JUMP
        streak_next = offset + 1
        return None

    end = length + 1 - lastlen
    last_match = offset = 0
    k = min(bl, length)
    s1, s2 = _weak_sums(view[:k])
    segment = 1
    while offset < end:
        while offset - last_match >= FLUSH:
            yield last_match, FLUSH, -1
            last_match += FLUSH
        found = None
        stop = min(end, last_match + FLUSH, offset + segment, length - bl)
        if offset < stop:
            # Full windows with a byte to roll in: one list slice per run.
            segment = min(2 * segment, _SEGMENT)
            outgoing = view[offset:stop].cast("b").tolist()
            incoming = view[offset + bl:stop + bl].cast("b").tolist()
            for o, n in zip(outgoing, incoming):
                if occupied[(s1 + s2) & 0xFFFF]:
                    sum1 = (s1 & 0xFFFF) | ((s2 & 0xFFFF) << 16)
                    if sum1 in heads:
                        found = search(offset, bl, sum1)
                        if found:
                            break
                s1 += n - o
                s2 += s1 - bl * o
                offset += 1
        else:
            found = search(offset, k, (s1 & 0xFFFF) | ((s2 & 0xFFFF) << 16))
            if not found:
                o = (view[offset] ^ 0x80) - 0x80
                if offset + k < length:
                    s1 += ((view[offset + k] ^ 0x80) - 0x80) - o
                    s2 += s1 - k * o
                else:
                    s1 -= o
                    s2 -= k * o
                    k -= 1
                offset += 1
        if found is _JUMP:
            stats.jumps += 1
            offset += bl
            k = max(0, min(bl, length - offset))
            s1, s2 = _weak_sums(view[offset:offset + k])
            segment = 1
        elif found:
            i, sum1, sum2 = found
            offset, i = chooser.choose(offset, k, sum1, sum2, i)
            stats.matches += 1
            yield last_match, offset - last_match, i
            offset = last_match = offset + table.block_len(i)
            k = max(0, min(bl, length - offset))
            s1, s2 = _weak_sums(view[offset:offset + k])
            segment = 1
    yield last_match, length - last_match, -1


# --- the C library -----------------------------------------------------------

class _Search(ctypes.Structure):
    """The public head of contrib/rsync_delta.c's struct rd_search."""

    _fields_ = [
        ("offset", ctypes.c_int64),
        ("last_match", ctypes.c_int64),
        ("sum", ctypes.c_uint32),
        ("window", ctypes.c_int32),
        ("max_chain", ctypes.c_int32),
        ("streak", ctypes.c_int32),
        ("comparisons", ctypes.c_uint64),
        ("false_alarms", ctypes.c_uint64),
        ("capped", ctypes.c_uint64),
        ("pruned", ctypes.c_uint64),
        ("jumps", ctypes.c_uint64),
    ]


class _PyBuffer(ctypes.Structure):
    """CPython's Py_buffer."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


class _Pinned:
    """A buffer export of obj: its address and size, valid until release().

    ctypes' from_buffer refuses read-only buffers (bytes, mmap ACCESS_READ),
    so this asks CPython directly. While pinned, a bytearray cannot be
    resized nor an mmap closed.
    """

    __slots__ = ("_view", "address", "size")

    def __init__(self, obj):
        view = _PyBuffer()
        _PyObject_GetBuffer(ctypes.py_object(obj), ctypes.byref(view), 0)
        self._view = view
        self.address = view.buf
        self.size = view.len

    def release(self):
        if self._view is not None:
            _PyBuffer_Release(ctypes.byref(self._view))
            self._view = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _find_library():
    """The C library built next to this file, loaded and declared, or None."""
    if not hasattr(ctypes, "pythonapi") or array.array("I").itemsize != 4:
        return None
    here = os.path.dirname(os.path.abspath(__file__))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(here, "_rsync_delta" + suffix)
        if not os.path.isfile(path):
            continue
        try:
            lib = ctypes.CDLL(path)
            if (lib.rd_abi_version() != _ABI_VERSION
                    or _public_size(lib) != ctypes.sizeof(_Search)):
                continue
        except (OSError, AttributeError):
            continue
        _declare(lib)
        return lib
    return None


def _public_size(lib):
    lib.rd_public_size.restype = ctypes.c_size_t
    lib.rd_public_size.argtypes = []
    return lib.rd_public_size()


def _declare(lib):
    vp, i32, i64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64
    search_p = ctypes.POINTER(_Search)
    for name, restype, argtypes in [
        ("rd_checksum1", ctypes.c_uint32, [vp, i64]),
        ("rd_block_checksum1s", None, [vp, i64, i32, vp]),
        ("rd_simd", ctypes.c_int, [ctypes.c_int]),
        ("rd_new", search_p, [vp, i64, vp, vp, i32, i32, i32, i32, ctypes.c_int, vp, i32, i32,
                              i64, ctypes.c_uint32]),
        ("rd_free", None, [search_p]),
        ("rd_scan", ctypes.c_int, [search_p, ctypes.c_int]),
        ("rd_first_match", i32, [search_p, ctypes.c_char_p]),
        ("rd_matched", None, [search_p, i64, i32]),
        ("rd_safemap_install", ctypes.c_int, []),
        ("rd_safemap_register", i32, [vp, i64]),
        ("rd_safemap_truncated", ctypes.c_int, [i32]),
        ("rd_safemap_release", ctypes.c_int, [i32]),
    ]:
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


if hasattr(ctypes, "pythonapi"):
    _PyObject_GetBuffer = ctypes.pythonapi.PyObject_GetBuffer
    _PyObject_GetBuffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
    _PyObject_GetBuffer.restype = ctypes.c_int
    _PyBuffer_Release = ctypes.pythonapi.PyBuffer_Release
    _PyBuffer_Release.argtypes = [ctypes.POINTER(_PyBuffer)]
    _PyBuffer_Release.restype = None

_lib = None if os.environ.get("GOKR_RSYNC_PURE", "") not in ("", "0") else _find_library()


def _checksum1_c(buf):
    if type(buf) is bytes:
        return _lib.rd_checksum1(buf, len(buf))
    with _Pinned(buf) as pin:
        return _lib.rd_checksum1(pin.address, pin.size)


def _block_checksum1s_c(buf, blength):
    if blength <= 0:
        raise ValueError("blength must be positive")
    with _Pinned(buf) as pin:
        out = array.array("I", bytes(4 * (-(-pin.size // blength))))
        if pin.size:
            _lib.rd_block_checksum1s(pin.address, pin.size, blength, out.buffer_info()[0])
    return out


def _match_c(table, buf, length, strong, inplace=False):
    stats = table.stats = MatchStats()
    if not length or not table.count:
        yield from _literal_only(length)
        return
    count, s2length = table.count, table.s2length
    sum1s, sum2_packed = table.sum1s, table._sum2_packed
    same_offset = bytearray(count)
    same_offset_c = (ctypes.c_ubyte * count).from_buffer(same_offset)
    with _Pinned(buf) as pin:
        view = _byte_view(buf)
        st = _lib.rd_new(pin.address, length, sum1s.buffer_info()[0], sum2_packed, count,
                         table.blength, table.lastlen, s2length, bool(inplace),
                         same_offset_c, MAX_CHAIN_LEN, MAX_STREAK, FLUSH,
                         int.from_bytes(os.urandom(4), "little"))
        if not st:
            raise MemoryError("rsync_delta: no memory for the block search")
        s = st.contents
        scan, first_match, matched = _lib.rd_scan, _lib.rd_first_match, _lib.rd_matched
        chooser = _Chooser(table, view, length, strong, inplace, same_offset, _checksum1_c)
        try:
            last_match = 0
            roll = 0
            while True:
                event = scan(st, roll)
                if event == _END:
                    break
                offset = s.offset
                if event == _FLUSH:
                    while offset - last_match >= FLUSH:
                        yield last_match, FLUSH, -1
                        last_match += FLUSH
                    s.last_match = last_match
                    roll = 0
                    continue
                k = s.window
                sum2 = _strong_prefix(strong, view[offset:offset + k], s2length)
                i = first_match(st, sum2)
                if i < 0:
                    roll = 1
                    continue
                offset, i = chooser.choose(offset, k, s.sum, sum2, i)
                stats.matches += 1
                yield last_match, offset - last_match, i
                matched(st, offset, i)
                last_match = s.last_match
                roll = 0
            yield last_match, length - last_match, -1
        finally:
            stats.comparisons = s.comparisons
            stats.false_alarms = s.false_alarms
            stats.max_chain = s.max_chain
            stats.capped = s.capped
            stats.pruned = s.pruned
            stats.jumps = s.jumps
            del s
            _lib.rd_free(st)
            del same_offset_c, view


# --- mappings that survive their file shrinking ------------------------------------

class _ReadView:
    """The first size bytes of fd, sliced like a flat memoryview but read
    with pread a window at a time (zeros past the file's end), so memory
    stays bounded whatever the file's size.

    A slice inside the window is a view of it; any other read replaces the
    window. Reads that move forward from the window double the next read
    (up to MAX_READ) and keep up to KEEP bytes behind them, so a search
    that sends literals from a little behind where it looks stays in one
    window; a jump elsewhere reads MIN_READ. short turns True once a read
    came up short or failed (what it missed reads as zeros, as a lost page
    of a mapping does).
    """

    MIN_READ = 1 << 16
    MAX_READ = 8 << 20
    KEEP = 1 << 20

    def __init__(self, fd, size):
        self.fd = fd
        self.nbytes = size
        self.short = False
        self._start = 0
        self._view = memoryview(b"")
        self._ahead = self.MIN_READ

    def __len__(self):
        return self.nbytes

    def __getitem__(self, key):
        if isinstance(key, slice):
            a, b, step = key.indices(self.nbytes)
            if step != 1:
                raise ValueError("only contiguous slices")
            b = max(a, b)
        else:
            a = key + self.nbytes if key < 0 else key
            if not 0 <= a < self.nbytes:
                raise IndexError("index out of range")
            b = a + 1
        off = a - self._start
        if off < 0 or b - self._start > len(self._view):
            self._fill(a, b)
            off = a - self._start
        if isinstance(key, slice):
            return self._view[off:off + b - a]
        return self._view[off]

    def _fill(self, a, b):
        start, end = self._start, self._start + len(self._view)
        if start <= a <= end and end:
            self._ahead = min(2 * self._ahead, self.MAX_READ)
            lo = max(start, a - self.KEEP)
        else:
            self._ahead = self.MIN_READ
            lo = a
        hi = min(self.nbytes, max(b, a + self._ahead))
        buf = bytearray(hi - lo)
        view = memoryview(buf)
        got = 0
        while lo + got < hi:
            try:
                n = os.preadv(self.fd, [view[got:]], lo + got)
            except OSError:
                n = 0
            if not n:
                self.short = True
                break
            got += n
        self._start, self._view = lo, view

    def release(self):
        self._view = memoryview(b"")


class SafeMap:
    """Read-only access to `size` bytes of fd whose reads, if the file
    shrinks underneath, see zeros instead of raising SIGBUS.

    buf is what to read. With the C library it is an mmap whose range the
    library's SIGBUS handler knows: reading a page the file has lost maps a
    page of zeros there instead of killing the process. Otherwise (no
    library, its table of ranges full, another SIGBUS handler installed
    over it, or the file already shorter than size) buf reads the file with
    pread a window at a time (it slices like a memoryview, but is not a
    buffer: match() then runs the Python search). mapped says which it is;
    view() gives a flat byte view of either.

    truncated turns True once zeros may have stood in for lost data: a
    page was replaced, the file is found shorter than size (bytes cut from
    the last page it keeps read as zeros without any fault), or a read came
    up short. The caller then reports the file as changed while being read.
    close() unmaps; it raises BufferError while views of buf are alive.
    """

    def __init__(self, fd, size):
        if size < 0:
            raise ValueError(f"negative size {size}")
        self.size = size
        self.mapped = False
        self._truncated = False
        self._slot = -1
        self._release = None
        if size and _lib is not None and _lib.rd_safemap_install() == 0:
            try:
                mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
            except (ValueError, OSError):
                mm = None
            if mm is not None:
                with _Pinned(mm) as pin:
                    slot = _lib.rd_safemap_register(pin.address, size)
                if slot >= 0:
                    # The slot is freed once the mapping is gone, however it goes.
                    self._release = weakref.finalize(mm, _lib.rd_safemap_release, slot)
                    self._release.atexit = False
                    self.buf, self._slot, self.mapped = mm, slot, True
                    return
                mm.close()
        self.buf = _ReadView(fd, size)

    def view(self):
        """buf as flat bytes, sliced without copying; release() it before
        close()."""
        return memoryview(self.buf) if self.mapped else self.buf

    @property
    def truncated(self):
        if self.mapped and not self._truncated:
            self._truncated = bool(_lib.rd_safemap_truncated(self._slot)
                                   or self.buf.size() < self.size)
        elif not self.mapped and self.buf is not None and self.buf.short:
            self._truncated = True
        return self._truncated

    def close(self):
        if self.mapped:
            shrunk = self.buf.size() < self.size
            self.buf.close()
            if self._release() or shrunk:
                self._truncated = True
            self._slot = -1
            self.mapped = False
        elif self.buf is not None:
            self._truncated = self.buf.short
            self.buf.release()
        self.buf = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --- the public functions -------------------------------------------------------

if _lib is not None:
    IMPLEMENTATION = "c"
    _checksum1, _block_checksum1s, _match = _checksum1_c, _block_checksum1s_c, _match_c
else:
    IMPLEMENTATION = "python"
    _checksum1, _block_checksum1s, _match = _checksum1_py, _block_checksum1s_py, _match_py


def checksum1(buf):
    """rsync's weak checksum of buf (get_checksum1).

    Over the bytes as signed chars: s1 sums them, s2 sums the running s1;
    the result is (s1 & 0xffff) | (s2 << 16), modulo 2^32.
    """
    return _checksum1(buf)


def block_checksum1s(buf, blength):
    """checksum1 of each blength-long block of buf (the last may be shorter),
    as an array('I')."""
    return _block_checksum1s(buf, blength)


def match(table, buf, length, strong, inplace=False):
    """rsync's block search (match.c's hash_search) over buf[0:length).

    Yields (lit_off, lit_len, idx): the literal buf[lit_off:lit_off+lit_len]
    (possibly empty), then, when idx >= 0, a copy of the receiver's block
    idx. idx == -1 is literal data alone: a flush once FLUSH bytes are
    pending, and always the last item. The literals and blocks cover
    [0, length) in order. strong(memoryview) returns the strong sum of a
    block (its first table.s2length bytes are compared). With inplace the
    receiver updates its basis file in place (--inplace), and only blocks it
    has not yet overwritten are used. Counters end up in table.stats.

    The receiver chooses the block sums. Whatever they are, strong is called
    at most once per offset, at most MAX_CHAIN_LEN blocks are compared there,
    a block whose strong sum equals that of the block compared just before
    it is dropped, and a run of offsets with false alarms moves on a block
    at a time (MAX_STREAK): a file whose every window has a weak sum in the
    table costs about one strong sum per block.
    """
    if length < 0 or length > _byte_view(buf).nbytes:
        raise ValueError(f"length {length} outside the buffer")
    if isinstance(buf, _ReadView):
        return _match_py(table, buf, length, strong, inplace)
    return _match(table, buf, length, strong, inplace)
