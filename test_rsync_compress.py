"""rsync_compress: token streams against themselves, against stock rsync in
both directions (raw-protocol client of a stock daemon; scripted daemon for a
stock client), and against malformed input.

Tests that need stock rsync or a compression package fail instead of
skipping when the environment variable CI is set."""

import hashlib
import io
import random
import socket
import stat
import struct
import threading
import zlib

import pytest

import rsync
import rsync_flist
import rsync_receiver
import rsync_sender
import rsync_compress as rc
import rsync_delta
from conftest import RSYNC, RSYNC_327, need, run

METHODS = ["zstd", "lz4", "zlibx", "zlib"]
ALL = [None] + METHODS


def need_method(method):
    if method is not None:
        need(method in rc.available_compressions(), "the Python package for %s" % method)


# ----------------------------------------------------------------------------
# Helpers: encoding a file from tokens, decoding it back


def encode(method, files, protocol=32, level=None, dict_after=None, compress=True):
    """Each file is a list of ("lit", bytes) / ("blk", index, content)."""
    out = bytearray()
    w = rc.TokenWriter(method, out.extend, level=level, protocol=protocol)
    if dict_after is not None:
        w.DICT_AFTER = dict_after
    for ops in files:
        w.begin_file(compress)
        for op in ops:
            if op[0] == "lit":
                w.literal(op[1])
            else:
                w.block(op[1], op[2])
        w.end_file()
    return bytes(out)


def decode(reader, blocks, max_block=None):
    """(file content, [("lit", bytes) | ("blk", index)] with adjacent literals merged)."""
    reader.begin_file(max_block)
    data = bytearray()
    items = []
    while True:
        kind, val = reader.next()
        if kind == "end":
            return bytes(data), items
        if kind == "literal":
            assert 0 < len(val) <= reader.max_literal
            data += val
            if items and items[-1][0] == "lit":
                items[-1] = ("lit", items[-1][1] + bytes(val))
            else:
                items.append(("lit", bytes(val)))
        else:
            content = blocks[val]
            reader.block_data(content)
            data += content
            items.append(("blk", val))


def expected(ops):
    items = []
    for op in ops:
        if op[0] == "lit":
            if not op[1]:
                continue
            if items and items[-1][0] == "lit":
                items[-1] = ("lit", items[-1][1] + bytes(op[1]))
            else:
                items.append(("lit", bytes(op[1])))
        else:
            items.append(("blk", op[1]))
    return items


class Blocks:
    """Block i's content, made up from i (for indexes up to 2^31)."""

    def __init__(self, size=700):
        self.size = size

    def __getitem__(self, i):
        return hashlib.shake_128(i.to_bytes(8, "little")).digest(self.size)


def walk_frames(method, stream):
    """Checks the framing the writer produces and counts its items."""
    counts = {"frames": 0, "runs": 0, "long": 0, "ends": 0}
    pos = 0
    if method is None:
        while pos < len(stream):
            t = struct.unpack_from("<i", stream, pos)[0]
            pos += 4
            if t > 0:
                assert t <= rc.CHUNK_SIZE
                pos += t
            elif t == 0:
                counts["ends"] += 1
        return counts
    while pos < len(stream):
        flag = stream[pos]
        pos += 1
        if flag & 0xC0 == rc.DEFLATED_DATA:
            n = (flag & 0x3F) << 8 | stream[pos]
            assert 0 < n <= rc.MAX_DATA_COUNT
            pos += 1 + n
            counts["frames"] += 1
        elif flag == rc.END_FLAG:
            counts["ends"] += 1
        else:
            if not flag & rc.TOKEN_REL:
                assert flag in (rc.TOKEN_LONG, rc.TOKENRUN_LONG)
                pos += 4
                counts["long"] += 1
            run = flag & 0x40 if flag & rc.TOKEN_REL else flag & 1
            if run:
                assert struct.unpack_from("<H", stream, pos)[0] > 0
                pos += 2
                counts["runs"] += 1
    return counts


def random_files(rnd, blocks, nfiles=6):
    text = b"".join(b"%d the quick brown fox %d jumps\n" % (i, i % 17) for i in range(4000))
    files = [[]]
    for _ in range(nfiles):
        ops = []
        for _ in range(rnd.randrange(1, 40)):
            r = rnd.random()
            if r < 0.35:
                n = rnd.choice([1, 5, 300, 4000, 16383, 16384, 40000, 70000])
                if rnd.random() < 0.5:
                    start = rnd.randrange(len(text) - n) if n < len(text) else 0
                    ops.append(("lit", text[start:start + n]))
                else:
                    ops.append(("lit", rnd.randbytes(n)))
            elif r < 0.6:
                i = rnd.choice([rnd.randrange(200), rnd.randrange(1 << 20), 0, 63, 64])
                ops.append(("blk", i, blocks[i]))
            else:
                start = rnd.randrange(500)
                for i in range(start, start + rnd.randrange(2, 150)):
                    ops.append(("blk", i, blocks[i]))
        files.append(ops)
    files.append([("blk", 5, blocks[5])])
    files.append([("lit", b"x")])
    return files


# ----------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("protocol", [27, 30, 31, 32])
@pytest.mark.parametrize("method", ALL, ids=[str(m) for m in ALL])
def test_round_trip_random(method, protocol):
    need_method(method)
    blocks = Blocks(700)
    for seed in range(4):
        files = random_files(random.Random(seed * 31 + protocol), blocks)
        for dict_after in (0, 8192, 1 << 40):
            stream = encode(method, files, protocol, dict_after=dict_after)
            assert walk_frames(method, stream)["ends"] == len(files)
            src = io.BytesIO(stream)
            reader = rc.TokenReader(method, src.read, protocol)
            for ops in files:
                data, items = decode(reader, blocks)
                assert items == expected(ops)
            assert src.read() == b""
            if method != "zlib":
                break


@pytest.mark.parametrize("method", ALL, ids=[str(m) for m in ALL])
def test_round_trip_long_runs_and_far_indexes(method):
    """Runs longer than one run token holds, jumps back and far ahead,
    and the largest index rsync allows."""
    need_method(method)
    blocks = Blocks(3)
    top = rc.MAX_TOKEN_INDEX
    ops = [("blk", i, blocks[i]) for i in range(150_000)]
    ops += [("blk", 10, blocks[10]), ("blk", 9, blocks[9]), ("blk", 73, blocks[73]),
            ("lit", b"between"), ("blk", 74, blocks[74])]
    ops += [("blk", i, blocks[i]) for i in range(top - 70_000, top + 1)]
    stream = encode(method, [ops])
    counts = walk_frames(method, stream)
    if method is not None:
        assert counts["runs"] == 5 and counts["long"] >= 3
    reader = rc.TokenReader(method, io.BytesIO(stream).read)
    _, items = decode(reader, blocks)
    assert items == expected(ops)


@pytest.mark.parametrize("method", ALL, ids=[str(m) for m in ALL])
def test_round_trip_levels_skip_and_limits(method):
    need_method(method)
    blocks = Blocks(1000)
    rnd = random.Random(5)
    text = b"".join(b"row %d: %s\n" % (i, b"ab" * (i % 40)) for i in range(30000))
    ops = [("lit", text[:300_000]), ("blk", 1, blocks[1]), ("lit", rnd.randbytes(50_000)),
           ("blk", 7, blocks[7]), ("blk", 8, blocks[8]), ("lit", bytes(1_000_000))]
    least, most = {"zlib": (1, 9), "zlibx": (1, 9), "zstd": (-20, 19), "lz4": (0, 0), None: (None, None)}[method]
    for level in {least, most, None}:
        for compress in (True, False):
            stream = encode(method, [ops, ops], level=level, compress=compress)
            for max_literal in (1 << 24, 1000 if method else rc.CHUNK_SIZE):
                reader = rc.TokenReader(method, io.BytesIO(stream).read, max_literal=max_literal)
                for _ in range(2):
                    _, items = decode(reader, blocks, max_block=9)
                    assert items == expected(ops)
    if method in ("zlib", "zlibx"):
        stored = encode(method, [[("lit", text[:300_000])]], compress=False)
        squeezed = encode(method, [[("lit", text[:300_000])]])
        assert len(stored) > 300_000 > 10 * len(squeezed)


def test_zlib_history_is_used_and_needed():
    """Literals that repeat matched blocks shrink only with the history
    (zlib against zlibx), and a reader without the history gets them wrong."""
    rnd = random.Random(9)
    basis = rnd.randbytes(700 * 40)
    blocks = [basis[i * 700:(i + 1) * 700] for i in range(40)]
    ops = []
    for i in range(0, 40, 2):
        ops.append(("blk", i, blocks[i]))
        ops.append(("blk", i + 1, blocks[i + 1]))
        ops.append(("lit", blocks[i][100:600] + rnd.randbytes(20)))
    for protocol, dict_after in ((30, 0), (32, 0), (30, 1 << 40), (32, 1 << 40)):
        with_history = encode("zlib", [ops], protocol, dict_after=dict_after)
        without = encode("zlibx", [ops], protocol)
        assert len(with_history) < len(without) - 20 * 400
        data, items = decode(rc.TokenReader("zlib", io.BytesIO(with_history).read, protocol), blocks)
        assert items == expected(ops)
        blind = rc.TokenReader("zlibx", io.BytesIO(with_history).read, protocol)
        try:
            assert decode(blind, blocks)[1] != expected(ops)
        except rsync.ProtocolError:
            pass


def test_protocol_30_repeats_the_first_piece_of_long_blocks():
    """Below 31 a block over 0xffff bytes enters the history as repeats of its
    first 0xffff bytes; a writer and reader of different protocols disagree."""
    rnd = random.Random(3)
    big = rnd.randbytes(100_000)
    ops = [("blk", 0, big), ("lit", big[99_000:99_600] + big[30_000:30_600])]
    for protocol in (27, 30, 31, 32):
        stream = encode("zlib", [ops], protocol, dict_after=0)
        assert decode(rc.TokenReader("zlib", io.BytesIO(stream).read, protocol), [big])[1] == expected(ops)
        other = 32 if protocol < 31 else 30
        try:
            wrong = decode(rc.TokenReader("zlib", io.BytesIO(stream).read, other), [big])[1]
        except rsync.ProtocolError:
            continue
        assert wrong != expected(ops)


def test_writer_refuses_misuse():
    with pytest.raises(ValueError):
        rc.TokenWriter("gzip", print)
    with pytest.raises(ValueError):
        rc.TokenWriter("zlib", print, level=0)
    w = rc.TokenWriter("zlib", lambda b: None)
    with pytest.raises(RuntimeError):
        w.literal(b"x")
    w.begin_file()
    with pytest.raises(ValueError):
        w.block(-1, b"")
    with pytest.raises(ValueError):
        w.block(rc.MAX_TOKEN_INDEX + 1, b"")


# ----------------------------------------------------------------------------
# Negotiation, levels, skip-compress


def test_available_and_pick():
    names = rc.available_compressions()
    assert names == [m for m in METHODS if m in names] and names[-2:] == ["zlibx", "zlib"]
    assert rc.available_compressions(server=True) == names + ["none"]
    ours = ["zstd", "lz4", "zlibx", "zlib"]
    assert rc.pick_compression(ours, "zlib zlibx lz4") == "lz4"
    assert rc.pick_compression(ours, "zlib zlibx lz4", server=True) == "zlib"
    assert rc.pick_compression(ours, "ZSTD none") == "zstd"
    assert rc.pick_compression(ours + ["none"], "none", server=True) == "none"
    assert rc.pick_compression(ours, "brotli") is None
    assert rc.pick_compression(ours, "") is None


def test_levels():
    lv = rc.compression_level
    assert [lv("zlib"), lv("zlib", -1), lv("zlib", 0), lv("zlib", 1), lv("zlib", 99), lv("zlib", -7)] == \
        [6, 6, None, 1, 9, 1]
    assert lv("zlibx", 3) == 3
    assert [lv("zstd"), lv("zstd", 0), lv("zstd", -1), lv("zstd", 22), lv("zstd", 99), lv("zstd", -10 ** 9)] == \
        [3, 3, -1, 22, 22, -131072]
    assert [lv("lz4"), lv("lz4", 0), lv("lz4", 5), lv("lz4", -5)] == [0, 0, 0, 0]
    assert [rc.skip_compression_level(m) for m in ("zlib", "zlibx", "zstd", "lz4")] == [0, 0, -131072, 0]


def test_skip_compress():
    default = rc.default_skip_compress()
    assert default.startswith("*.3g2 *.3gp *.7z ") and default.endswith(" *.zip *.zst")
    assert len(default.split()) == 96
    for name, skip in [(b"a.gz", True), (b"dir/B.JPG", True), (b"x.tar.gz", True), (b".gz", False),
                       (b"gz", False), (b"a.gz.txt", False), (b"a.", False), (b"d.gz/file", False),
                       (b"movie.mp4", True), (b"a.squashfs", True), (b"a.7z", True), (b"a.7zz", False)]:
        assert rc.skip_compress(name, default) is skip, name
    opt = rc.skip_compress_rules("gz/mp[34]/Z*/[x")
    assert [opt(n) for n in (b"a.gz", b"a.mp3", b"a.MP4", b"a.mp5", b"a.z*", b"a.za", b"a.[x", b"a.jpg")] == \
        [True, True, True, False, True, False, True, False]
    assert not rc.skip_compress_rules("")(b"a.gz")
    daemon = rc.skip_compress_rules("txt", daemon=True)
    assert daemon(b"a.txt") and daemon(b"a.gz")
    custom = rc.SkipCompress("*.t?t secret* *.log")
    assert [custom(n) for n in (b"A.TXT", b"a.tnt", b"SECRET-file", b"dir/secret", b"x.LOG", b"x.logs")] == \
        [True, True, True, True, True, False]
    assert rc.skip_compress(b"anything", "*.gz *") and not rc.skip_compress(b"a.gz", "")


# ----------------------------------------------------------------------------
# Hostile streams


def reader_for(method, stream, **kw):
    r = rc.TokenReader(method, io.BytesIO(stream).read, **kw)
    return r


def drain(r, max_block=None):
    r.begin_file(max_block)
    n = 0
    while True:
        kind, val = r.next()
        if kind == "end":
            return n
        if kind == "literal":
            assert len(val) <= r.max_literal
            n += len(val)
        else:
            r.block_data(b"b" * 10)


def frame(payload):
    return bytes((0x40 | len(payload) >> 8, len(payload) & 0xFF)) + payload


def flushed(data, mode):
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush(mode)


def deflated(data, final=False):
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    if final:
        return c.compress(data) + c.flush()
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    return out[:-4]


TOKEN_ATTACKS = {
    "flag-01": b"\x01", "flag-1f": b"\x1f", "flag-22": b"\x22\0\0\0\0", "flag-3f": b"\x3f",
    "long-negative": b"\x20" + struct.pack("<i", -5),
    "long-too-big": b"\x20" + struct.pack("<i", rc.MAX_TOKEN_INDEX + 1),
    "run-zero": b"\x21" + struct.pack("<i", 5) + b"\0\0",
    "rel-run-zero": b"\xc1\0\0",
    "run-overflow": b"\x21" + struct.pack("<i", rc.MAX_TOKEN_INDEX - 5) + struct.pack("<H", 10),
    "rel-overflow": b"\x20" + struct.pack("<i", rc.MAX_TOKEN_INDEX - 1) + b"\xbf",
    "beyond-max-block": b"\x20" + struct.pack("<i", 100),
    "rel-beyond-max-block": b"\x80\xbf\xbf",
    "run-beyond-max-block": b"\xc0" + struct.pack("<H", 100),
    "truncated-long": b"\x20\x01\x00",
    "truncated-run": b"\xc0\x05",
    "truncated-frame": b"\x40\x10abc",
    "nothing": b"",
}


@pytest.mark.parametrize("attack", sorted(TOKEN_ATTACKS))
@pytest.mark.parametrize("method", METHODS)
def test_hostile_tokens(method, attack):
    need_method(method)
    with pytest.raises(rsync.ProtocolError):
        drain(reader_for(method, TOKEN_ATTACKS[attack]), max_block=100)


@pytest.mark.parametrize("stream", [
    struct.pack("<i", (1 << 24) + 1), struct.pack("<i", -101), struct.pack("<i", -(1 << 31)),
    struct.pack("<i", 10) + b"short", b"\0\0",
], ids=["literal-too-long", "beyond-max-block", "int-min", "truncated", "short-int"])
def test_hostile_plain(stream):
    with pytest.raises(rsync.ProtocolError):
        drain(reader_for(None, stream), max_block=100)


ZLIB_ATTACKS = {
    "garbage": frame(b"\xff" * 100) + b"\0",
    "final-block": frame(deflated(b"hello", final=True)) + b"\0",
    "no-sync-flush": frame(deflated(bytes(range(256)) * 20)[:-12]) + b"\x80",
    "partial-flush": frame(flushed(b"abc" * 99, zlib.Z_PARTIAL_FLUSH)) + b"\x80",
    "untrimmed-sync-flush": frame(flushed(b"abc" * 99, zlib.Z_SYNC_FLUSH)) + b"\x80",
    "stored-block-cut": frame(b"\x00\x10\x00\xef\xff" + b"abc") + b"\0",
    "empty-frame": b"\x40\x00\0",
    "partial-sync": frame(deflated(b"hello") + b"\x00\x00") + b"\0",
    "data-after-final": frame(deflated(b"hi", final=True) + b"more") + b"\0",
}


@pytest.mark.parametrize("attack", sorted(ZLIB_ATTACKS))
@pytest.mark.parametrize("method", ["zlib", "zlibx"])
def test_hostile_deflate(method, attack):
    with pytest.raises(rsync.ProtocolError):
        drain(reader_for(method, ZLIB_ATTACKS[attack]))


def test_deflate_bomb_comes_out_in_bounded_pieces():
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = c.compress(bytes(64 << 20)) + c.flush(zlib.Z_SYNC_FLUSH)
    bomb = bomb[:-4]
    stream = b"".join(frame(bomb[i:i + rc.MAX_DATA_COUNT]) for i in range(0, len(bomb), rc.MAX_DATA_COUNT))
    for max_literal in (1 << 24, 4096):
        r = reader_for("zlib", stream + b"\0", max_literal=max_literal)
        r.begin_file()
        biggest = total = 0
        while True:
            kind, val = r.next()
            if kind == "end":
                break
            biggest = max(biggest, len(val))
            total += len(val)
        assert total == 64 << 20 and biggest <= min(max_literal, 256 << 10)


def zstd_frame_header(window_log=20):
    return b"\x28\xb5\x2f\xfd" + b"\x00" + bytes(((window_log - 10) << 3,))


def zstd_block(btype, size, body=b"", last=False):
    v = int(last) | btype << 1 | size << 3
    return v.to_bytes(3, "little") + body


ZSTD_ATTACKS = {
    "bad-magic": frame(b"\x00\x01\x02\x03" * 4) + b"\0",
    "reserved-bit": frame(b"\x28\xb5\x2f\xfd\x08\x50") + b"\0",
    "reserved-block": frame(zstd_frame_header() + zstd_block(3, 5, b"12345")) + b"\0",
    "oversize-block": frame(zstd_frame_header() + zstd_block(0, (128 << 10) + 1)) + b"\0",
    "corrupt-block": frame(zstd_frame_header() + zstd_block(2, 20, b"\xff" * 20)) + b"\0",
    "huge-window": frame(b"\x28\xb5\x2f\xfd\x00\xff" + zstd_block(1, 5, b"a", last=True)) + b"\0",
    "rle-beyond-window": frame(zstd_frame_header(10) + zstd_block(1, 100_000, b"a")) + b"\0",
}


@pytest.mark.parametrize("attack", sorted(ZSTD_ATTACKS))
def test_hostile_zstd(attack):
    need_method("zstd")
    with pytest.raises(rsync.ProtocolError):
        drain(reader_for("zstd", ZSTD_ATTACKS[attack]))


def test_zstd_bomb_comes_out_in_bounded_pieces():
    """RLE blocks make 128 KiB of output from 4 bytes: one wire frame holds
    half a gigabyte, and still comes out one block at a time."""
    need_method("zstd")
    body = zstd_frame_header(17) + zstd_block(1, 128 << 10, b"z") * 4000
    stream = frame(body[:rc.MAX_DATA_COUNT]) + frame(body[rc.MAX_DATA_COUNT:]) + b"\0"
    r = reader_for("zstd", stream)
    r.begin_file()
    pieces = total = 0
    while True:
        kind, val = r.next()
        if kind == "end":
            break
        assert len(val) <= 128 << 10
        total += len(val)
        pieces += 1
    assert total == 4000 << 17 and pieces == 4000


def test_zstd_frames_split_anywhere_and_skippable_frames():
    need_method("zstd")
    import zstandard
    data = random.Random(1).randbytes(30_000) * 2 + bytes(200_000)
    c = zstandard.ZstdCompressor(level=3, write_checksum=True)
    body = (b"\x50\x2a\x4d\x18" + struct.pack("<I", 3) + b"abc" + c.compress(data[:1000])
            + zstandard.ZstdCompressor(level=1).compress(data))
    for step in (1, 7, 1000, rc.MAX_DATA_COUNT):
        stream = b"".join(frame(body[i:i + step]) for i in range(0, len(body), step)) + b"\0"
        assert drain(reader_for("zstd", stream)) == 1000 + len(data)


LZ4_ATTACKS = {
    "garbage": frame(b"\xff" * 50) + b"\0",
    "empty-frame": b"\x40\x00\0",
    "too-much-output": frame(b"\x1f\x00\x01\x00" + b"\xff" * 200 + b"\x00"),
}


@pytest.mark.parametrize("attack", sorted(LZ4_ATTACKS))
def test_hostile_lz4(attack):
    need_method("lz4")
    with pytest.raises(rsync.ProtocolError):
        drain(reader_for("lz4", LZ4_ATTACKS[attack]))


def test_reader_refuses_misuse():
    r = rc.TokenReader("zlib", io.BytesIO(b"\x80" + frame(deflated(b"x")) + b"\0").read)
    with pytest.raises(RuntimeError):
        r.next()
    r.begin_file()
    with pytest.raises(RuntimeError):
        r.block_data(b"x")
    assert r.next() == ("block", 0)
    with pytest.raises(RuntimeError):
        r.next()


# ----------------------------------------------------------------------------
# Test data shared by both interop directions


def corpus():
    """{name: (content, stale copy or None, block length for the stale copy or None)}"""
    rnd = random.Random(20240601)
    words = [bytes(rnd.choices(b"abcdefghijklmnopqrstuvwxyz", k=rnd.randrange(2, 9))) for _ in range(400)]
    text = b" ".join(rnd.choice(words) + (b"\n" if rnd.random() < 0.1 else b"") for _ in range(80_000))

    def edited(base, spots, back):
        """Spots where 300 bytes become a near copy of what lies `back` bytes
        earlier: literal data that deflate can take from matched blocks."""
        new = bytearray(base)
        for pos in sorted(rnd.sample(range(back + 1000, len(base) - 1000), spots)):
            piece = bytearray(new[pos - back:pos - back + 300])
            piece[rnd.randrange(300)] ^= 0x55
            new[pos:pos + 300] = piece
        return bytes(new)

    def after_big_blocks(base, blength):
        """Block k starts with copies of the end of block k - 1 and of bytes
        20000 into it: in the history after block k - 1 from protocol 31 on,
        and below 31 (where that history repeats the block's first 0xffff
        bytes) respectively."""
        new = bytearray(base)
        for k in (2, 5, 8):
            at = k * blength + 10
            prev = (k - 1) * blength
            new[at:at + 600] = base[prev + blength - 1500:prev + blength - 1200] + base[prev + 20000:prev + 20300]
        return bytes(new)

    rand = rnd.randbytes(600_000)
    big = rnd.randbytes(1_000_000)
    many = rnd.randbytes(1_200_000)
    zeros = bytes(3 << 20)
    moved = rnd.randbytes(400_000)
    files = {
        "empty": (b"", None, None),
        "tiny.txt": (b"hello\n", b"hullo\n", None),
        "text.txt": (text, None, None),
        "random.bin": (rand, None, None),
        "edited.txt": (edited(text, 40, 1500), text, None),
        "edited.bin": (edited(rand, 40, 2000), rand, None),
        "bigblocks.bin": (after_big_blocks(big, 100_000), big, 100_000),
        "many.bin": (many[:1_150_000] + b"x" + many[1_150_001:], many, 16),
        "zeros": (zeros, zeros[:1 << 20] + b"y" + zeros[(1 << 20) + 1:], None),
        "moved.bin": (moved[200_000:] + rnd.randbytes(5000) + moved[:200_000] + moved[100_000:101_000],
                      moved, None),
        "photo.jpg": (rnd.randbytes(70_000), None, None),
    }
    return files


@pytest.fixture(scope="module")
def files():
    return corpus()


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory, files):
    d = tmp_path_factory.mktemp("module")
    for name, (data, _, _) in files.items():
        (d / name).write_bytes(data)
    return str(d)


# ----------------------------------------------------------------------------
# Receiving from a stock rsync daemon, speaking the protocol ourselves


def setup_client(sess, choice):
    """compat.c setup_protocol on the client side, with the compression
    list exchanged after the checksum list when -z names no method."""
    p = sess.protocol
    negotiate = False
    if p >= 30:
        cf = sess.inp.varint()
        sess.compat_flags = cf
        negotiate = bool(cf & rsync.CF_VARINT_FLIST_FLAGS)
        sess.xfer_flags_as_varint = negotiate
        sess.proper_seed_order = bool(cf & rsync.CF_CHKSUM_SEED_FIX)
        sess.id0_names = bool(cf & rsync.CF_ID0_NAMES)
        sess.use_safe_flist = bool(cf & rsync.CF_SAFE_FLIST) or p >= 31
    xfer = "md5" if p >= 30 else "md4"
    method = choice or "zlib"
    if negotiate:
        sums = rsync.available_checksums()
        sess.out.vstring(" ".join(sums).encode())
        if not choice:
            sess.out.vstring(" ".join(rc.available_compressions()).encode())
        sess.out.flush()
        xfer = rsync.negotiate_pick(sums, sess.inp.vstring(1024).decode())
        if not choice:
            method = rc.pick_compression(rc.available_compressions(), sess.inp.vstring(1024).decode())
    seed = sess.inp.int32()
    sess.checksum_seed = seed
    implied = not negotiate
    sess.checksums = rsync.Checksums(xfer, xfer, seed, not (implied and not sess.proper_seed_order), p,
                                     p < 30 and implied)
    return method


def connect_stock(daemon, protocol, word, extra):
    s = socket.create_connection(("127.0.0.1", daemon.port), timeout=60)
    t = rsync.SocketTransport(s, timeout=60)
    raw = rsync.RawIn(t)
    assert raw.read_line().startswith(b"@RSYNCD: ")
    t.sendv([b"@RSYNCD: %d.0 md5\n" % protocol, b"m\n"])
    assert raw.read_line() == b"@RSYNCD: OK"
    args = ["--server", "--sender", word, *extra, ".", "m/"]
    sep = b"\0" if protocol >= 30 else b"\n"
    t.sendv([sep.join(a.encode() for a in args) + sep + sep])
    opts, _ = rsync.parse_server_args(args)
    messages = []
    sess = rsync.Session(t, opts, am_server=False, am_sender=False, raw=raw,
                         on_text=lambda tag, text: messages.append(text))
    sess.messages = messages
    sess.set_protocol(protocol)
    return sess


def read_flist(sess):
    rsync.send_filter_rules(sess, [])
    sess.out.flush()
    dec = rsync_flist.FlistDecoder(sess.inp, sess.opts, sess.protocol, sess.xfer_flags_as_varint,
                             sess.checksums.file_len, sess.id0_names)
    dec.recv_entries()
    dec.recv_id_lists()
    if sess.protocol < 30:
        sess.inp.int32()
    rsync_flist.sort_file_list(dec.entries, sess.protocol)
    return {e.name.decode(): e.ndx for e in dec.entries}


def block_sums(sess, basis, blength):
    """The sum header and block sums of `basis` (a stale copy)."""
    if basis is None:
        return (0, 0, 0, 0), [], [], []
    if blength is None:
        blength = rsync_receiver.sum_sizes_sqroot(len(basis), sess.protocol, sess.checksums.xfer_len)[0]
    s2length = min(16, sess.checksums.xfer_len)
    count = (len(basis) + blength - 1) // blength
    blocks = [basis[i * blength:(i + 1) * blength] for i in range(count)]
    sum1s = rsync_delta.block_checksum1s(basis, blength)
    sum2s = [sess.checksums.strong(b)[:s2length] for b in blocks]
    return (count, blength, s2length, len(basis) % blength), list(sum1s), sum2s, blocks


def fetch(sess, reader, ndx, basis, blength):
    """Asks for one file with the block sums of `basis`; returns the rebuilt
    file, whether it matched the whole-file checksum, and the token counts."""
    head, sum1s, sum2s, blocks = block_sums(sess, basis, blength)
    sess.write_ndx_and_attrs(ndx, rsync.ITEM_TRANSFER)
    sess.write_sum_head(*head)
    parts = [struct.pack("<I", s1) + s2 for s1, s2 in zip(sum1s, sum2s)]
    sess.out.write(b"".join(parts))
    sess.out.flush()
    assert sess.inp.ndx() == ndx
    if sess.protocol >= 29:
        assert sess.inp.shortint() & rsync.ITEM_TRANSFER
    assert sess.read_sum_head() == head
    data, items = decode(reader, blocks, max_block=head[0])
    digest = sess.inp.read(sess.checksums.xfer_len)
    h = sess.checksums.file_hasher()
    h.update(data)
    return data, h.digest() == digest, sum(1 for it in items if it[0] == "blk")


# (rsync version, protocol, method or None for -z alone, extra args)
RECEIVE_CASES = [("3.5.0", 32, m, ()) for m in METHODS]
RECEIVE_CASES += [("3.5.0", 30, m, ()) for m in METHODS]
RECEIVE_CASES += [("3.5.0", 31, "zlib", ()), ("3.5.0", 32, None, ()), ("3.5.0", 31, None, ()),
                  ("3.5.0", 29, None, ()), ("3.5.0", 27, None, ()), ("3.5.0", 29, "zstd", ()),
                  ("3.5.0", 32, "zlib", ("--compress-level=1",)), ("3.5.0", 32, "zlib", ("--compress-level=9",)),
                  ("3.5.0", 32, "zstd", ("--compress-level=-5",)), ("3.5.0", 32, "zstd", ("--compress-level=19",))]
RECEIVE_CASES += [("3.2.7", 32, m, ()) for m in METHODS] + [("3.2.7", 30, "zlib", ()), ("3.2.7", 32, None, ()),
                                                           ("3.2.7", 27, None, ())]


@pytest.mark.parametrize("version,protocol,method,extra", RECEIVE_CASES,
                         ids=["%s-p%d-%s%s" % (v, p, m or "z", "".join(e)) for v, p, m, e in RECEIVE_CASES])
def test_receive_from_stock_daemon(stock_daemon_factory, module_dir, files, version, protocol, method, extra):
    binary = need(RSYNC if version == "3.5.0" else RSYNC_327, "stock rsync %s" % version)
    need_method(method or "zlib")
    daemon = stock_daemon_factory(binary, {"m": module_dir})
    if protocol >= 30:
        word = "-logDtprze.LfxCIvu"
    else:
        word = "-logDtprz"
    choice = ["--compress-choice=%s" % method] if method else []
    sess = connect_stock(daemon, protocol, word, choice + list(extra))
    got = setup_client(sess, method)
    if method is None:
        expect = "zlib" if protocol < 30 else rc.available_compressions()[0]
        assert got == expect
    sess.start_mux_in()
    if protocol >= 30:
        sess.start_mux_out()
    index = read_flist(sess)
    reader = rc.TokenReader(got, sess.inp.read, protocol)
    total_blocks = 0
    for name, (data, stale, blength) in files.items():
        if blength and blength > rc.CHUNK_SIZE and version == "3.2.7" and got == "zlib":
            continue  # rsync before 3.5.0 built on a stock zlib fails there ("deflate on token returned 0")
        for basis in ([None, stale] if stale is not None else [None]):
            rebuilt, ok, nblocks = fetch(sess, reader, index[name], basis, blength)
            assert rebuilt == data, (name, basis is not None)
            assert ok, name
            total_blocks += nblocks
            if basis is not None and name != "tiny.txt":
                assert nblocks > 0, name
    assert total_blocks > 50_000
    sess.out.ndx(rsync.NDX_DONE)
    sess.out.flush()
    assert sess.inp.ndx() == rsync.NDX_DONE
    sess.transport.close()


# ----------------------------------------------------------------------------
# Sending to a stock rsync client from a scripted daemon


def compression_args(args):
    """What a stock client asks for: (-z count, choice, level)."""
    zs, choice, level = 0, None, None
    for a in args:
        if a.startswith("--"):
            name, _, value = a[2:].partition("=")
            if name in ("compress-choice", "zc"):
                choice = value
            elif name == "new-compress":
                choice = "zlibx"
            elif name == "old-compress":
                choice = "zlib"
            elif name in ("compress-level", "zl"):
                level = int(value)
        elif a.startswith("-"):
            zs += a[1:].split("e", 1)[0].count("z")
    if zs > 1 and not choice:
        choice = "zlibx"
    return zs, choice, level


def setup_server(sess, compressing, choice):
    """compat.c setup_protocol on the server side; the compression method."""
    p = sess.protocol
    negotiate = False
    if p >= 30:
        cf = rsync.CF_SYMLINK_TIMES
        for letter, bit in (("f", rsync.CF_SAFE_FLIST), ("x", rsync.CF_AVOID_XATTR_OPTIM),
                            ("C", rsync.CF_CHKSUM_SEED_FIX), ("I", rsync.CF_INPLACE_PARTIAL_DIR),
                            ("u", rsync.CF_ID0_NAMES), ("v", rsync.CF_VARINT_FLIST_FLAGS)):
            if letter in sess.opts.client_info:
                cf |= bit
        sess.out.varint(cf)
        sess.compat_flags = cf
        negotiate = bool(cf & rsync.CF_VARINT_FLIST_FLAGS)
        sess.xfer_flags_as_varint = negotiate
        sess.proper_seed_order = bool(cf & rsync.CF_CHKSUM_SEED_FIX)
        sess.id0_names = bool(cf & rsync.CF_ID0_NAMES)
        sess.use_safe_flist = bool(cf & rsync.CF_SAFE_FLIST) or p >= 31
    xfer = "md5" if p >= 30 else "md4"
    method = (choice or "zlib") if compressing else None
    if negotiate:
        sums = rsync.available_checksums()
        sess.out.vstring(" ".join(sums).encode())
        ours = rc.available_compressions(server=True)
        if compressing and not choice:
            sess.out.vstring(" ".join(ours).encode())
        sess.out.flush()
        xfer = rsync.negotiate_pick(sums, sess.inp.vstring(1024).decode())
        if compressing and not choice:
            method = rc.pick_compression(ours, sess.inp.vstring(1024).decode(), server=True)
            assert method and method != "none"
    seed = 0x1234567
    sess.out.int32(seed)
    implied = not negotiate
    sess.checksum_seed = seed
    sess.checksums = rsync.Checksums(xfer, xfer, seed, not (implied and not sess.proper_seed_order), p,
                                     p < 30 and implied)
    return method


class ScriptedDaemon:
    """An rsync daemon on loopback that serves `files` (name -> content) as
    module m, sending each file's data through TokenWriter."""

    def __init__(self, files, dict_after=None):
        self.files = files
        self.dict_after = dict_after
        self.skip = None
        self.uncompressed = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.error = None
        self.method = None
        self.level = None
        self.protocol = None
        self.requests = []
        self.blocks_sent = 0
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        conn, _ = self.sock.accept()
        t = rsync.SocketTransport(conn, timeout=60)
        try:
            raw = rsync.RawIn(t)
            t.sendv([b"@RSYNCD: 32.0 md5\n"])
            greeting = raw.read_line()
            protocol = min(32, int(greeting.split()[1].split(b".")[0]))
            self.protocol = protocol
            raw.read_line()
            t.sendv([b"@RSYNCD: OK\n"])
            args = []
            while True:
                a = raw.read_line(eol=b"\0" if protocol >= 30 else b"\n")
                if not a:
                    break
                args.append(a.decode())
            opts, _ = rsync.parse_server_args(args)
            zs, choice, level = compression_args(args)
            for a in args:
                if a.startswith("--skip-compress="):
                    self.skip = rc.skip_compress_rules(a.partition("=")[2], daemon=True)
            sess = rsync.Session(t, opts, am_server=True, am_sender=True, raw=raw)
            sess.set_protocol(protocol)
            self.method = setup_server(sess, zs > 0 or choice is not None or level is not None, choice)
            self.level = level
            sess.start_mux_out()
            if protocol >= 30:
                sess.start_mux_in()
            rsync.recv_filter_rules(sess)
            self.send(sess)
        except Exception as e:
            self.error = e
        finally:
            t.close()

    def send(self, sess):
        p = sess.protocol
        top = rsync_flist.FileEntry(b".", stat.S_IFDIR | 0o755, 0, 1_700_000_000)
        top.flags = rsync_flist.FLAG_TOP_DIR | rsync_flist.FLAG_CONTENT_DIR
        entries = [top] + [rsync_flist.FileEntry(n.encode(), stat.S_IFREG | 0o644, len(d), 1_700_000_000)
                           for n, d in self.files.items()]
        rsync_flist.sort_file_list(entries, p)
        enc = rsync_flist.FlistEncoder(sess.out, sess.opts, p, sess.xfer_flags_as_varint, sess.checksums.file_len)
        for e in entries:
            enc.send(e, e.ndx)
        enc.end(0, sess.use_safe_flist)
        enc.send_id_lists(sess.id0_names)
        if p < 30:
            sess.out.int32(0)
        sess.out.flush()
        level = None
        if self.method is not None:
            level = rc.compression_level(self.method, self.level)
        writer = rc.TokenWriter(self.method, sess.out.write, level, p)
        if self.dict_after is not None:
            writer.DICT_AFTER = self.dict_after
        phase, max_phase = 0, (2 if p >= 29 else 1)
        while True:
            ndx, iflags, basis, xname = sess.read_ndx_and_attrs(len(entries))
            if ndx == rsync.NDX_DONE:
                phase += 1
                if phase > max_phase:
                    break
                sess.out.ndx(rsync.NDX_DONE)
                sess.out.flush()
                continue
            if not iflags & rsync.ITEM_TRANSFER:
                sess.write_ndx_and_attrs(ndx, iflags, basis, xname)
                continue
            self.requests.append(ndx)
            head = sess.read_sum_head()
            sum1s, sum2s = sess.read_sums(head[0], head[2]) if head[0] else ([], [])
            sess.write_ndx_and_attrs(ndx, iflags, basis, xname)
            sess.write_sum_head(*head)
            name = entries[ndx].name
            compress = not (self.skip and rc.skip_compress(name, self.skip))
            if not compress:
                self.uncompressed.append(name.decode())
            self.send_file(sess, writer, self.files[name.decode()], head, sum1s, sum2s, compress)
            sess.out.flush()
        sess.out.ndx(rsync.NDX_DONE)
        sess.out.flush()
        rsync_sender.write_stats(sess)
        rsync_sender.read_final_goodbye(sess, len(entries))
        sess.out.flush()

    def send_file(self, sess, writer, data, head, sum1s, sum2s, compress):
        count, blength, s2length, remainder = head
        writer.begin_file(compress)
        if count == 0 or not data:
            writer.literal(data)
        else:
            table = rsync_delta.BlockTable(sum1s, sum2s, blength, remainder, s2length)
            mv = memoryview(data)
            for off, n, idx in rsync_delta.match(table, data, len(data), sess.checksums.strong):
                writer.literal(mv[off:off + n])
                if idx >= 0:
                    start = off + n
                    writer.block(idx, mv[start:start + table.block_len(idx)])
                    self.blocks_sent += 1
        writer.end_file()
        h = sess.checksums.file_hasher()
        h.update(data)
        sess.out.write(h.digest())


# (rsync version, protocol, client compression args, extra client args, DICT_AFTER)
SEND_CASES = [(v, 32, ("--zc=%s" % m,), (), None) for v in ("3.5.0", "3.2.7") for m in METHODS]
SEND_CASES += [(v, 32, ("-z",), (), None) for v in ("3.5.0", "3.2.7")]
SEND_CASES += [(v, p, ("-z",), (), None) for v in ("3.5.0", "3.2.7") for p in (27, 29)]
SEND_CASES += [(v, p, ("--zc=zlib",), ("--block-size=100000",), d)
               for v in ("3.5.0", "3.2.7") for p in (30, 31) for d in (0, 1 << 40)]
SEND_CASES += [("3.5.0", 27, ("-z",), ("--block-size=100000",), d) for d in (0, 1 << 40)]
SEND_CASES += [("3.5.0", 32, ("--zc=zlib",), (), d) for d in (0, 1 << 40)]
SEND_CASES += [("3.5.0", 32, ("--zc=zlib", "--zl=1"), (), None), ("3.5.0", 32, ("--zc=zlib", "--zl=9"), (), None),
               ("3.5.0", 32, ("--zc=zstd", "--zl=-7"), (), None), ("3.5.0", 32, ("--zc=zstd", "--zl=19"), (), None),
               ("3.5.0", 30, ("--zc=zstd",), (), None), ("3.5.0", 30, ("--zc=lz4",), (), None),
               ("3.5.0", 30, ("--zc=zlibx",), (), None), ("3.5.0", 32, ("-zz",), (), None),
               ("3.5.0", 32, ("--zc=lz4",), ("--block-size=16",), None),
               ("3.5.0", 32, ("--zc=zlib",), ("--skip-compress=jpg/txt",), None)]


@pytest.mark.parametrize("version,protocol,zargs,extra,dict_after", SEND_CASES,
                         ids=["%s-p%d-%s%s-%s" % (v, p, "".join(z), "".join(e), d) for v, p, z, e, d in SEND_CASES])
def test_send_to_stock_client(tmp_path, files, version, protocol, zargs, extra, dict_after):
    binary = need(RSYNC if version == "3.5.0" else RSYNC_327, "stock rsync %s" % version)
    method = compression_args(list(zargs))[1] or ("zstd" if protocol >= 30 else "zlib")
    need_method(method)
    content = {n: d for n, (d, _, _) in files.items()}
    daemon = ScriptedDaemon(content, dict_after=dict_after)
    dst = tmp_path / "dst"
    dst.mkdir()
    for name, (_, stale, _) in files.items():
        if stale is not None:
            (dst / name).write_bytes(stale)
    cmd = [binary, "-a", *zargs, *extra, "rsync://127.0.0.1:%d/m/" % daemon.port, str(dst) + "/"]
    if protocol != 32:
        cmd.insert(2, "--protocol=%d" % protocol)
    p = run(cmd, check=False, timeout=300)
    daemon.thread.join(60)
    assert p.returncode == 0, (p.returncode, p.stderr.decode(errors="replace"), daemon.error)
    assert daemon.error is None, daemon.error
    assert daemon.method == method and daemon.protocol == protocol
    assert b"failed verification" not in p.stderr
    assert len(daemon.requests) == len(set(daemon.requests)) == len(files), "a file was sent twice"
    assert daemon.blocks_sent >= 30
    for name, data in content.items():
        assert (dst / name).read_bytes() == data, name
    if any(e.startswith("--skip-compress") for e in extra):
        assert sorted(daemon.uncompressed) == ["edited.txt", "photo.jpg", "text.txt", "tiny.txt"]
