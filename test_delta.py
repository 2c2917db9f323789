"""rsync_delta: rsync's weak checksum and block search, in C and in pure Python.

Both implementations must agree token for token; the tokens must rebuild the
sender's file from the receiver's (also when the receiver updates its file in
place); the search must stay bounded on files made of equal blocks and against
block sums forged by a hostile receiver, choosing the blocks stock rsync does.
"""
import array
import errno
import hashlib
import mmap
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading

import pytest

import rsync_delta
from rsync_delta import FLUSH, MAX_CHAIN_LEN, MAX_STREAK, BlockTable

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(params=["c", "python"])
def impl(request):
    """(checksum1, block_checksum1s, match) of one implementation."""
    if request.param == "c":
        request.getfixturevalue("clib")
        return rsync_delta._checksum1_c, rsync_delta._block_checksum1s_c, rsync_delta._match_c
    return rsync_delta._checksum1_py, rsync_delta._block_checksum1s_py, rsync_delta._match_py


# --- references --------------------------------------------------------------

def checksum1_reference(data):
    """rsync's definition: signed bytes, s1 += b, s2 += s1, 32-bit wraparound."""
    s1 = s2 = 0
    for b in data:
        s1 = (s1 + (b - 256 if b > 127 else b)) & 0xFFFFFFFF
        s2 = (s2 + s1) & 0xFFFFFFFF
    return (s1 & 0xFFFF) | ((s2 << 16) & 0xFFFFFFFF)


def checksum1_four_at_a_time(data):
    """The same sum as rsync's C computes it, four bytes per step plus a tail."""
    b = [x - 256 if x > 127 else x for x in data]
    s1 = s2 = 0
    i = 0
    while i < len(b) - 4:
        s2 += 4 * (s1 + b[i]) + 3 * b[i + 1] + 2 * b[i + 2] + b[i + 3]
        s1 += b[i] + b[i + 1] + b[i + 2] + b[i + 3]
        i += 4
    while i < len(b):
        s1 += b[i]
        s2 += s1
        i += 1
    return ((s1 & 0xFFFF) + (s2 << 16)) & 0xFFFFFFFF


def md5(view):
    return hashlib.md5(view).digest()


def make_table(basis, blength, s2length=16, strong=md5):
    blocks = [basis[i:i + blength] for i in range(0, len(basis), blength)]
    return BlockTable([checksum1_reference(b) for b in blocks],
                      [strong(b)[:s2length] for b in blocks],
                      blength, len(basis) % blength if blocks else 0, s2length)


def check_coverage(tokens, table, length):
    pos = 0
    for n, (off, lit, idx) in enumerate(tokens):
        assert off == pos and lit >= 0
        pos += lit
        if idx >= 0:
            pos += table.block_len(idx)
        else:
            assert lit <= FLUSH + table.blength or n == len(tokens) - 1
    assert pos == length
    assert tokens[-1][2] == -1
    assert all(idx >= 0 or lit <= FLUSH for _, lit, idx in tokens[:-1])


def rebuild(tokens, new, basis, table):
    out = bytearray()
    for off, lit, idx in tokens:
        out += new[off:off + lit]
        if idx >= 0:
            start = idx * table.blength
            out += basis[start:start + table.block_len(idx)]
    return bytes(out)


def rebuild_in_place(tokens, new, basis, table):
    """What a receiver with --inplace does: blocks are read from the file being written."""
    f = bytearray(basis)
    pos = 0
    for off, lit, idx in tokens:
        f[pos:pos + lit] = new[off:off + lit]
        pos += lit
        if idx >= 0:
            start = idx * table.blength
            block = bytes(f[start:start + table.block_len(idx)])
            f[pos:pos + len(block)] = block
            pos += len(block)
    del f[pos:]
    return bytes(f)


def run_both(table, new, inplace, strong=md5, length=None):
    """Tokens and stats from C and Python; asserts they are identical."""
    length = len(new) if length is None else length
    c_tokens = list(rsync_delta._match_c(table, new, length, strong, inplace))
    c_stats = repr(table.stats)
    py_tokens = list(rsync_delta._match_py(table, new, length, strong, inplace))
    assert c_tokens == py_tokens
    assert c_stats == repr(table.stats)
    return c_tokens


# --- (a) weak checksums ----------------------------------------------------------

def test_checksum1_definition_and_rsyncs_unrolled_form_agree():
    rng = random.Random(1)
    for n in list(range(0, 40)) + [1000, 4097]:
        data = bytes(rng.getrandbits(8) for _ in range(n))
        assert checksum1_four_at_a_time(data) == checksum1_reference(data)


def test_checksum1_against_reference(impl):
    checksum1 = impl[0]
    rng = random.Random(2)
    cases = [b"", b"\x00", b"\x80", b"\xff" * 1000, bytes(range(256)) * 9, b"\x7f\x80" * 3000]
    cases += [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 700))) for _ in range(150)]
    cases += [bytes(rng.randrange(128, 256) for _ in range(n)) for n in (15, 16, 17, 31, 32, 33, 5000)]
    for data in cases:
        expected = checksum1_reference(data)
        assert checksum1(data) == expected
        assert checksum1(bytearray(data)) == expected
        assert checksum1(memoryview(data)) == expected


def test_checksum1_large_buffer_wraps_like_rsync(impl):
    checksum1 = impl[0]
    data = random.Random(3).randbytes(70_000) + b"\xff" * 10_000
    assert checksum1(data) == checksum1_reference(data)
    assert checksum1(memoryview(data)[1:-1]) == checksum1_reference(data[1:-1])


def test_every_vector_width_of_the_c_weak_sums_agrees(clib):
    """The C library sums 32 (AVX2) or 16 (SSE2) bytes at a time where the
    CPU can; each width it has must give the scalar loop's results."""
    lib = clib
    best = lib.rd_simd(-1)
    rng = random.Random(21)
    cases = [rng.randbytes(n) for n in list(range(0, 100)) + [1000, 4096, 65536 + 7, 1 << 20]]
    cases += [b"\x80" * 100_000, b"\x7f" * 100_000, b"\xff" * 70_001]
    try:
        for level in range(best + 1):
            assert lib.rd_simd(level) == level
            for data in cases:
                assert rsync_delta._checksum1_c(data) == checksum1_reference(data), (level, len(data))
            data = cases[-4]
            for blength in (700, 32, 33, 4096):
                sums = rsync_delta._block_checksum1s_c(data, blength)
                assert list(sums) == [checksum1_reference(data[i:i + blength])
                                      for i in range(0, len(data), blength)]
    finally:
        lib.rd_simd(-1)


def test_pure_weak_sums_are_exact(monkeypatch):
    rng = random.Random(15)
    sizes = (0, 1, 255, 256, 257, 263, 1000, 16384, 16385, 65543, 131072)
    for most in (rsync_delta._MOST, 1000):
        monkeypatch.setattr(rsync_delta, "_MOST", most)
        for n in sizes:
            for data in (rng.randbytes(n), b"\x80" * n, b"\x7f" * n, b"\xff" * n, bytes(n)):
                signed = [b - 256 if b > 127 else b for b in data]
                s2 = sum((n - j) * b for j, b in enumerate(signed))
                assert rsync_delta._weak_sums(memoryview(data)) == (sum(signed), s2), (most, n, data[:1])


def test_block_checksum1s(impl):
    _, block_checksum1s, _ = impl
    rng = random.Random(4)
    for n, blength in [(0, 700), (1, 700), (700, 700), (701, 700), (5000, 700),
                       (5000, 1), (3, 8), (12345, 64), (1000, 5000)]:
        data = bytes(rng.getrandbits(8) for _ in range(n))
        sums = block_checksum1s(data, blength)
        assert isinstance(sums, array.array) and sums.typecode == "I"
        assert list(sums) == [checksum1_reference(data[i:i + blength])
                              for i in range(0, n, blength)]
        assert block_checksum1s(bytearray(data), blength) == sums
    with pytest.raises(ValueError):
        block_checksum1s(b"abc", 0)


def test_public_functions_use_the_chosen_implementation():
    assert rsync_delta.IMPLEMENTATION in ("c", "python")
    data = bytes(range(256)) * 3
    assert rsync_delta.checksum1(data) == checksum1_reference(data)
    assert list(rsync_delta.block_checksum1s(data, 100)) == [
        checksum1_reference(data[i:i + 100]) for i in range(0, len(data), 100)]


def test_environment_forces_pure_python(clib):
    code = "import rsync_delta; print(rsync_delta.IMPLEMENTATION)"
    env = dict(os.environ, GOKR_RSYNC_PURE="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "python"
    env.pop("GOKR_RSYNC_PURE")
    out = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "c"


# --- (b) and (c): identical tokens that rebuild the file -------------------------------

def _edit(rng, data, edits):
    data = bytearray(data)
    for _ in range(edits):
        pos = rng.randrange(0, len(data) + 1)
        op = rng.randrange(5)
        if op == 0:
            data[pos:pos] = rng.randbytes(rng.randrange(1, 300))
        elif op == 1:
            del data[pos:pos + rng.randrange(1, 300)]
        elif op == 2:
            data[pos:pos] = bytes(rng.randrange(1, 900))
        elif op == 3:
            data[pos:pos + 3] = b"\x00\xff\x80"
        else:
            data[pos:pos + 50] = rng.randbytes(50)
    return bytes(data)


def _scenarios():
    rng = random.Random(5)
    block = rng.randbytes(64)
    yield "identical", rng.randbytes(5000), None, 700
    yield "empty file", b"", b"", 700
    yield "empty basis", b"", rng.randbytes(3000), 700
    yield "empty new", rng.randbytes(3000), b"", 700
    yield "shorter than a block", rng.randbytes(300), None, 700
    yield "new shorter than a block", rng.randbytes(3000), b"abc", 700
    yield "one block and a bit", rng.randbytes(701), None, 700
    yield "exact blocks", rng.randbytes(2800), None, 700
    yield "one-byte blocks", rng.randbytes(300), None, 1
    yield "two-byte blocks", rng.randbytes(300), None, 2
    yield "all zeros", bytes(10_000), None, 64
    yield "zeros, shifted", bytes(10_000), b"xyz" + bytes(9_000) + b"q" + bytes(997), 64
    yield "zeros with a remainder", bytes(10_000 + 17), bytes(5) + bytes(10_000), 64
    yield "repeated block", block * 200 + b"tail", None, 64
    yield "repeated block, rotated", block * 200, block[10:] + block * 150, 64
    yield "high bytes", bytes(rng.randrange(128, 256) for _ in range(9000)), None, 300
    for n in range(40):
        basis = rng.randbytes(rng.randrange(0, 20_000))
        yield f"random {n}", basis, None, rng.choice([1, 7, 64, 333, 700, 2048])


SCENARIOS = list(_scenarios())


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("name,basis,new,blength", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_c_and_python_agree_and_rebuild(clib, name, basis, new, blength, inplace):
    rng = random.Random(name)
    if new is None:
        new = _edit(rng, basis, rng.randrange(0, 8)) if name.startswith("random") else _edit(rng, basis, 3)
    for s2length in (16, 2):
        table = make_table(basis, blength, s2length)
        tokens = run_both(table, new, inplace)
        check_coverage(tokens, table, len(new))
        assert rebuild(tokens, new, basis, table) == new
        if inplace:
            assert rebuild_in_place(tokens, new, basis, table) == new


def test_identical_file_is_all_blocks_in_order(clib):
    basis = random.Random(6).randbytes(7 * 700 + 123)
    table = make_table(basis, 700)
    for inplace in (False, True):
        tokens = run_both(table, basis, inplace)
        assert tokens == [(700 * i, 0, i) for i in range(8)] + [(len(basis), 0, -1)]


def test_block_table_from_the_wire():
    table = BlockTable(iter([-1, 5, 0x7FFFFFFF]), [b"ab", b"cd", bytearray(b"ef")], 10, 3, 2)
    assert list(table.sum1s) == [0xFFFFFFFF, 5, 0x7FFFFFFF]
    assert table.sum2s == [b"ab", b"cd", b"ef"]
    assert [table.block_len(i) for i in range(3)] == [10, 10, 3]
    assert BlockTable([1], [b"ab"], 10, 0, 2).block_len(0) == 10
    with pytest.raises(ValueError):
        BlockTable([1, 2], [b"ab"], 10, 0, 2)
    with pytest.raises(ValueError):
        BlockTable([1], [b"abc"], 10, 0, 2)
    with pytest.raises(ValueError):
        BlockTable([1], [b"ab"], 10, 10, 2)


def test_empty_table_is_all_literal(impl):
    match = impl[2]
    table = BlockTable([], [], 700, 0, 16)
    for length in (0, 1, FLUSH, FLUSH + 1, 3 * FLUSH + 5):
        data = bytes(length)
        tokens = list(match(table, data, length, md5))
        assert all(idx == -1 for _, _, idx in tokens)
        assert all(0 < lit <= FLUSH for _, lit, _ in tokens[:-1])
        check_coverage(tokens, table, length)
    assert list(match(table, b"", 0, md5)) == [(0, 0, -1)]


def test_zero_run_is_realigned_when_updating_in_place(clib):
    bl = 64
    basis = bytes(10 * bl)
    new = b"x" * 10 + bytes(10 * bl - 10)
    table = make_table(basis, bl)
    # The zeros at offset 10 match, but so do the zeros on the block grid at
    # 64: sending 64 literal bytes lets the receiver seek past all the rest.
    assert run_both(table, new, True) == (
        [(0, 64, 1)] + [(bl * i, 0, i) for i in range(2, 10)] + [(10 * bl, 0, -1)])
    # Without --inplace the adjacent blocks from block 0 on are preferred.
    assert run_both(table, new, False) == (
        [(0, 10, 0)] + [(10 + bl * i, 0, i) for i in range(1, 9)] + [(586, 54, -1)])


def test_in_place_never_reads_overwritten_blocks(clib):
    rng = random.Random(7)
    for _ in range(30):
        bl = rng.choice([16, 64, 100])
        blocks = [rng.randbytes(bl) for _ in range(6)] + [bytes(bl)]
        basis = b"".join(rng.choice(blocks) for _ in range(rng.randrange(1, 80)))
        new = b"".join(rng.choice(blocks) for _ in range(rng.randrange(1, 80)))
        new = _edit(rng, new, rng.randrange(0, 4))
        table = make_table(basis, bl, rng.choice([2, 16]))
        tokens = run_both(table, new, True)
        assert rebuild_in_place(tokens, new, basis, table) == new


def test_flush_bounds_pending_literal(clib):
    rng = random.Random(8)
    basis = rng.randbytes(3000)
    new = rng.randbytes(3 * FLUSH + 1000) + basis
    table = make_table(basis, 500)
    tokens = run_both(table, new, False)
    assert tokens[:3] == [(0, FLUSH, -1), (FLUSH, FLUSH, -1), (2 * FLUSH, FLUSH, -1)]
    assert tokens[3:] == [(3 * FLUSH, 1000, 0)] + [
        (3 * FLUSH + 1000 + 500 * i, 0, i) for i in range(1, 6)] + [(len(new), 0, -1)]


def test_length_limits_the_search(clib):
    basis = random.Random(9).randbytes(2100)
    table = make_table(basis, 700)
    tokens = run_both(table, basis + b"ignored", False, length=1400)
    assert tokens == [(0, 0, 0), (700, 0, 1), (1400, 0, -1)]
    with pytest.raises(ValueError):
        rsync_delta.match(table, basis, len(basis) + 1, md5)


def test_strong_sum_is_computed_once_per_offset(clib):
    basis = bytes(64) * 50
    new = bytes(64) * 10
    for match in (rsync_delta._match_c, rsync_delta._match_py):
        calls = []

        def strong(view):
            calls.append(bytes(view))
            return md5(view)
        table = make_table(basis, 64)
        tokens = list(match(table, new, len(new), strong))
        assert tokens == [(64 * i, 0, i) for i in range(10)] + [(640, 0, -1)]
        assert calls == [bytes(64)] * 10


# --- (d) a hostile receiver's block sums ------------------------------------------------

def _decoy(blength, c=100):
    """A block that has the weak sum of blength bytes of c, but other content."""
    block = bytearray([c]) * blength
    block[0:3] = bytes([c + 1, c - 2, c + 1])
    return bytes(block)


def _decoys(blength, n, c=100):
    """n different blocks, each with the weak sum of blength bytes of c."""
    out = []
    for p in range(blength - 2):
        for q in [None] + list(range(p + 3, blength - 2)):
            block = bytearray([c]) * blength
            for x in (p, q):
                if x is not None:
                    block[x:x + 3] = bytes([c + 1, c - 2, c + 1])
            out.append(bytes(block))
            if len(out) == n:
                return out
    raise ValueError(f"fewer than {n} decoys of {blength} bytes")


def _run_offsets(run, blength):
    """The offsets a run of false alarms visits: MAX_STREAK + 1 in a row, then
    one per block."""
    first = list(range(min(MAX_STREAK + 1, run - blength + 1)))
    return first + list(range(first[-1] + blength, run - blength + 1, blength))


def test_distinct_decoys_are_capped_per_offset(clib):
    bl, run = 64, 400
    decoys = _decoys(bl, MAX_CHAIN_LEN + 100)
    source = bytes([100]) * run
    assert len(set(decoys)) == len(decoys)
    assert {checksum1_reference(d) for d in decoys} == {checksum1_reference(source[:bl])}
    table = make_table(b"".join(decoys), bl)
    visited = _run_offsets(run, bl)
    assert run_both(table, source, False) == [(0, run, -1)]
    stats = table.stats
    assert stats.max_chain == MAX_CHAIN_LEN
    assert stats.capped == len(visited)
    assert stats.comparisons == stats.false_alarms == len(visited) * MAX_CHAIN_LEN
    assert stats.jumps == len(visited) - MAX_STREAK
    assert stats.pruned == 0


def test_repeats_of_a_false_alarm_are_pruned(clib):
    """Blocks with the strong sum of the block just found different are
    dropped for good and do not count toward the cap."""
    bl, run = 64, 400
    source = bytes([100]) * run
    table = make_table(_decoy(bl) * 5000, bl)
    visited = _run_offsets(run, bl)
    assert run_both(table, source, False) == [(0, run, -1)]
    stats = table.stats
    assert stats.comparisons == stats.false_alarms == len(visited)
    assert stats.pruned == 4999
    assert stats.max_chain == 1 and stats.capped == 0
    # Only repeats that follow each other in the chain: A B A is three
    # comparisons, the A before them (A A B A in block order) is pruned.
    a, b = _decoys(bl, 2)
    table = make_table(a + a + b + a, bl)
    assert run_both(table, source[:bl], False) == [(0, bl, -1)]
    assert (table.stats.comparisons, table.stats.pruned) == (3, 1)


def test_false_alarms_in_a_row_jump_a_block(clib):
    bl = 64
    c = bytes([100])
    table = make_table(_decoy(bl), bl)
    # Windows holding the X compare nothing and end the run of false alarms.
    source = c * 70 + b"X" + c * 200
    assert run_both(table, source, False) == [(0, len(source), -1)]
    visited = [0, 1, 2, 3, 71, 72, 73, 74, 74 + bl, 74 + 2 * bl]
    assert table.stats.comparisons == len(visited)
    assert table.stats.jumps == 4
    # A match ends the run too: the block after the decoys is still found.
    real = random.Random(18).randbytes(bl)
    table = make_table(_decoy(bl) + real, bl)
    source = c * 300 + real + c * 100
    tokens = run_both(table, source, False)
    assert tokens == [(0, 300, 1), (300 + bl, 100, -1)]
    check_coverage(tokens, table, len(source))


def test_pruning_keeps_blocks_matched_in_place(clib):
    """With --inplace, a block matched at its own offset survives the pruning
    that follows a false alarm on an equal block not so matched: once the
    receiver has written over that one, it is the only copy left."""
    bl = 64
    zero = bytes(bl)
    basis = zero * 10 + random.Random(19).randbytes(5 * bl)
    junk = random.Random(20).randbytes(700)
    # Blocks 0-2 match in place; the window at 192 has the weak sum of zeros
    # but other content; past block 9 only the blocks matched in place remain.
    new = zero * 3 + bytes([1, 254, 1]) + bytes(bl - 3) + junk + zero * 2
    table = make_table(basis, bl)
    tokens = run_both(table, new, True)
    assert [(off + lit, idx) for off, lit, idx in tokens if idx >= 0] == [
        (0, 0), (bl, 1), (2 * bl, 2), (956, 2), (956 + bl, 2)]
    assert rebuild_in_place(tokens, new, basis, table) == new
    assert table.stats.pruned == 8
    tokens = run_both(table, new, False)
    assert [(off + lit, idx) for off, lit, idx in tokens if idx >= 0] == [
        (0, 0), (bl, 1), (2 * bl, 2), (956, 3), (956 + bl, 4)]


def test_cap_follows_rsyncs_chain_order(clib):
    """Chains run from the highest block down: the cap hides low blocks only."""
    bl = 64
    real = bytes([100]) * bl
    source = bytes(range(50)) + real + bytes(range(50))
    decoys = b"".join(_decoys(bl, MAX_CHAIN_LEN + 10))
    low = make_table(real + decoys, bl)
    assert run_both(low, source, False) == [(0, len(source), -1)]
    assert low.stats.capped > 0
    high = make_table(decoys + real, bl)
    assert run_both(high, source, False) == [(0, 50, MAX_CHAIN_LEN + 10), (50 + bl, 50, -1)]
    repeated = make_table(real + _decoy(bl) * (MAX_CHAIN_LEN + 10), bl)
    assert run_both(repeated, source, False) == [(0, 50, 0), (50 + bl, 50, -1)]


def _hostile(blocks, blength, remainder=0, s2length=16):
    """A table of real blocks (bytes) and forged ones ((weak sum, strong sum)),
    and a basis holding the real ones where the table says."""
    basis = bytearray()
    sum1s, sum2s = [], []
    for n, block in enumerate(blocks):
        size = remainder if remainder and n == len(blocks) - 1 else blength
        if isinstance(block, bytes):
            assert len(block) == size
            sum1s.append(checksum1_reference(block))
            sum2s.append(md5(block)[:s2length])
            basis += block
        else:
            sum1s.append(block[0])
            sum2s.append(block[1][:s2length])
            basis += b"?" * size
    return BlockTable(sum1s, sum2s, blength, remainder, s2length), bytes(basis)


def _hostile_cases():
    rng = random.Random(16)
    for bl in (1, 16, 64, 700):
        zero = checksum1_reference(bytes(bl))
        bogus = [(zero, rng.randbytes(16)) for _ in range(1200)]
        repeats = [bogus[n // 7] for n in range(1200)]
        source = bytes(bl * 40 + 13)
        yield f"zeros, forged sums, {bl}", bogus, bl, 0, source
        yield f"zeros, repeated forged sums, {bl}", repeats, bl, 0, source
        yield f"zeros, forged and real, {bl}", bogus[:600] + [bytes(bl)] + repeats[:600], bl, 0, source
        if bl > 1:
            rem = bl // 2 + 1
            tail = (checksum1_reference(bytes(rem)), rng.randbytes(16))
            yield f"zeros, forged short last block, {bl}", bogus[:100] + [tail], bl, rem, source
            yield f"zeros, real short last block, {bl}", bogus[:100] + [bytes(rem)], bl, rem, source
    block = rng.randbytes(64)
    same = checksum1_reference(block)
    forged = [(same, rng.randbytes(16)) for _ in range(40)]
    source = block * 100 + block[:20] + b"x" + block * 50
    yield "repeated block, forged sums", forged * 30, 64, 0, source
    yield "repeated block, forged and real", forged * 10 + [block] + forged * 20 + [block], 64, 0, source
    yield "repeated block, alternating", [block, forged[0]] * 300, 64, 0, source
    # Distinct weak sums that share one of rsync's hash buckets.
    mates = [(((-x) & 0xFFFF) << 16 | x, rng.randbytes(16)) for x in range(1, 3000)]
    yield "bucket mates", mates + [bytes(64)] * 3, 64, 0, bytes(64 * 80)


HOSTILE = list(_hostile_cases())


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("name,blocks,blength,remainder,source", HOSTILE,
                         ids=[case[0] for case in HOSTILE])
def test_hostile_tables_agree_and_rebuild(clib, name, blocks, blength, remainder, source, inplace):
    for s2length in (16, 2):
        table, basis = _hostile(blocks, blength, remainder, s2length)
        tokens = run_both(table, source, inplace)
        check_coverage(tokens, table, len(source))
        assert rebuild(tokens, source, basis, table) == source
        if inplace:
            assert rebuild_in_place(tokens, source, basis, table) == source


@pytest.mark.parametrize("kind", ["distinct", "repeated", "short last block", "one real"])
@pytest.mark.parametrize("inplace", [False, True])
def test_hostile_table_costs_a_strong_sum_per_block(impl, kind, inplace):
    """Thousands of blocks with the weak sum of zeros and forged strong sums
    against a zero-filled file: strong sums are computed about once per
    block of the file, not once per byte."""
    match = impl[2]
    size, bl = 4 << 20, 2048
    rng = random.Random(17)
    forged = [(0, rng.randbytes(16)) for _ in range(1500)]
    remainder = 0
    if kind == "repeated":
        forged = [forged[n // 3] for n in range(len(forged))]
    elif kind == "short last block":
        remainder = 1000
        forged.append((0, rng.randbytes(16)))
    elif kind == "one real":
        forged[700] = bytes(bl)
    table, basis = _hostile(forged, bl, remainder)
    calls = 0

    def strong(view):
        nonlocal calls
        calls += 1
        return md5(view)
    data = bytes(size)
    tokens = list(match(table, data, size, strong, inplace))
    check_coverage(tokens, table, size)
    assert rebuild(tokens, data, basis, table) == data
    assert calls <= 2 * (size // bl) + 2 * MAX_STREAK
    assert table.stats.comparisons <= MAX_CHAIN_LEN * calls


def test_many_small_blocks(clib):
    rng = random.Random(10)
    basis = rng.randbytes(60_000 * 8)
    table = make_table(basis, 8, 4)
    assert table.count > 52_420
    new = _edit(rng, basis, 5)
    tokens = run_both(table, new, False)
    assert rebuild(tokens, new, basis, table) == new


# --- (e) buffers -------------------------------------------------------------------

def test_read_only_mmap(tmp_path, impl):
    checksum1, block_checksum1s, match = impl
    rng = random.Random(11)
    basis = rng.randbytes(20_000)
    new = _edit(rng, basis, 4)
    path = tmp_path / "new"
    path.write_bytes(new)
    table = make_table(basis, 700)
    expected = list(rsync_delta._match_py(table, new, len(new), md5, False))
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        assert checksum1(mm) == checksum1_reference(new)
        assert list(block_checksum1s(mm, 700)) == list(block_checksum1s(new, 700))
        assert list(match(table, mm, len(mm), md5)) == expected
        unfinished = match(table, mm, len(mm), md5)
        next(unfinished)
        unfinished.close()
        mm.close()


def test_bytearray_and_memoryview_buffers(impl):
    _, _, match = impl
    rng = random.Random(12)
    basis = rng.randbytes(9000)
    new = _edit(rng, basis, 3)
    table = make_table(basis, 512)
    expected = list(rsync_delta._match_py(table, new, len(new), md5, False))
    assert list(match(table, bytearray(new), len(new), md5)) == expected
    assert list(match(table, memoryview(new), len(new), md5)) == expected
    framed = b"...." + new + b"...."
    assert list(match(table, memoryview(framed)[4:-4], len(new), md5)) == expected


def test_non_contiguous_buffer_is_refused(impl):
    checksum1 = impl[0]
    with pytest.raises((BufferError, TypeError, ValueError)):
        checksum1(memoryview(b"abcdef")[::2])


def test_threads_share_the_library(clib):
    rng = random.Random(13)
    basis = rng.randbytes(200_000)
    table_args = make_table(basis, 1000)
    jobs = [_edit(rng, basis, 10) for _ in range(4)]
    expected = [list(rsync_delta._match_c(table_args, new, len(new), md5)) for new in jobs]
    results = [None] * len(jobs)

    def work(n):
        table = make_table(basis, 1000)
        results[n] = list(rsync_delta._match_c(table, jobs[n], len(jobs[n]), md5))
    threads = [threading.Thread(target=work, args=(n,)) for n in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == expected


# --- (f) mappings of files that shrink ----------------------------------------------

@pytest.fixture(params=["c", "python"])
def safemap_impl(request, monkeypatch):
    """SafeMap with the C library's SIGBUS handler, or reading files instead."""
    if request.param == "c":
        request.getfixturevalue("clib")
    else:
        monkeypatch.setattr(rsync_delta, "_lib", None)
    return request.param


PAGE = mmap.PAGESIZE


def _shrunk(data, length):
    return data[:length] + bytes(len(data) - length)


def test_safemap_reads_the_file(tmp_path, safemap_impl):
    data = random.Random(21).randbytes(300_000)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        with rsync_delta.SafeMap(fd, len(data)) as sm:
            assert sm.mapped == (safemap_impl == "c")
            assert bytes(sm.buf[:]) == data
            assert not sm.truncated
        assert sm.buf is None and not sm.truncated
        with rsync_delta.SafeMap(fd, 1000) as sm:
            assert bytes(sm.buf[:]) == data[:1000]
        with rsync_delta.SafeMap(fd, 0) as sm:
            assert len(sm.buf) == 0 and not sm.truncated
        with pytest.raises(ValueError):
            rsync_delta.SafeMap(fd, -1)
    finally:
        os.close(fd)


def test_safemap_survives_the_file_shrinking(tmp_path, safemap_impl):
    data = random.Random(22).randbytes(1 << 20)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        sm = rsync_delta.SafeMap(fd, len(data))
        cut = 100_000 + 123
        os.truncate(path, cut)
        view = sm.view()
        digest = hashlib.sha256(view[:]).digest()
        view.release()
        # What is past the new end reads as zeros, and says so.
        assert digest == hashlib.sha256(_shrunk(data, cut)).digest()
        assert sm.truncated
        sm.close()
        assert sm.truncated
    finally:
        os.close(fd)


def test_pread_window_reads_like_the_file(tmp_path, monkeypatch):
    """Without a mapping, slices and indices at random give the file's bytes
    while at most one bounded window of it is held."""
    monkeypatch.setattr(rsync_delta, "_lib", None)
    rng = random.Random(26)
    data = rng.randbytes(3 << 20)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        with rsync_delta.SafeMap(fd, len(data)) as sm:
            buf = sm.buf
            assert len(buf) == len(data) and buf.nbytes == len(data)
            biggest = 0
            pos = 0
            for _ in range(2000):
                if rng.random() < 0.7:
                    pos = min(len(data), pos + rng.randrange(0, 100_000))
                else:
                    pos = rng.randrange(-len(data), len(data))
                n = rng.randrange(0, 300_000)
                assert bytes(buf[pos:pos + n]) == data[pos:pos + n]
                if -len(data) <= pos < len(data):
                    assert buf[pos] == data[pos]
                biggest = max(biggest, len(buf._view))
            assert biggest <= buf.KEEP + buf.MAX_READ + 300_000
            assert bytes(buf[-5:]) == data[-5:] and bytes(buf[10:5]) == b""
            with pytest.raises(IndexError):
                buf[len(data)]
            with pytest.raises(ValueError):
                buf[::2]
            assert not sm.truncated
    finally:
        os.close(fd)


def test_pread_window_keeps_memory_flat_over_a_large_file(tmp_path, monkeypatch):
    """A forward scan of a file many windows long reads it in windows of at
    most KEEP + MAX_READ bytes: none as large as the file."""
    monkeypatch.setattr(rsync_delta._ReadView, "MAX_READ", 1 << 16)
    monkeypatch.setattr(rsync_delta._ReadView, "KEEP", 1 << 14)
    monkeypatch.setattr(rsync_delta, "_lib", None)
    data = random.Random(27).randbytes(2 << 20)
    path = tmp_path / "f"
    path.write_bytes(data)
    reads = []
    real_fill = rsync_delta._ReadView._fill

    def fill(self, a, b):
        real_fill(self, a, b)
        reads.append(len(self._view))
    monkeypatch.setattr(rsync_delta._ReadView, "_fill", fill)
    fd = os.open(path, os.O_RDONLY)
    try:
        with rsync_delta.SafeMap(fd, len(data)) as sm:
            got = b"".join(bytes(sm.buf[i:i + 4096]) for i in range(0, len(data), 4096))
    finally:
        os.close(fd)
    assert got == data
    assert max(reads) <= (1 << 16) + (1 << 14)
    assert sum(reads) < 1.5 * len(data)


def test_pread_window_read_error_reads_as_zeros(tmp_path, monkeypatch):
    """A read that fails (EIO) mid-file: zeros stand in, and the map says
    it was cut short, as when the file shrinks."""
    monkeypatch.setattr(rsync_delta, "_lib", None)
    monkeypatch.setattr(rsync_delta._ReadView, "MAX_READ", 1 << 16)
    monkeypatch.setattr(rsync_delta._ReadView, "KEEP", 1 << 14)
    data = random.Random(29).randbytes(1 << 20)
    path = tmp_path / "f"
    path.write_bytes(data)
    real = os.preadv

    def failing(fd, buffers, offset):
        if offset >= 300_000:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, buffers, offset)
    monkeypatch.setattr(os, "preadv", failing)
    fd = os.open(path, os.O_RDONLY)
    try:
        with rsync_delta.SafeMap(fd, len(data)) as sm:
            got = b"".join(bytes(sm.buf[i:i + 65536]) for i in range(0, len(data), 65536))
            assert sm.truncated
    finally:
        os.close(fd)
    cut = len(got.rstrip(b"\0"))
    assert 300_000 <= cut < len(data) and got[:cut] == data[:cut]


@pytest.mark.parametrize("inplace", [False, True])
def test_search_over_a_pread_window_gives_the_same_tokens(tmp_path, monkeypatch, inplace):
    """match() over an unmapped SafeMap runs the Python search through the
    window, and chooses what the search over the whole buffer does."""
    monkeypatch.setattr(rsync_delta._ReadView, "MAX_READ", 1 << 15)
    monkeypatch.setattr(rsync_delta._ReadView, "KEEP", 1 << 13)
    rng = random.Random(28)
    basis = rng.randbytes(600_000)
    data = _edit(rng, basis, 40)
    path = tmp_path / "f"
    path.write_bytes(data)
    table = make_table(basis, 700)
    expected = list(rsync_delta._match_py(table, data, len(data), md5, inplace))
    monkeypatch.setattr(rsync_delta, "_lib", None)
    fd = os.open(path, os.O_RDONLY)
    try:
        with rsync_delta.SafeMap(fd, len(data)) as sm:
            assert not sm.mapped
            got = list(rsync_delta.match(table, sm.buf, len(data), md5, inplace))
    finally:
        os.close(fd)
    assert got == expected
    check_coverage(got, table, len(data))


def test_safemap_of_a_file_already_shorter(tmp_path, safemap_impl):
    data = random.Random(23).randbytes(50_000)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        with rsync_delta.SafeMap(fd, 80_000) as sm:
            assert bytes(sm.buf[:]) == data + bytes(30_000)
            assert sm.truncated
    finally:
        os.close(fd)


def test_search_over_a_shrinking_file(tmp_path, clib):
    """The C search reads the mapping without the GIL: lost pages read as
    zeros there too, and the tokens still cover the whole map."""
    rng = random.Random(24)
    basis = rng.randbytes(400_000)
    data = _edit(rng, basis, 5)
    path = tmp_path / "f"
    path.write_bytes(data)
    table = make_table(basis, 1000)
    fd = os.open(path, os.O_RDONLY)
    try:
        with rsync_delta.SafeMap(fd, len(data)) as sm:
            os.truncate(path, 150_000)
            tokens = list(rsync_delta.match(table, sm.buf, len(data), md5))
            assert sm.truncated
        check_coverage(tokens, table, len(data))
        assert rebuild(tokens, _shrunk(data, 150_000), basis, table) == _shrunk(data, 150_000)
    finally:
        os.close(fd)


_OUTSIDE_FAULT = """
import mmap, os, sys
import rsync_delta
path = sys.argv[1]
with open(path, "wb") as f:
    f.write(b"x" * 65536)
fd = os.open(path, os.O_RDONLY)
sm = rsync_delta.SafeMap(fd, 65536)
assert sm.mapped
plain = mmap.mmap(fd, 65536, access=mmap.ACCESS_READ)
os.truncate(path, 0)
assert bytes(sm.buf) == bytes(65536) and sm.truncated
print("absorbed", flush=True)
plain[:]
print("survived", flush=True)
"""


@pytest.mark.parametrize("faulthandler", [False, True])
def test_faults_outside_safemaps_still_kill(tmp_path, clib, faulthandler):
    args = [sys.executable] + (["-X", "faulthandler"] if faulthandler else [])
    env = {k: v for k, v in os.environ.items() if k not in ("GOKR_RSYNC_PURE", "PYTHONFAULTHANDLER")}
    proc = subprocess.run(args + ["-c", _OUTSIDE_FAULT, str(tmp_path / "f")], cwd=HERE, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout == "absorbed\n"
    assert proc.returncode == -signal.SIGBUS
    if faulthandler:
        assert "Fatal Python error: Bus error" in proc.stderr


def test_safemaps_in_many_threads(tmp_path, clib):
    """Threads map, read and close files while other threads shrink them."""
    errors = []

    def work(n):
        rng = random.Random(n)
        try:
            for round_ in range(15):
                data = rng.randbytes(rng.randrange(PAGE, 100 * PAGE))
                path = tmp_path / f"{n}-{round_}"
                path.write_bytes(data)
                fd = os.open(path, os.O_RDONLY)
                cut = rng.randrange(0, len(data))
                shrink = threading.Timer(rng.random() / 500, os.truncate, (path, cut))
                try:
                    with rsync_delta.SafeMap(fd, len(data)) as sm:
                        shrink.start()
                        got = b"".join(bytes(sm.buf[i:i + PAGE]) for i in range(0, len(data), PAGE))
                        shrink.join()
                        assert got == data or sm.truncated
                        for i in range(0, len(data), PAGE):
                            page = got[i:i + PAGE]
                            # Each page as it was, or cut short and zero-filled.
                            assert data[i:i + PAGE].startswith(page.rstrip(b"\0"))
                finally:
                    shrink.cancel()
                    os.close(fd)
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_full_range_table_falls_back_to_reading(tmp_path, clib):
    data = random.Random(25).randbytes(3 * PAGE)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        maps = [rsync_delta.SafeMap(fd, len(data)) for _ in range(300)]
        assert any(sm.mapped for sm in maps) and not all(sm.mapped for sm in maps)
        assert all(bytes(sm.buf[:]) == data for sm in maps)
        for sm in maps:
            sm.close()
        with rsync_delta.SafeMap(fd, len(data)) as sm:
            assert sm.mapped
        # A map dropped without close() gives its slot back too.
        maps = [rsync_delta.SafeMap(fd, len(data)) for _ in range(300)]
        del maps
        with rsync_delta.SafeMap(fd, len(data)) as sm:
            assert sm.mapped
    finally:
        os.close(fd)


def test_c_library_compiles_without_warnings(tmp_path):
    cc = (sysconfig.get_config_var("CC") or "cc").split()
    if shutil.which(cc[0]) is None:
        pytest.skip("no C compiler")
    for source in ("rsync_delta.c", "rsync_flist.c"):
        proc = subprocess.run(cc + ["-Wall", "-Wextra", "-Werror", "-O2", "-fsyntax-only",
                                    os.path.join(HERE, "contrib", source)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


# --- stock rsync -----------------------------------------------------------------------

def _stock_rsync_matches(tmp_path, basis, new, blength, inplace):
    dst = tmp_path / "dst"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir()
    (dst / "f").write_bytes(basis)
    (tmp_path / "f").write_bytes(new)
    # A fixed seed: rsync's 2-byte strong sums could collide where ours do not.
    args = ["rsync", "-I", "--no-whole-file", f"--block-size={blength}", "--debug=deltasum2",
            "--checksum-choice=md5", "--checksum-seed=1"]
    if inplace:
        args.append("--inplace")
    out = subprocess.run(args + [str(tmp_path / "f"), str(dst) + "/"],
                         capture_output=True, text=True, check=True).stdout
    assert (dst / "f").read_bytes() == new
    return [(int(offset.replace(",", "")), int(block)) for offset, block in
            re.findall(r"^match at (\S+) last_match=\S+ j=(\d+)", out, re.M)]


def _stock_cases():
    rng = random.Random(14)
    yield bytes(30_000), None, 700
    yield rng.randbytes(30_000), None, 700
    yield rng.randbytes(5000) * 6, None, 1000
    bl = 64
    c = bytes([100])
    real = rng.randbytes(bl)
    # Runs of false alarms (jumps), repeats of one decoy (pruning), a match after.
    yield (_decoy(bl) * 40 + real + rng.randbytes(500),
           c * 300 + real + c * 70 + b"X" + c * 200 + real, bl)
    # The jump after four false alarms passes over a block that matches at 30.
    early = c * 37 + rng.randbytes(bl - 37)
    yield _decoy(bl) + early + rng.randbytes(300), c * 30 + early + rng.randbytes(200), bl
    # Different decoys: several comparisons per offset.
    yield b"".join(_decoys(bl, 30)) + real, c * 500 + real + c * 90, bl
    # Zero runs broken by windows with the weak sum of zeros.
    blip = bytes([1, 254, 1])
    yield bytes(40 * bl), b"".join(bytes(rng.randrange(0, 3 * bl)) + blip for _ in range(12)), bl
    # Blocks matched in place outlive the pruning of their equals.
    yield (bytes(10 * bl) + rng.randbytes(5 * bl),
           bytes(3 * bl) + blip + bytes(bl - 3) + rng.randbytes(700) + bytes(2 * bl), bl)


@pytest.mark.parametrize("inplace", [False, True])
def test_same_blocks_as_stock_rsync(tmp_path, inplace, rsync_bin):
    rng = random.Random(14)
    for basis, new, blength in _stock_cases():
        if new is None:
            new = _edit(rng, basis, 6)
        table = make_table(basis, blength)
        ours = []
        for off, lit, idx in rsync_delta.match(table, new, len(new), md5, inplace):
            if idx >= 0:
                ours.append((off + lit, idx))
        assert ours == _stock_rsync_matches(tmp_path, basis, new, blength, inplace)


def test_sparse_writer_keeps_the_bytes(tmp_path):
    """_write_sparse over any split of any mix of zeros and data leaves the
    bytes that were given, with holes only where zeros were."""
    import random
    import rsync_receiver
    rng = random.Random(7)
    path = tmp_path / "f"
    for _ in range(300):
        data = b"".join(bytes(k) if rng.random() < 0.5 else rng.randbytes(k)
                        for k in (rng.choice([0, 1, 248, 1023, 1024, 1025, 4096, 70000])
                                  for _ in range(rng.randint(1, 8))))
        cut = rng.randint(0, len(data))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        try:
            rsync_receiver._write_sparse(fd, data[:cut])
            rsync_receiver._write_sparse(fd, memoryview(data)[cut:])
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)
        assert path.read_bytes() == data
