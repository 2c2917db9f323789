"""Unit tests of the wire layer: encodings, the file list, ordering, and the
decoder's refusal of malformed input. Everything is fed as bytes."""

import errno
import functools
import os
import random
import stat
import struct

import pytest

import rsync
import rsync_flist


def reader(data, protocol=32, chunk=7):
    return rsync.In(rsync.RawIn(rsync.BytesTransport(data, chunk=chunk)), protocol)


def writer(protocol=32):
    t = rsync.BytesTransport()
    return rsync.Out(t, protocol), t


@pytest.mark.parametrize("value,encoded", [
    (0, "00"), (1, "01"), (0x7f, "7f"), (0x80, "8080"), (0x3fff, "bfff"), (0x4000, "c00040"),
    (-1, "f0ffffffff"), (0x12345678, "f078563412"),
])
def test_varint_vectors(value, encoded):
    assert rsync.enc_varint(value).hex() == encoded
    assert reader(bytes.fromhex(encoded)).varint() == value


def test_varlong_vector_from_rsync():
    assert rsync.enc_varlong(100000, 3).hex() == "01a086"


def test_varlong_roundtrip():
    rnd = random.Random(1)
    for min_bytes in (3, 4):
        for _ in range(2000):
            v = rnd.randrange(0, 1 << rnd.choice((8, 16, 31, 40, 62)))
            assert reader(rsync.enc_varlong(v, min_bytes)).varlong(min_bytes) == v


def test_buffer_and_stream_integer_decoders_agree():
    """varint_at/varlong_at (parsing from bytes at hand) and In.varint/
    In.varlong (reading from a stream) give the same value, length and
    errors on the same bytes."""
    rnd = random.Random(2)
    firsts = [0, 0x7f, 0x80, 0xbf, 0xc0, 0xdf, 0xe0, 0xef, 0xf0, 0xf7, 0xf8, 0xfb, 0xfc, 0xfd, 0xfe, 0xff]

    def outcome(fn):
        try:
            return fn()
        except rsync.ProtocolError:
            return "error"

    for _ in range(3000):
        data = bytes([rnd.choice(firsts + [rnd.randrange(256)])]) + rnd.randbytes(10)
        for min_bytes in (None, 3, 4):
            r = rsync.In(rsync.RawIn(rsync.BytesTransport(data)), 32)
            if min_bytes is None:
                stream = outcome(lambda: (r.varint(), r.src.pos))
                buffered = outcome(lambda: rsync_flist.varint_at(data, 0))
            else:
                stream = outcome(lambda: (r.varlong(min_bytes), r.src.pos))
                buffered = outcome(lambda: rsync_flist.varlong_at(data, 0, min_bytes))
            assert stream == buffered, (data.hex(), min_bytes)
    with pytest.raises(rsync_flist._Short):
        rsync_flist.varlong_at(b"\xff\x01", 0, 3)
    with pytest.raises(rsync_flist._Short):
        rsync_flist.varint_at(b"\xc0\x01", 0)


def test_varint_and_varlong_roundtrip_across_widths():
    """Every encoded width (the one- and two-byte forms are made apart
    from the general loop) decodes back, from a stream and from bytes."""
    rnd = random.Random(4)
    for _ in range(4000):
        v = rnd.randrange(-(1 << 31), 1 << 31) if rnd.random() < 0.2 else \
            rnd.randrange(0, 1 << rnd.choice((7, 8, 14, 15, 16, 24, 31)))
        enc = rsync.enc_varint(v)
        assert reader(enc).varint() == v
        assert rsync_flist.varint_at(enc, 0) == (v, len(enc))
        for min_bytes in (3, 4):
            w = rnd.randrange(0, 1 << rnd.choice((8, 16, 23, 24, 31, 32, 48, 62)))
            enc = rsync.enc_varlong(w, min_bytes)
            assert reader(enc).varlong(min_bytes) == w
            assert rsync_flist.varlong_at(enc, 0, min_bytes) == (w, len(enc))


def test_varint_overflow_is_an_error():
    with pytest.raises(rsync.ProtocolError):
        reader(b"\xfe" + b"\0" * 8).varint()
    with pytest.raises(rsync.ProtocolError):
        reader(b"\xff" * 12).varlong(4)


def test_ndx_diff_encoding_roundtrip():
    seq = [0, 1, 2, 300, 299, 0, 40000, 5, rsync.NDX_DONE, -2, -101, -102, -5000, 7, 1 << 30, 3]
    out, t = writer()
    for n in seq:
        out.ndx(n)
    out.flush()
    assert t.out[:3] == b"\x01\x01\x01"
    r = reader(t.out)
    assert [r.ndx() for _ in seq] == seq


def test_longint_and_protocol29_forms():
    out, t = writer(29)
    out.varlong30(1 << 40, 3)
    out.varint30(5)
    out.ndx(7)
    out.flush()
    assert t.out == b"\xff\xff\xff\xff" + struct.pack("<q", 1 << 40) + struct.pack("<i", 5) + struct.pack("<i", 7)


def test_vstring_bounds():
    assert reader(rsync.enc_vstring(b"x" * 300)).vstring() == b"x" * 300
    with pytest.raises(rsync.ProtocolError):
        reader(rsync.enc_vstring(b"x" * 300)).vstring(limit=100)


def test_demux_routes_messages():
    got = []

    def frame(tag, payload):
        return struct.pack("<I", ((rsync.MPLEX_BASE + tag) << 24) | len(payload)) + payload
    data = frame(0, b"abc") + frame(rsync.MSG_INFO, b"hello\n") + frame(0, b"") + frame(0, b"defg")
    d = rsync.Demux(rsync.RawIn(rsync.BytesTransport(data, chunk=3)), lambda t, p: got.append((t, p)))
    assert d.read(5) == b"abcde" and d.read(2) == b"fg"
    assert got == [(rsync.MSG_INFO, b"hello\n")]
    with pytest.raises(rsync.ConnectionClosed):
        d.read(1)


def test_mux_frames_and_messages_keep_order():
    out, t = writer()
    out.multiplexed = True
    out.write(b"12")
    out.msg(rsync.MSG_INFO, b"hi")
    out.write_data(b"H", b"x" * 10000)
    out.write_parts([b"a", b"b" * 5000])
    out.flush()
    got = []
    d = rsync.Demux(rsync.RawIn(rsync.BytesTransport(bytes(t.out))), lambda tag, p: got.append(b"<%s>" % p))
    data = d.read(2)
    assert data == b"12" and got == []
    assert d.read(1) == b"H" and got == [b"<hi>"]
    assert d.read(10000 + 5001) == b"x" * 10000 + b"a" + b"b" * 5000


def make_opts(**kw):
    o = rsync.Options()
    for k in ("recurse", "links", "perms", "times", "owner", "group", "devices", "specials"):
        setattr(o, k, True)
    for k, v in kw.items():
        setattr(o, k, v)
    return o


def sample_entries():
    def e(name, mode, size=0, mtime=1_700_000_000, nsec=0, **kw):
        x = rsync_flist.FileEntry(name, mode, size, mtime, nsec)
        for k, v in kw.items():
            setattr(x, k, v)
        return x
    es = [
        e(b".", stat.S_IFDIR | 0o755, flags=rsync_flist.FLAG_TOP_DIR | rsync_flist.FLAG_CONTENT_DIR),
        e(b"a", stat.S_IFREG | 0o644, 5, nsec=123456789, uid=1000, gid=1000),
        e(b"b", stat.S_IFREG | 0o644, 1 << 33, uid=1000, gid=100),
        e(b"d", stat.S_IFDIR | 0o700, flags=rsync_flist.FLAG_CONTENT_DIR),
        e(b"d/" + b"n" * 300, stat.S_IFREG | 0o600, 7, mtime=5),
        e(b"d/link", stat.S_IFLNK | 0o777, 3, link=b"../a"),
        e(b"dev", stat.S_IFCHR | 0o600, rdev_major=8, rdev_minor=300),
        e(b"dev2", stat.S_IFBLK | 0o600, rdev_major=8, rdev_minor=1),
        e(b"fifo", stat.S_IFIFO | 0o644),
        e(b"h1", stat.S_IFREG | 0o644, 9, hl_dev=1, hl_ino=77),
        e(b"h2", stat.S_IFREG | 0o644, 9, hl_dev=1, hl_ino=77),
    ]
    return es


def test_write_all_vectored_survives_partial_writes():
    rng = random.Random(7)
    bufs = [bytes(rng.randrange(40)) for _ in range(1500)]
    bufs[3] = bytearray(b"mutable")
    bufs[9] = memoryview(b"view")
    written = []

    def short_writev(views):
        assert 0 < len(views) <= 512 and all(len(v) for v in views)
        data = b"".join(views)[:rng.randrange(1, 100)]
        written.append(data)
        return len(data)

    rsync.write_all_vectored(short_writev, bufs)
    assert b"".join(written) == b"".join(bytes(b) for b in bufs)


@pytest.mark.parametrize("chunk,checksum", [(7, False), (1 << 16, False), (1 << 16, True)])
@pytest.mark.parametrize("protocol,varint_flags", [(p, False) for p in range(27, 33)] + [(30, True), (32, True)])
def test_flist_roundtrip(protocol, varint_flags, chunk, checksum):
    opts = make_opts(hard_links=True, checksum=checksum)
    entries = sample_entries()
    for i, e in enumerate(entries):
        if stat.S_ISREG(e.mode):
            e.sum = bytes([i]) * 16
    if protocol < 28:
        for i, e in enumerate(entries):
            if stat.S_ISREG(e.mode) and e.hl_dev == -1:
                e.hl_dev, e.hl_ino = 2, i
    out, t = writer(protocol)
    enc = rsync_flist.FlistEncoder(out, opts, protocol, varint_flags, 16)
    for i, e in enumerate(entries):
        enc.send(e, i)
    enc.end(0, True)
    out.int32(-12345)
    out.flush()
    inp = reader(bytes(t.out), protocol, chunk)
    dec = rsync_flist.FlistDecoder(inp, opts, protocol, varint_flags, 16)
    got = dec.recv_entries()
    assert inp.int32() == -12345
    assert [g.name for g in got] == [e.name for e in entries]
    for g, e in zip(got, entries):
        assert (g.mode, g.mtime) == (e.mode, e.mtime)
        if stat.S_ISREG(e.mode):
            assert g.size == e.size
        assert g.nsec == (e.nsec if protocol >= 31 else 0)
        assert (g.uid, g.gid) == (e.uid, e.gid)
        if stat.S_ISCHR(e.mode) or stat.S_ISBLK(e.mode):
            assert (g.rdev_major, g.rdev_minor) == (e.rdev_major, e.rdev_minor)
        if stat.S_ISLNK(e.mode):
            assert g.link == e.link
        follower = protocol >= 30 and g.hl_first >= 0
        assert g.sum == (e.sum if checksum and stat.S_ISREG(e.mode) and not follower else None)
        assert g.flags & rsync_flist.FLAG_TOP_DIR == e.flags & rsync_flist.FLAG_TOP_DIR
    h1, h2 = got[-2], got[-1]
    if protocol >= 30:
        assert h2.hl_first == len(entries) - 2
    else:
        assert (h1.hl_dev, h1.hl_ino) == (h2.hl_dev, h2.hl_ino) == (1, 77)


def f_name_cmp(a, b, protocol):
    """A transliteration of flist.c's f_name_cmp state machine, over
    (name, is_dir) pairs, to check sort_key against."""
    t_path = "PATH" if protocol >= 29 else "ITEM"

    def start(name, is_dir):
        d, _, base = name.rpartition(b"/")
        return {"dir": d, "base": base, "is_dir": is_dir}

    def gen(f):
        if f["dir"]:
            for c in f["dir"]:
                yield c, t_path
            yield ord("/"), t_path
        typ = t_path if f["is_dir"] else "ITEM"
        if typ == "PATH" and f["base"] == b".":
            yield None, "ITEM"
            return
        for c in f["base"]:
            yield c, typ
        if typ == "PATH":
            yield ord("/"), "PATH"
        yield None, "ITEM"

    # Comparing the emitted streams the way the C loop does: at each step,
    # type mismatches decide (ITEM before PATH), else bytes, NUL ending.
    ga, gb = list(gen(start(*a))), list(gen(start(*b)))
    for (ca, ta), (cb, tb) in zip(ga, gb):
        if ta != tb:
            return 1 if ta == "PATH" else -1
        va, vb = (ca or 0), (cb or 0)
        if va != vb:
            return va - vb
        if ca is None and cb is None:
            return 0
    return len(ga) - len(gb)


@pytest.mark.parametrize("protocol", [28, 29, 32])
def test_sort_key_matches_f_name_cmp(protocol):
    rnd = random.Random(protocol)
    alphabet = [b"a", b"b", b"a.b", b"a-", b"a0", b"z", b"\xc3\xa9", b"B"]
    items = {(b".", True)}
    for _ in range(300):
        depth = rnd.randrange(1, 4)
        name = b"/".join(rnd.choice(alphabet) for _ in range(depth))
        items.add((name, rnd.random() < 0.4))
    names = {}
    for n, d in items:
        names.setdefault(n, d)
    items = list(names.items())
    by_key = sorted(items, key=lambda x: rsync_flist.sort_key(x[0], x[1], protocol))
    by_cmp = sorted(items, key=functools.cmp_to_key(lambda a, b: f_name_cmp(a, b, protocol)))
    assert by_key == by_cmp
    entries = [rsync_flist.FileEntry(n, stat.S_IFDIR | 0o755 if d else stat.S_IFREG | 0o644) for n, d in items]
    rnd.shuffle(entries)
    rsync_flist.sort_file_list(entries, protocol)
    assert [(e.name, stat.S_ISDIR(e.mode)) for e in entries] == by_cmp
    assert [e.ndx for e in entries] == list(range(len(entries)))


@pytest.mark.parametrize("data,err", [
    (b"\x01\x05abc", rsync.ConnectionClosed),
    (b"\x00", None),
    (bytes([rsync.XMIT_SAME_NAME]) + b"\x05\x01x", rsync.ProtocolError),
    (bytes([0x42]) + b"\xff\xff\xff\x7f", rsync.ProtocolError),
])
def test_flist_decoder_refuses_garbage(data, err):
    opts = make_opts()
    dec = rsync_flist.FlistDecoder(reader(data, 29), opts, 29, False, 16)
    if err is None:
        assert dec.recv_entry() is None
        return
    with pytest.raises(err):
        dec.recv_entries()


@pytest.mark.parametrize("name", [b"../etc/passwd", b"a/../../x", b"/etc/passwd", b"a/..", b"a\0b"])
def test_flist_decoder_refuses_unsafe_names(name):
    opts = make_opts()
    out, t = writer(32)
    enc = rsync_flist.FlistEncoder(out, opts, 32, True, 16)
    enc.send(rsync_flist.FileEntry(name, stat.S_IFREG | 0o644, 1), 0)
    enc.flush()
    out.flush()
    dec = rsync_flist.FlistDecoder(reader(bytes(t.out)), opts, 32, True, 16)
    with pytest.raises(rsync.RsyncError):
        dec.recv_entry()


def test_flist_decoder_bad_mode_and_hlink():
    opts = make_opts(hard_links=True)
    out, t = writer(32)
    enc = rsync_flist.FlistEncoder(out, opts, 32, True, 16)
    enc.send(rsync_flist.FileEntry(b"x", 0o170644, 1), 0)
    enc.flush()
    out.flush()
    dec = rsync_flist.FlistDecoder(reader(bytes(t.out)), opts, 32, True, 16)
    with pytest.raises(rsync.ProtocolError, match="invalid mode"):
        dec.recv_entry()
    data = rsync.enc_varint(rsync.XMIT_HLINKED) + b"\x01y" + rsync.enc_varint(5)
    dec = rsync_flist.FlistDecoder(reader(data), opts, 32, True, 16)
    with pytest.raises(rsync.ProtocolError, match="hard-link reference"):
        dec.recv_entry()


def test_parse_server_args():
    o, paths = rsync.parse_server_args(
        "--server --sender -vvlogDtprcHe.iLsfxCIvu --numeric-ids --checksum-choice=xxh3 "
        "--timeout=30 -B2048 . m/a m/b".split())
    assert o.server and o.sender and o.verbose == 2 and o.links and o.owner and o.group
    assert o.devices and o.specials and o.times and o.perms and o.recurse and o.checksum
    assert o.hard_links and o.numeric_ids and o.checksum_choice == "xxh3" and o.timeout == 30
    assert o.block_size == 2048 and o.client_info == ".iLsfxCIvu" and not o.refused
    assert paths == [".", "m/a", "m/b"]
    o, _ = rsync.parse_server_args(["--server", "--sender", "-lAzK", "--files-from=-", "--frob", "."])
    assert o.refused == ["-A (--acls)", "-K (--keep-dirlinks)", "--files-from", "--frob"]
    assert o.compress
    o, _ = rsync.parse_server_args("--server --max-size=716801 --min-size 1k-1 --bwlimit=2m . x".split())
    assert (o.max_size, o.min_size, o.bwlimit) == (716801, 1023, 2 << 20)
    with pytest.raises(rsync.RsyncError, match=r"--max-size=1Q is invalid") as e:
        rsync.parse_server_args("--server --max-size=1Q . x".split())
    assert e.value.code == rsync.RERR_SYNTAX
    for huge in ("9" * 400, "99999999999999999999999", "9" * 30 + "p"):
        with pytest.raises(rsync.RsyncError, match=r"is too large") as e:
            rsync.parse_server_args(("--server --min-size=%s . x" % huge).split())
        assert e.value.code == rsync.RERR_SYNTAX


def test_checksums_follow_rsync_seed_rules():
    import hashlib
    data = os.urandom(1000)
    seed = 0x1234567
    sb = struct.pack("<i", seed)
    c = rsync.Checksums("md5", "md5", seed, True, 31)
    assert c.strong(data) == hashlib.md5(sb + data).digest()
    c = rsync.Checksums("md5", "md5", seed, False, 30)
    assert c.strong(data) == hashlib.md5(data + sb).digest()
    c = rsync.Checksums("md4", "md4", seed, True, 27, legacy_md4=True)
    import rsync_md4
    assert c.strong(data) == rsync_md4.md4(data + sb).digest()
    h = c.file_hasher()
    h.update(data)
    assert h.digest() == rsync_md4.md4(sb + data).digest()
    import xxhash
    c = rsync.Checksums("xxh128", "xxh128", -5, True, 32)
    v = xxhash.xxh3_128_intdigest(data, (1 << 64) - 5)
    assert c.strong(data) == struct.pack("<QQ", v & ((1 << 64) - 1), v >> 64)


@pytest.mark.parametrize("chunk", [7, 1 << 16])
def test_flist_check_sees_every_entry_and_its_errors_propagate(chunk):
    """The list check (the client's refusal of unrequested names) runs on
    every entry, and whatever it raises, even an IndexError that the parser
    itself takes to mean "more bytes needed", ends the list there."""
    opts = make_opts(hard_links=True)
    out, t = writer(31)
    enc = rsync_flist.FlistEncoder(out, opts, 31, True, 16)
    entries = sample_entries()
    for i, e in enumerate(entries):
        enc.send(e, i)
    enc.end(0, True)
    out.flush()
    seen = []
    dec = rsync_flist.FlistDecoder(reader(bytes(t.out), 31, chunk), opts, 31, True, 16)
    dec.recv_entries(lambda e: seen.append(e.name))
    assert seen == [e.name for e in entries]

    def refuse(e):
        if e.name == b"d/link":
            raise IndexError("refused")
    dec = rsync_flist.FlistDecoder(reader(bytes(t.out), 31, chunk), opts, 31, True, 16)
    with pytest.raises(IndexError, match="refused"):
        dec.recv_entries(refuse)


def test_setup_installs_every_module():
    """pip install (and so the container image) gets every module the programs import."""
    import ast
    here = os.path.dirname(os.path.abspath(__file__))
    tree = ast.parse(open(os.path.join(here, "setup.py")).read())
    listed = next(ast.literal_eval(kw.value) for node in ast.walk(tree) if isinstance(node, ast.Call)
                  for kw in node.keywords if kw.arg == "py_modules")
    modules = {name[:-3] for name in os.listdir(here) if name.endswith(".py")
               and not name.startswith("test_") and name not in ("setup.py", "conftest.py")}
    assert set(listed) == modules


# --- the file list's C decoder ---------------------------------------------------------

def _random_entries(rng, n, odd=True):
    """Entries as a sender lists them: shared name prefixes, long names,
    symlinks, sizes and times over the whole range; with `odd`, also hard
    links and devices, which the C decoder leaves to Python."""
    names, entries = set(), []
    while len(entries) < n:
        depth = rng.randrange(3)
        parts = [rng.choice([b"d", b"dir", b"x" * rng.randrange(1, 200)]) + b"%d" % rng.randrange(4)
                 for _ in range(depth)]
        parts.append(rng.choice([b"f", b"file.", b"n" * 300]) + b"%d" % rng.randrange(1000))
        name = b"/".join(parts)
        if name in names:
            continue
        names.add(name)
        kind = rng.random()
        if kind < 0.15:
            mode = stat.S_IFDIR | rng.choice([0o755, 0o700])
        elif kind < 0.3:
            mode = stat.S_IFLNK | 0o777
        elif odd and kind < 0.33:
            mode = rng.choice([stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO]) | 0o600
        else:
            mode = stat.S_IFREG | rng.choice([0o644, 0o600, 0o755])
        e = rsync_flist.FileEntry(name, mode, rng.choice([0, 7, rng.randrange(1 << 20), rng.randrange(1 << 62)]),
                                  rng.choice([1_700_000_000, rng.randrange(-(1 << 40), 1 << 40)]),
                                  rng.choice([0, rng.randrange(10 ** 9)]),
                                  rng.choice([0, 1000, 1 << 31]), rng.choice([0, 100, 70000]))
        if stat.S_ISLNK(mode):
            e.link = rng.choice([b"../a", b"t" * rng.randrange(1, 1000)])
        if stat.S_ISDIR(mode):
            e.flags = rng.choice([rsync_flist.FLAG_CONTENT_DIR, 0,
                                  rsync_flist.FLAG_CONTENT_DIR | rsync_flist.FLAG_TOP_DIR])
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            e.rdev_major, e.rdev_minor = rng.randrange(300), rng.randrange(1 << 20)
        if stat.S_ISREG(mode):
            e.sum = bytes(rng.randrange(256) for _ in range(16))
            if odd and rng.random() < 0.05:
                e.hl_dev, e.hl_ino = 1, rng.randrange(3)
        entries.append(e)
    rsync_flist.sort_file_list(entries, 32)
    return entries


def _encode(entries, opts, protocol, varint_flags, io_error=0):
    out, t = writer(protocol)
    enc = rsync_flist.FlistEncoder(out, opts, protocol, varint_flags, 16)
    for i, e in enumerate(entries):
        enc.send(e, i)
    enc.end(io_error, True)
    out.int32(-12345)
    out.flush()
    return bytes(t.out)


_ENTRY_FIELDS = [f for f in rsync_flist.FileEntry.__slots__ if f not in ("src", "ndx", "sent")]


def _decode(data, opts, protocol, varint_flags, use_c, chunk=1 << 16):
    """What a decoder made of `data`: each entry's fields, its state after,
    the error it stopped with, and how many entries the C decoder gave."""
    inp = reader(data, protocol, chunk)
    dec = rsync_flist.FlistDecoder(inp, opts, protocol, varint_flags, 16)
    from_c = []
    if use_c:
        assert dec.c_decoder is not None
        real = rsync_flist._fl_decode

        def counting(*args):
            n = real(*args)
            from_c.append(n)
            return n
        rsync_flist._fl_decode = counting
    else:
        dec.c_decoder = None
    try:
        dec.recv_entries()
        error = inp.int32()
    except (rsync.RsyncError, ValueError) as exc:
        error = (type(exc), str(exc))
    finally:
        if use_c:
            rsync_flist._fl_decode = real
    fields = [tuple(getattr(e, f) for f in _ENTRY_FIELDS) for e in dec.entries]
    state = (dec.lastname, dec.modtime, dec.mode, dec.uid, dec.gid, dec.io_error, dec.ended)
    return fields, state, error, sum(from_c)


@pytest.mark.parametrize("protocol,varint_flags", [(30, False), (31, False), (31, True), (32, True)])
@pytest.mark.parametrize("checksum,owner,links,odd", [
    (False, True, True, False), (True, True, True, True), (False, False, False, True), (True, False, True, False)])
def test_flist_c_decoder_agrees_with_python(clib, protocol, varint_flags, checksum, owner, links, odd):
    rng = random.Random(hash((protocol, varint_flags, checksum, owner, links, odd)) & 0xFFFF)
    opts = make_opts(checksum=checksum, owner=owner, group=owner, links=links, hard_links=True)
    entries = _random_entries(rng, 3000, odd)
    data = _encode(entries, opts, protocol, varint_flags, io_error=rng.choice([0, 5]))
    for chunk in (1 << 16, 997):
        c = _decode(data, opts, protocol, varint_flags, True, chunk)
        py = _decode(data, opts, protocol, varint_flags, False, chunk)
        assert c[:3] == py[:3]
        assert c[2] == -12345 and len(c[0]) == len(entries)
        if chunk > 1000:
            assert c[3] > len(entries) * (0.98 if not odd else 0.5)


@pytest.mark.parametrize("protocol,varint_flags", [(30, False), (31, False), (31, True), (32, True)])
@pytest.mark.parametrize("checksum,owner,links,odd", [
    (False, True, True, False), (True, True, True, True), (False, False, False, True), (True, False, True, False)])
def test_flist_c_encoder_writes_what_python_writes(clib, protocol, varint_flags, checksum, owner, links, odd):
    rng = random.Random(hash((protocol, varint_flags, checksum, owner, links, odd, "enc")) & 0xFFFF)
    opts = make_opts(checksum=checksum, owner=owner, group=owner, links=links, hard_links=True)
    entries = _random_entries(rng, 3000, odd)
    for e in entries:
        e.user, e.group = b"u%d" % e.uid, None
        if e.sum is not None and rng.random() < 0.1:
            e.sum = None
        if stat.S_ISDIR(e.mode) and rng.random() < 0.2:
            e.flags = rsync_flist.FLAG_IMPLIED_DIR
    results, from_c = [], []
    real = rsync_flist._fl_encode

    def counting(*args):
        n = real(*args)
        from_c.append(n)
        return n
    for use_c in (True, False):
        out, t = writer(protocol)
        enc = rsync_flist.FlistEncoder(out, opts, protocol, varint_flags, 16)
        if use_c:
            assert enc.c_encoder is not None
            rsync_flist._fl_encode = counting
            try:
                enc.send_all(entries)
            finally:
                rsync_flist._fl_encode = real
        else:
            enc.c_encoder = None
            for i, e in enumerate(entries):
                enc.send(e, i)
        enc.end(0, True)
        enc.send_id_lists(False)
        out.flush()
        results.append((bytes(t.out), enc.users, enc.groups, enc.total_size, enc.hlinks,
                        (enc.lastname, enc.modtime, enc.mode, enc.uid, enc.gid)))
    assert results[0] == results[1]
    assert sum(from_c) > len(entries) * (0.98 if not odd else 0.5)


def test_flist_c_decoder_agrees_on_damaged_lists(clib):
    """Every byte of a list flipped or cut short somewhere: both decoders
    keep the same entries and stop with the same error."""
    rng = random.Random(30)
    opts = make_opts(checksum=True, hard_links=True)
    data = _encode(_random_entries(rng, 200), opts, 32, True)
    damaged = [data[:rng.randrange(len(data))] for _ in range(100)]
    for _ in range(400):
        b = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            b[rng.randrange(len(b))] = rng.choice([0, 0x80, 0xFF, rng.randrange(256)])
        damaged.append(bytes(b))
    for d in damaged:
        assert _decode(d, opts, 32, True, True)[:3] == _decode(d, opts, 32, True, False)[:3]


def test_flist_c_decoder_refuses_huge_name_lengths(clib):
    """A name length near 2**31 after a shared prefix is refused, not
    added up past the int's range."""
    opts = make_opts()
    first = _encode([rsync_flist.FileEntry(b"a", 0o100644, 1, 1, 0, 0, 0)], opts, 32, True)[:-6]
    bad = rsync.enc_varint(rsync.XMIT_SAME_NAME | rsync.XMIT_LONG_NAME) + b"\x01" + \
        rsync.enc_varint(0x7FFFFFFF) + b"x" * 50
    c = _decode(first + bad, opts, 32, True, True)
    assert c[:3] == _decode(first + bad, opts, 32, True, False)[:3]
    assert c[2][0] is rsync.ProtocolError and "overflow" in c[2][1] and len(c[0]) == 1


def test_flist_c_decoder_leaves_inline_names_to_python(clib):
    """An entry carrying its user's name (as stock rsync sends with
    incremental recursion) is parsed in Python, the rest in C."""
    opts = make_opts()
    head = rsync.enc_varint(rsync.XMIT_USER_NAME_FOLLOWS | rsync.XMIT_SAME_GID) + b"\x01a" + \
        rsync.enc_varlong(5, 3) + rsync.enc_varlong(1_700_000_000, 4) + struct.pack("<I", 0o100644) + \
        rsync.enc_varint(1000) + b"\x05alice"
    rest = _encode([rsync_flist.FileEntry(b"b", 0o100600, 9, 1_700_000_001, 0, 1000, 0)], opts, 32, True)
    fields, state, error, from_c = _decode(head + rest, opts, 32, True, True)
    assert error == -12345 and from_c == 1
    assert [f[:9] for f in fields] == [(b"a", 0o100644, 5, 1_700_000_000, 0, 1000, 0, b"alice", None),
                                       (b"b", 0o100600, 9, 1_700_000_001, 0, 1000, 0, None, None)]


def test_c_lstat_agrees_with_python(clib, tmp_path):
    import rsync_receiver
    (tmp_path / "file").write_bytes(b"x" * 100)
    os.utime(tmp_path / "file", ns=(5, 1_700_000_000_123_456_789))
    os.symlink("/etc/passwd", tmp_path / "out-link")
    os.symlink("nowhere", tmp_path / "dangling")
    (tmp_path / "sub").mkdir()
    os.mkfifo(tmp_path / "fifo")
    leaves = [b"file", b"out-link", b"dangling", b"sub", b"fifo", b"missing", b"file"]
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        c = rsync_flist.CLstat()(fd, leaves)
        py = rsync_receiver.StatPrefetch._lstat(fd, leaves)
    finally:
        os.close(fd)
    assert [err for err, _ in c] == [err for err, _ in py] == [0, 0, 0, 0, 0, 2, 0]
    assert [st for err, st in c if not err] == [st for err, st in py if not err]
    st = os.lstat(tmp_path / "out-link")
    assert c[1][1] == (st.st_mode, st.st_size, st.st_mtime_ns, st.st_uid, st.st_gid)
    assert c[0][1][1:3] == (100, 1_700_000_000_123_456_789)


@pytest.mark.parametrize("use_c", [True, False])
def test_stat_prefetch(clib, tmp_path, use_c):
    """What the generator learns of the destination ahead: each listed
    regular file's state, None where it or its directory is missing."""
    import rsync_receiver
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f1").write_bytes(b"1")
    (tmp_path / "a" / "f2").write_bytes(b"22")
    (tmp_path / "notdir").write_bytes(b"")
    (tmp_path / "top").write_bytes(b"333")
    names = [b"top", b"a", b"a/f1", b"a/gone", b"a/f2", b"nodir/f", b"nodir/g", b"notdir/f"] + \
        [b"a/many%d" % i for i in range(5000)]
    entries = [rsync_flist.FileEntry(n, (stat.S_IFDIR if n == b"a" else stat.S_IFREG) | 0o644) for n in names]
    pre = rsync_receiver.StatPrefetch(os.open(tmp_path, os.O_RDONLY))
    if not use_c:
        pre.lstat = pre._lstat
    assert isinstance(pre.lstat, rsync_flist.CLstat) == use_c
    try:
        pre(entries[:3])
        pre(entries)
        for name in (b"top", b"a/f1", b"a/f2"):
            st = os.lstat(tmp_path / name.decode())
            assert pre.stats[name] == (st.st_mode, st.st_size, st.st_mtime_ns, st.st_uid, st.st_gid)
        assert b"a" not in pre.stats
        assert all(pre.stats[n] is None for n in names[5:] + [b"a/gone"])
        assert len(pre.stats) == len(names) - 1
    finally:
        pre.close()


# --- the receiver's writer thread ------------------------------------------------------

def _writer(clib):
    import rsync_receiver
    lib = rsync_receiver._c_writer()
    assert lib is not None
    return rsync_receiver.Writer(lib)


def test_writer_puts_files_in_place(clib, tmp_path):
    w = _writer(clib)
    d = tmp_path / "d"
    d.mkdir()
    (d / ".f1.000000").write_bytes(b"someone else's")
    fd = os.open(d, os.O_RDONLY)
    try:
        big = os.urandom(3 << 20)
        assert w.submit(1, fd, b".f1.000000", b"f1", b"one", -1, -1, 0o640, (1_700_000_000, 5)) == 0
        assert w.submit(2, fd, b".f2.000000", b"f2", b"", -1, -1, 0o600, None) == 0
        for i in range(20):  # more than the queue holds at once
            assert w.submit(10 + i, fd, b".b.000000", b"big%d" % i, big, os.getuid(), os.getgid(), 0o644, (5, 0)) == 0
    finally:
        os.close(fd)  # the writer has its own descriptor
    assert w.drain() == []
    w.stop()
    assert (d / "f1").read_bytes() == b"one"
    st = os.stat(d / "f1")
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o640, 1_700_000_000 * 10**9 + 5)
    assert (d / "f2").read_bytes() == b"" and stat.S_IMODE(os.stat(d / "f2").st_mode) == 0o600
    assert all((d / ("big%d" % i)).read_bytes() == big for i in range(20))
    assert (d / ".f1.000000").read_bytes() == b"someone else's"
    assert sorted(os.listdir(d)) == sorted([".f1.000000", "f1", "f2"] + ["big%d" % i for i in range(20)])


def test_writer_reports_what_it_could_not_do(clib, tmp_path):
    import rsync_receiver
    w = _writer(clib)
    (tmp_path / "taken" / "x").mkdir(parents=True)
    gone = tmp_path / "gone"
    gone.mkdir()
    fd = os.open(tmp_path, os.O_RDONLY)
    gfd = os.open(gone, os.O_RDONLY)
    os.rmdir(gone)
    try:
        assert w.submit(7, fd, b".taken.000000", b"taken", b"data", -1, -1, 0o644, None) == 0
        assert w.submit(8, gfd, b".f.000000", b"f", b"data", -1, -1, 0o644, None) == 0
        assert w.submit(9, fd, b".ok.000000", b"ok", b"data", -1, -1, 0o644, None) == 0
        failed = w.drain()
    finally:
        os.close(fd)
        os.close(gfd)
        w.stop()
    assert [(tag, stage) for tag, stage, _ in failed] == [(7, rsync_receiver._WR_RENAME), (8, rsync_receiver._WR_OPEN)]
    assert failed[1][2] == errno.ENOENT
    assert sorted(os.listdir(tmp_path)) == ["ok", "taken"], "a temp file was left behind"
