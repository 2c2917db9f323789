"""A hostile or broken client against gokr-rsyncd: every case gets an error,
nothing outside the module is served, and the daemon goes on serving."""

import os
import random
import socket

import pytest

import rsync
import rsync_flist
from conftest import run


@pytest.fixture
def daemon(our_daemon_factory, tmp_path):
    mod = tmp_path / "mod"
    mod.mkdir()
    (mod / "file").write_bytes(os.urandom(100_000))
    (mod / "small").write_text("small\n")
    (mod / "dir").mkdir()
    return our_daemon_factory({"m": str(mod)})


def still_serves(daemon, rsync_bin, tmp_path):
    dst = tmp_path / ("check%d" % random.randrange(1 << 30))
    run([rsync_bin, "-a", daemon.url + "/m/", str(dst) + "/"])
    return sorted(os.listdir(dst)) == ["dir", "file", "small"]


def connect(daemon):
    s = socket.create_connection(("127.0.0.1", daemon.port), timeout=10)
    return s


def recv_all(s, limit=1 << 20):
    data = b""
    s.settimeout(10)
    while len(data) < limit:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("junk", [
    b"hello\n", b"@RSYNCD: \n", b"@RSYNCD: x.y\n", b"@RSYNCD: 31\n", b"@RSYNCD: 32.0\n",
    b"@RSYNCD: 10.0 md5\n", b"\xff" * 5000, b"@RSYNCD: 32.0 md5", b"",
])
def test_bad_greetings(daemon, rsync_bin, tmp_path, junk):
    s = connect(daemon)
    s.sendall(junk)
    s.shutdown(socket.SHUT_WR)
    reply = recv_all(s)
    s.close()
    assert reply.startswith(b"@RSYNCD: 32.0 ")
    if junk.endswith(b"\n"):
        assert b"@ERROR" in reply
    assert still_serves(daemon, rsync_bin, tmp_path)


def handshake(daemon, protocol=32, args=("--server", "--sender", "-logDtpre.iLsfxCIvu", ".", "m/"),
              sender=False):
    s = connect(daemon)
    t = rsync.SocketTransport(s, timeout=10)
    raw = rsync.RawIn(t)
    assert raw.read_line().startswith(b"@RSYNCD: 32.0")
    module = args[-1].split("/")[0].encode()
    t.sendv([b"@RSYNCD: %d.0 md5\n" % protocol, module + b"\n"])
    assert raw.read_line() == b"@RSYNCD: OK"
    sep = b"\0" if protocol >= 30 else b"\n"
    t.sendv([sep.join(a.encode() for a in args) + sep + sep])
    opts, _ = rsync.parse_server_args(list(args))
    opts.client_info = "."
    if "-e" in args[2]:
        opts.client_info = args[2].split("e", 1)[1]
    sess = rsync.Session(t, opts, am_server=False, am_sender=sender, raw=raw,
                         on_text=lambda tag, text: messages.append(text))
    messages = []
    sess.messages = messages
    sess.set_protocol(protocol)
    sess.setup_protocol()
    sess.start_mux_in()
    if protocol >= 30:
        sess.start_mux_out()
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
    return dec.entries


def outcome(sess):
    """Reads until the daemon hangs up; returns its error messages."""
    try:
        while True:
            sess.inp.read(1)
    except rsync.RsyncError:
        pass
    return b"".join(sess.messages)


def index_of(entries, name):
    return next(e.ndx for e in entries if e.name == name)


@pytest.mark.parametrize("head,expect", [
    ((1 << 30, 700, 16, 0), b"is too large"),
    ((-1, 700, 16, 0), b"Invalid checksum count"),
    ((1, 0, 16, 0), b"Invalid block length"),
    ((1, "too long", 16, 0), b"Invalid block length"),
    ((1, 700, 64, 0), b"Invalid checksum length"),
    ((1, 700, -1, 0), b"Invalid checksum length"),
    ((1, 700, 16, 701), b"Invalid remainder"),
    ((1, 700, 16, -5), b"Invalid remainder"),
])
@pytest.mark.parametrize("protocol", [29, 32])
def test_bad_sum_headers(daemon, rsync_bin, tmp_path, head, expect, protocol):
    sess = handshake(daemon, protocol,
                     ("--server", "--sender", "-logDtpr" + ("e.LsfxCIvu" if protocol >= 30 else ""), ".", "m/"))
    entries = read_flist(sess)
    sess.write_ndx_and_attrs(index_of(entries, b"file"), rsync.ITEM_TRANSFER)
    if head[1] == "too long":
        head = (1, (1 << 17 if protocol >= 30 else 1 << 29) + 1, 16, 0)
    for v in head:
        sess.out.int32(v)
    sess.out.flush()
    if head[0] == 1 << 30:
        sess.transport.shutdown_write()
    msgs = outcome(sess)
    assert expect in msgs, msgs
    assert still_serves(daemon, rsync_bin, tmp_path)


@pytest.mark.parametrize("ndx,iflags,expect", [
    (9999, rsync.ITEM_TRANSFER, b"Invalid file index"),
    (-50, rsync.ITEM_TRANSFER, b"Invalid file index"),
    ("dir", rsync.ITEM_TRANSFER, b"non-regular"),
])
def test_bad_requests(daemon, rsync_bin, tmp_path, ndx, iflags, expect):
    sess = handshake(daemon)
    entries = read_flist(sess)
    if ndx == "dir":
        ndx = index_of(entries, b"dir")
    sess.write_ndx_and_attrs(ndx, iflags)
    sess.out.flush()
    msgs = outcome(sess)
    assert expect in msgs, msgs
    assert still_serves(daemon, rsync_bin, tmp_path)


def test_random_bytes_after_handshake(daemon, rsync_bin, tmp_path):
    rnd = random.Random(7)
    for _ in range(20):
        sess = handshake(daemon)
        sess.transport.sendv([bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 300)))])
        sess.transport.shutdown_write()
        outcome(sess)
    assert still_serves(daemon, rsync_bin, tmp_path)


def test_disconnect_mid_transfer(daemon, rsync_bin, tmp_path):
    sess = handshake(daemon)
    entries = read_flist(sess)
    sess.write_ndx_and_attrs(index_of(entries, b"file"), rsync.ITEM_TRANSFER)
    sess.write_sum_head(0, 0, 0, 0)
    sess.out.flush()
    sess.inp.read(100)
    sess.transport.close()
    assert still_serves(daemon, rsync_bin, tmp_path)
    assert "finished m" in daemon.read_log()


def test_delta_with_real_sums_from_raw_client(daemon, tmp_path):
    """The raw client can also do it right: a request with true block sums of
    a stale copy gets back tokens that rebuild the file exactly."""
    import rsync_delta
    src = (tmp_path / "mod" / "file").read_bytes()
    stale = bytearray(src)
    stale[5000:5100] = os.urandom(100)
    sess = handshake(daemon)
    entries = read_flist(sess)
    blength, s2 = 700, 16
    count = (len(stale) + blength - 1) // blength
    sess.write_ndx_and_attrs(index_of(entries, b"file"), rsync.ITEM_TRANSFER)
    sess.write_sum_head(count, blength, s2, len(stale) % blength)
    for i in range(count):
        block = bytes(stale[i * blength:(i + 1) * blength])
        sess.out.uint32(rsync_delta.checksum1(block))
        sess.out.write(sess.checksums.strong(block)[:s2])
    sess.out.flush()
    assert sess.inp.ndx() == index_of(entries, b"file")
    sess.inp.shortint()
    assert [sess.inp.int32() for _ in range(4)] == [count, blength, s2, len(stale) % blength]
    out = bytearray()
    literal = 0
    while True:
        t = sess.inp.int32()
        if t == 0:
            break
        if t > 0:
            assert t <= rsync.CHUNK_SIZE
            out += sess.inp.read(t)
            literal += t
        else:
            i = -t - 1
            out += stale[i * blength:(i + 1) * blength]
    digest = sess.inp.read(sess.checksums.xfer_len)
    h = sess.checksums.file_hasher()
    h.update(bytes(out))
    assert bytes(out) == src and h.digest() == digest
    assert literal < 3 * blength
