"""Uploads: stock rsync pushing into gokr-rsyncd, gokr-rsync pushing into
stock rsync (daemon and remote shell), local copies, and a hostile sender."""

import os
import re
import signal
import stat
import subprocess
import time

import pytest

import rsync
import rsync_flist
from conftest import IS_ROOT, client_cmd, diff_snapshots, run, snapshot
from test_client import ours, stats

PROTOCOLS = [27, 28, 29, 30, 31, 32]

# gokr-rsyncd stores received symlinks verbatim, as rsyncd does in a chroot
# (its default); without one rsyncd rewrites them (munging or sanitizing).
CHROOTED = "use chroot = yes\nmunge symlinks = no" if IS_ROOT else "munge symlinks = no"


def comparable(snap):
    """Without root the stock daemon cannot chroot and sanitizes symlinks
    that point out of the module: leave those out of comparisons."""
    if not IS_ROOT:
        for k in ("abs-link", "a/escape-link"):
            snap.pop(k, None)
    return snap


@pytest.fixture
def writable(tmp_path, our_daemon_factory):
    mod = tmp_path / "mod"
    mod.mkdir()
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('[[module]]\nname = "w"\npath = "%s"\nwritable = true\n'
                   '[[module]]\nname = "ro"\npath = "%s"\n' % (mod, mod))
    d = our_daemon_factory({}, extra=["--gokr.config=%s" % cfg])
    d.mod = mod
    return d


@pytest.fixture
def stock_writable(tmp_path, stock_daemon_factory, rsync_bin):
    mod = tmp_path / "stockmod"
    mod.mkdir()
    d = stock_daemon_factory(rsync_bin, {"w": str(mod)}, read_only=False, extra_conf=CHROOTED)
    d.mod = mod
    return d


CASES = [("3.5.0", p, ("-a",)) for p in PROTOCOLS] + [("3.2.7", 32, ("-a",))]
if IS_ROOT:
    CASES += [("3.5.0", p, ("-aHD", "--numeric-ids")) for p in (27, 30, 32)]
    CASES += [("3.5.0", 32, ("-aHD",)), ("3.2.7", 32, ("-aHD",))]


@pytest.mark.parametrize("version,protocol,flags", CASES,
                         ids=["%s-p%d-%s" % (v, p, "".join(f)) for v, p, f in CASES])
def test_stock_pushes_into_our_daemon(writable, stock_writable, src_tree, rsync_bin, rsync327_bin,
                                      version, protocol, flags):
    """The same push into our writable module and into stock rsyncd's gives
    identical trees, with the source's data."""
    client = rsync_bin if version == "3.5.0" else rsync327_bin
    proto = ["--protocol=%d" % protocol] if protocol != 32 else []
    run([client, *flags, *proto, src_tree + "/", writable.url + "/w/"])
    run([client, *flags, *proto, src_tree + "/", stock_writable.url + "/w/"])
    ns = protocol >= 31
    a, b = comparable(snapshot(str(writable.mod), ns=ns)), comparable(snapshot(str(stock_writable.mod), ns=ns))
    assert a == b, diff_snapshots(a, b)
    src = snapshot(src_tree, ns=ns)
    for rel, desc in a.items():
        if isinstance(desc, dict) and "sha256" in desc:
            assert desc["sha256"] == src[rel]["sha256"]
    assert not [n for n in os.listdir(writable.mod) if n.startswith(".") and n != ".rsync-filter"]


def test_second_push_and_delta_push(writable, src_tree, rsync_bin, tmp_path):
    run([rsync_bin, "-a", src_tree + "/", writable.url + "/w/"])
    again = stats(run([rsync_bin, "-a", "--stats", src_tree + "/", writable.url + "/w/"]).stdout.decode())
    assert again["files"] == 0 and again["literal"] == 0
    local = tmp_path / "big.bin"
    data = bytearray(open(os.path.join(src_tree, "big.bin"), "rb").read())
    for i in range(10):
        off = len(data) // 11 * (i + 1)
        data[off:off + 4096] = os.urandom(4096)
    local.write_bytes(data)
    s = stats(run([rsync_bin, "-a", "--stats", "--no-whole-file", "-I", str(local),
                   writable.url + "/w/big.bin"]).stdout.decode())
    assert 10 * 4096 <= s["literal"] <= 10 * (4096 + 2 * 8192), s
    assert s["matched"] >= len(data) - 10 * (4096 + 2 * 8192)
    assert (writable.mod / "big.bin").read_bytes() == bytes(data)


def test_push_with_delete(writable, src_tree, rsync_bin):
    run([rsync_bin, "-a", src_tree + "/", writable.url + "/w/"])
    (writable.mod / "extra").write_text("x")
    (writable.mod / "a" / "extra-dir").mkdir()
    (writable.mod / "a" / "extra-dir" / "f").write_text("y")
    (writable.mod / "keep.tmp").write_text("protected by exclude")
    out = run([rsync_bin, "-av", "--delete", "--exclude=*.tmp", src_tree + "/", writable.url + "/w/"]).stdout
    assert b"deleting extra" in out and b"deleting a/extra-dir/f" in out
    assert not (writable.mod / "extra").exists() and (writable.mod / "keep.tmp").exists()
    (writable.mod / "keep.tmp").unlink()
    src, got = snapshot(src_tree), snapshot(str(writable.mod))
    src["<hardlinks>"] = []
    del src["."], got["."]
    assert got == src


def test_read_only_module_refuses_push(writable, src_tree, rsync_bin):
    for proto in ([], ["--protocol=29"]):
        p = run([rsync_bin, "-a", *proto, src_tree + "/", writable.url + "/ro/"], check=False)
        assert p.returncode != 0 and b"module is read only" in p.stderr
    assert os.listdir(writable.mod) == []
    p = run([rsync_bin, "-a", src_tree + "/", writable.url + "/ro/"], check=False)
    assert p.returncode == 1


def test_ten_concurrent_pushes(writable, tmp_path, rsync_bin):
    trees = []
    for i in range(10):
        t = tmp_path / ("t%d" % i)
        (t / ("dir%d" % i)).mkdir(parents=True)
        for j in range(20):
            (t / ("dir%d" % i) / ("f%d" % j)).write_bytes(os.urandom(5000 + i * 100 + j))
        trees.append(t)
    procs = [subprocess.Popen([rsync_bin, "-a", str(t) + "/", writable.url + "/w/"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for t in trees]
    for p in procs:
        assert p.wait(120) == 0, p.stderr.read()
    for i, t in enumerate(trees):
        for j in range(20):
            assert (writable.mod / ("dir%d" % i) / ("f%d" % j)).read_bytes() == \
                (t / ("dir%d" % i) / ("f%d" % j)).read_bytes()


def test_same_file_pushed_twice_at_once_ends_whole(writable, tmp_path, rsync_bin):
    versions = []
    for i in range(2):
        src = tmp_path / ("v%d" % i)
        src.mkdir()
        data = os.urandom(8 << 20)
        (src / "same").write_bytes(data)
        versions.append(data)
    for _ in range(3):
        procs = [subprocess.Popen([rsync_bin, "-a", "-I", "--bwlimit=20m", str(tmp_path / ("v%d" % i)) + "/",
                                   writable.url + "/w/"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
        for p in procs:
            assert p.wait(120) == 0, p.stderr.read()
        assert (writable.mod / "same").read_bytes() in versions
        assert os.listdir(writable.mod) == ["same"]


def test_interrupted_push_keeps_old_file(writable, tmp_path, rsync_bin):
    old = os.urandom(1 << 20)
    (writable.mod / "big").write_bytes(old)
    new = tmp_path / "big"
    with open(new, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    p = subprocess.Popen([rsync_bin, "-a", "--bwlimit=4m", str(new), writable.url + "/w/big"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if [n for n in os.listdir(writable.mod) if n.startswith(".big.")]:
            break
        time.sleep(0.05)
    time.sleep(0.5)
    p.send_signal(signal.SIGKILL)
    p.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and [n for n in os.listdir(writable.mod) if n.startswith(".big.")]:
        time.sleep(0.1)
    assert (writable.mod / "big").read_bytes() == old
    assert os.listdir(writable.mod) == ["big"]


# ----------------------------------------------------------------------------
# gokr-rsync as the sender


@pytest.mark.parametrize("protocol", [27, 29, 30, 31, 32])
def test_we_push_into_stock_daemon(stock_writable, src_tree, tmp_path, rsync_bin, stock_daemon_factory,
                                   protocol):
    ours("-aH", "--protocol=%d" % protocol, src_tree + "/", stock_writable.url + "/w/")
    ns = protocol >= 31
    assert comparable(snapshot(str(stock_writable.mod), ns=ns)) == comparable(snapshot(src_tree, ns=ns))


def test_we_push_into_stock_327_and_our_daemon(tmp_path, src_tree, stock_daemon_factory, rsync327_bin,
                                               writable):
    mod = tmp_path / "m327"
    mod.mkdir()
    d = stock_daemon_factory(rsync327_bin, {"w": str(mod)}, read_only=False, extra_conf=CHROOTED)
    ours("-aH", src_tree + "/", d.url + "/w/")
    assert comparable(snapshot(str(mod))) == comparable(snapshot(src_tree))
    ours("-aH", src_tree + "/", writable.url + "/w/")
    assert snapshot(str(writable.mod)) == snapshot(src_tree)


def test_we_push_with_delete_and_output(stock_writable, src_tree, rsync_bin, tmp_path):
    ours("-aH", src_tree + "/", stock_writable.url + "/w/")
    (stock_writable.mod / "extra").write_text("x")
    (stock_writable.mod / "emptydir" / "junk").write_text("y")
    out = ours("-avH", "--delete", src_tree + "/", stock_writable.url + "/w/").stdout.decode()
    assert "deleting extra" in out and "deleting emptydir/junk" in out
    assert comparable(snapshot(str(stock_writable.mod))) == comparable(snapshot(src_tree))
    again = stats(ours("-aH", "--stats", src_tree + "/", stock_writable.url + "/w/").stdout.decode())
    assert again["files"] == 0 and again["literal"] == 0


def test_we_push_over_ssh(sshd, src_tree, tmp_path, rsync_bin):
    dst = tmp_path / "sshdst"
    ours("-aH", "-e", sshd.rsh, "--rsync-path=%s" % rsync_bin, src_tree + "/", "root@127.0.0.1:%s/" % dst)
    assert snapshot(str(dst)) == snapshot(src_tree)
    (dst / "extra").write_text("x")
    ours("-aH", "--delete", "-e", sshd.rsh, "--rsync-path=%s" % rsync_bin, src_tree + "/",
         "root@127.0.0.1:%s/" % dst)
    assert snapshot(str(dst)) == snapshot(src_tree)


def test_stock_pushes_over_ssh_into_our_server(sshd, src_tree, tmp_path, rsync_bin):
    from conftest import daemon_cmd
    dst = tmp_path / "sshdst"
    run([rsync_bin, "-aH", "-e", sshd.rsh, "--rsync-path=%s" % " ".join(daemon_cmd()), src_tree + "/",
         "root@127.0.0.1:%s/" % dst])
    assert snapshot(str(dst)) == snapshot(src_tree)


@pytest.mark.parametrize("flags", [("-aH",), ("-avH", "--stats"), ("-aiH",)])
def test_local_copy_matches_stock(tmp_path, src_tree, rsync_bin, flags):
    a, b = tmp_path / "a", tmp_path / "b"
    pa = ours(*flags, src_tree + "/", str(a) + "/").stdout.decode().replace(str(a), "DEST")
    pb = run([rsync_bin, *flags, "--no-inc-recursive", src_tree + "/", str(b) + "/"]).stdout.decode().replace(
        str(b), "DEST")
    assert snapshot(str(a)) == snapshot(str(b)) == snapshot(src_tree)
    from test_client import mask
    ma = [l for l in mask(pa) if not l.startswith("File list size")]
    mb = [l for l in mask(pb) if not l.startswith("File list size")]
    assert ma == mb, "ours:\n%s\nstock:\n%s" % (pa, pb)


# ----------------------------------------------------------------------------
# A hostile sender against our receiving daemon


def hostile_push(daemon, entries, answer=None, protocol=32):
    import test_hostile as th
    args = ("--server", "-logDtpre.LsfxCIvu", ".", "w/")
    sess = th.handshake(daemon, protocol, args, sender=True)
    enc = rsync_flist.FlistEncoder(sess.out, sess.opts, sess.protocol, sess.xfer_flags_as_varint,
                             sess.checksums.file_len)
    for i, e in enumerate(entries):
        enc.send(e, i)
    enc.end(0, True)
    enc.send_id_lists(sess.id0_names)
    sess.out.flush()
    try:
        while True:
            ndx = sess.inp.ndx()
            if ndx == rsync.NDX_DONE:
                sess.out.ndx(rsync.NDX_DONE)
                sess.out.flush()
                continue
            iflags = sess.inp.shortint()
            if not iflags & rsync.ITEM_TRANSFER:
                sess.write_ndx_and_attrs(ndx, iflags)
                continue
            head = sess.read_sum_head()
            if head[0]:
                sess.read_sums(head[0], head[2])
            (answer or send_data)(sess, ndx, iflags, head, entries[ndx])
            sess.out.flush()
    except rsync.RsyncError:
        pass
    return b"".join(sess.messages)


def send_data(sess, ndx, iflags, head, e, data=b"pwned\n"):
    sess.write_ndx_and_attrs(ndx, iflags)
    sess.write_sum_head(*head)
    sess.out.int32(len(data))
    sess.out.write(data)
    sess.out.int32(0)
    h = sess.checksums.file_hasher()
    h.update(data)
    sess.out.write(h.digest())


def fentry(name, mode=stat.S_IFREG | 0o644, size=6, link=None):
    e = rsync_flist.FileEntry(name, mode, size, 1_700_000_000)
    e.link = link
    return e


def dot():
    e = fentry(b".", stat.S_IFDIR | 0o755, 0)
    e.flags = rsync_flist.FLAG_TOP_DIR | rsync_flist.FLAG_CONTENT_DIR
    return e


@pytest.mark.parametrize("names", [[b"../escape"], [b"a/../../escape"], [b"/tmp/escape-abs"]])
def test_hostile_names_in_push(writable, tmp_path, rsync_bin, names):
    msgs = hostile_push(writable, [dot()] + [fentry(n) for n in names])
    assert b"ABORTING" in msgs or b"invalid" in msgs.lower()
    assert not (tmp_path / "escape").exists() and not os.path.exists("/tmp/escape-abs")
    assert os.listdir(writable.mod) == []
    run([rsync_bin, "-a", str(tmp_path / "mod") + "/", writable.url + "/w/"])


def test_hostile_symlink_then_file_through_it(writable, tmp_path, rsync_bin):
    outside = tmp_path / "outside"
    outside.mkdir()
    entries = [dot(), fentry(b"link", stat.S_IFLNK | 0o777, len(str(outside)), str(outside).encode()),
               fentry(b"link/file")]
    hostile_push(writable, entries)
    assert os.listdir(outside) == []
    assert os.readlink(writable.mod / "link") == str(outside)
    os.symlink(str(outside), writable.mod / "pre-existing")
    hostile_push(writable, [dot(), fentry(b"pre-existing/file2")])
    assert os.listdir(outside) == []
    still = tmp_path / "still"
    still.mkdir()
    (still / "ok").write_text("ok")
    run([rsync_bin, "-a", str(still) + "/", writable.url + "/w/"])
    assert (writable.mod / "ok").read_text() == "ok"


def test_hostile_bad_tokens_leave_old_file(writable, rsync_bin, tmp_path):
    (writable.mod / "victim").write_bytes(b"old content\n")

    def bad_block(sess, ndx, iflags, head, e):
        sess.write_ndx_and_attrs(ndx, iflags)
        sess.write_sum_head(*head)
        sess.out.int32(-5000)

    def bad_sum(sess, ndx, iflags, head, e):
        sess.write_ndx_and_attrs(ndx, iflags)
        sess.write_sum_head(*head)
        sess.out.int32(3)
        sess.out.write(b"new")
        sess.out.int32(0)
        sess.out.write(b"\0" * sess.checksums.xfer_len)

    def bad_head(sess, ndx, iflags, head, e):
        sess.write_ndx_and_attrs(ndx, iflags)
        sess.write_sum_head(1 << 30, 700, 16, 0)
    for answer in (bad_block, bad_sum, bad_head):
        hostile_push(writable, [dot(), fentry(b"victim", size=3)], answer)
        assert (writable.mod / "victim").read_bytes() == b"old content\n"
        assert sorted(os.listdir(writable.mod)) == ["victim"]


def test_max_delete_safe_links_sparse_bwlimit(stock_writable, writable, src_tree, tmp_path, rsync_bin):
    """Options whose effect is on the receiving side, both when we receive
    (pull) and when our daemon does (push), compared with stock rsync."""
    from conftest import StockDaemon
    src = tmp_path / "s"
    src.mkdir()
    for i in range(5):
        (src / ("f%d" % i)).write_text("x")
    os.symlink("/etc/passwd", src / "abs")
    os.symlink("../../up", src / "up")
    os.symlink("f1", src / "fine")
    with open(src / "holes", "wb") as f:
        f.write(b"data")
        f.seek(8 << 20)
        f.write(b"end")
    for dst_url, dst_dir in ((writable.url + "/w/", writable.mod), (stock_writable.url + "/w/", stock_writable.mod)):
        run([rsync_bin, "-a", str(src) + "/", dst_url])
        for i in range(5):
            (dst_dir / ("extra%d" % i)).write_text("y")
        p = run([rsync_bin, "-a", "--delete", "--max-delete=2", str(src) + "/", dst_url], check=False)
        assert p.returncode == 0 and b"Deletions stopped due to --max-delete limit (3 skipped)" in p.stderr
        assert len([n for n in os.listdir(dst_dir) if n.startswith("extra")]) == 3
        p = run([rsync_bin, "-a", "--safe-links", "--sparse", "--delete", str(src) + "/", dst_url + "sub/"])
        sub = dst_dir / "sub"
        assert sorted(os.listdir(sub)) == ["f0", "f1", "f2", "f3", "f4", "fine", "holes"]
        assert os.stat(sub / "holes").st_blocks * 512 < (1 << 20)
        assert (sub / "holes").read_bytes() == (src / "holes").read_bytes()
    dst = tmp_path / "pulled"
    ours("-a", "--safe-links", "--sparse", stock_writable.url + "/w/sub/", str(dst) + "/")
    assert sorted(os.listdir(dst)) == ["f0", "f1", "f2", "f3", "f4", "fine", "holes"]
    assert os.stat(dst / "holes").st_blocks * 512 < (1 << 20)
    for i in range(3):
        (dst / ("extra%d" % i)).write_text("y")
    p = ours("-a", "--delete", "--max-delete=1", stock_writable.url + "/w/sub/", str(dst) + "/", check=False)
    assert p.returncode == 25 and b"--max-delete" in p.stderr
    assert len([n for n in os.listdir(dst) if n.startswith("extra")]) == 2
    import time
    big = tmp_path / "bw"
    big.write_bytes(os.urandom(600 << 10))
    t = time.monotonic()
    ours("--bwlimit=200", str(big), writable.url + "/w/bw")
    assert time.monotonic() - t >= 1.5
    assert (writable.mod / "bw").read_bytes() == big.read_bytes()


@pytest.mark.parametrize("protocol", [29, 32])
def test_protect_args_both_ways(writable, tmp_path, rsync_bin, sshd, protocol):
    """-s (--protect-args): the client sends its paths and long options on
    the connection after the handshake; names with spaces and glob
    characters arrive as they are, to and from our daemon and over ssh."""
    from conftest import daemon_cmd
    src = tmp_path / "src"
    (src / "dir sp").mkdir(parents=True)
    (src / "dir sp" / "f [g]*").write_bytes(b"one")
    (src / "dir sp" / "skip.tmp").write_bytes(b"two")
    flags = ["-a", "-s", "--protocol=%d" % protocol, "--exclude=*.tmp"]
    run([rsync_bin, *flags, str(src) + "/", writable.url + "/w/"])
    assert sorted(os.listdir(writable.mod / "dir sp")) == ["f [g]*"]
    assert (writable.mod / "dir sp" / "f [g]*").read_bytes() == b"one"
    got = tmp_path / "got"
    run([rsync_bin, *flags, writable.url + "/w/dir sp/", str(got) + "/"])
    assert os.listdir(got) == ["f [g]*"]
    over = tmp_path / "over ssh"
    run([rsync_bin, *flags, "-e", sshd.rsh, "--rsync-path=" + " ".join(daemon_cmd()),
         "root@127.0.0.1:%s/dir sp/" % src, str(over) + "/"])
    assert os.listdir(over) == ["f [g]*"]
    run([rsync_bin, *flags, "-e", sshd.rsh, "--rsync-path=" + " ".join(daemon_cmd()),
         str(src / "dir sp") + "/", "root@127.0.0.1:%s/" % (tmp_path / "pushed here")])
    assert os.listdir(tmp_path / "pushed here") == ["f [g]*"]


def _modes(root):
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            out[os.path.relpath(p, root)] = stat.S_IMODE(os.lstat(p).st_mode)
    return out


def _mode_tree(root, old=False):
    """The source (old=False) or a destination holding older copies of two
    of its files with other modes."""
    os.makedirs(root, exist_ok=True)
    if old:
        for name, mode in (("exe", 0o744), ("priv", 0o640), ("plain", 0o600)):
            p = os.path.join(root, name)
            with open(p, "w") as f:
                f.write("old " + name)
            os.chmod(p, mode)
            os.utime(p, (1e9, 1e9))
        return
    os.makedirs(os.path.join(root, "d"))
    for name, mode in (("exe", 0o755), ("priv", 0o600), ("plain", 0o775), ("d/g", 0o2775), ("new", 0o640)):
        p = os.path.join(root, name)
        with open(p, "w") as f:
            f.write("new " + name)
        os.chmod(p, mode)
    os.chmod(os.path.join(root, "d"), 0o700)


@pytest.mark.parametrize("flags", [("-rlt",), ("-rltE",), ("-a", "--no-p"), ("-rlt", "--inplace", "-I")])
def test_modes_without_perms_as_stock(writable, stock_writable, stock_daemon_factory, rsync_bin, tmp_path, flags):
    """Without -p a new file gets the sender's permission bits under the
    receiver's umask and an existing file keeps its own (-E sets or clears
    its execute bits): our daemon and our client receive as stock does."""
    src = str(tmp_path / "src")
    _mode_tree(src)
    for mod in (writable.mod, stock_writable.mod):
        _mode_tree(str(mod), old=True)
        run([rsync_bin, *flags, src + "/", "%s/w/" % (writable.url if mod == writable.mod else stock_writable.url)])
    mine, theirs = _modes(writable.mod), _modes(stock_writable.mod)
    assert mine == theirs
    assert theirs["priv"] == 0o640 and theirs["new"] == 0o640 and theirs["d"] == 0o700
    daemon = stock_daemon_factory(rsync_bin, {"m": src})
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    _mode_tree(a, old=True)
    _mode_tree(b, old=True)
    ours(*flags, daemon.url + "/m/", a + "/")
    run([rsync_bin, *flags, daemon.url + "/m/", b + "/"])
    assert _modes(a) == _modes(b)


@pytest.mark.parametrize("flags", [("-a",), ("-aH", "--delete"), ("-rlptD", "--no-W", "-I")])
def test_existing_creates_nothing_new(writable, stock_writable, stock_daemon_factory, rsync_bin, tmp_path, flags):
    """--existing updates what the receiver has and creates no file,
    directory, link or special file: our daemon and our client end with the
    trees stock rsync leaves."""
    src = tmp_path / "src"
    (src / "a" / "deep").mkdir(parents=True)
    (src / "newdir" / "sub").mkdir(parents=True)
    for rel in ("one", "a/two", "a/deep/three", "newdir/sub/four", "fresh"):
        (src / rel).write_text("new " + rel)
    os.symlink("one", src / "link")
    os.symlink("../one", src / "newdir" / "link")
    os.mkfifo(src / "fifo")
    os.link(src / "one", src / "a" / "hard")

    def old(root):
        (root / "a").mkdir(parents=True, exist_ok=True)
        (root / "one").write_text("old")
        (root / "a" / "two").write_text("old two")
        (root / "extra").write_text("extra")
        for p in ("one", "a/two", "extra", "a", "."):
            os.utime(root / p, (1e9, 1e9))
    def shot(root):
        # A directory's mtime is when a file in it was last replaced, on
        # both sides: not compared.
        return {k: {f: v for f, v in d.items() if not (f == "mtime" and d.get("type", stat.S_IFDIR) ==
                                                          stat.S_IFDIR)} if isinstance(d, dict) else d
                for k, d in snapshot(str(root)).items()}
    flags = list(flags) + ["--existing"]
    for d in (writable, stock_writable):
        old(d.mod)
        run([rsync_bin, *flags, str(src) + "/", d.url + "/w/"])
    sa, sb = shot(writable.mod), shot(stock_writable.mod)
    assert sa == sb, diff_snapshots(sa, sb)
    assert sorted(os.listdir(writable.mod)) == sorted(["a", "one"] + (["extra"] if "--delete" not in flags else []))
    daemon = stock_daemon_factory(rsync_bin, {"m": str(src)})
    a, b = tmp_path / "a", tmp_path / "b"
    old(a)
    old(b)
    ours(*flags, daemon.url + "/m/", str(a) + "/")
    run([rsync_bin, *flags, daemon.url + "/m/", str(b) + "/"])
    sa, sb = shot(a), shot(b)
    assert sa == sb, diff_snapshots(sa, sb)


def test_skipped_non_regular_files_are_reported(writable, stock_writable, stock_daemon_factory, rsync_bin,
                                                tmp_path):
    """Without -l or -D, each symlink and special file left out is reported
    (skipping non-regular file "NAME"), even without -v, by our daemon
    taking a push and by our client pulling, as stock rsync reports them."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    os.symlink("f", src / "lnk")
    os.mkfifo(src / "fifo")
    want = {'skipping non-regular file "fifo"', 'skipping non-regular file "lnk"'}
    for d in (writable, stock_writable):
        out = run([rsync_bin, "-rt", str(src) + "/", d.url + "/w/"]).stdout.decode()
        assert set(out.splitlines()) == want, out
    daemon = stock_daemon_factory(rsync_bin, {"m": str(src)})
    for cmd in (client_cmd(), [rsync_bin]):
        out = run(cmd + ["-rt", daemon.url + "/m/", str(tmp_path / ("d%d" % len(cmd))) + "/"]).stdout.decode()
        assert set(out.splitlines()) == want, out
    assert not os.path.lexists(writable.mod / "lnk") and os.path.exists(writable.mod / "f")


def _sparse_tree(root):
    root.mkdir()
    with open(root / "holes", "wb") as f:
        f.truncate(20 << 20)
        f.seek(10240000)
        f.write(os.urandom(40960))
        f.seek(15 << 20)
        f.write(os.urandom(5000) + bytes(9000) + os.urandom(3000))
    (root / "mixed").write_bytes(os.urandom(5000) + bytes(9000) + os.urandom(3000) + bytes(100000))


def test_sparse_allocates_as_stock(writable, stock_writable, stock_daemon_factory, rsync_bin, tmp_path):
    """-S: the blocks a received file takes are those stock rsync's
    receiver gives it (holes wherever a run of zeros spans its 1 KiB write
    pieces), when our daemon receives and when our client does."""
    src = tmp_path / "src"
    _sparse_tree(src)
    for d in (writable, stock_writable):
        run([rsync_bin, "-aS", str(src) + "/", d.url + "/w/"])
    daemon = stock_daemon_factory(rsync_bin, {"m": str(src)})
    ours("-aS", daemon.url + "/m/", str(tmp_path / "a") + "/")
    run([rsync_bin, "-aS", daemon.url + "/m/", str(tmp_path / "b") + "/"])
    for name in ("holes", "mixed"):
        blocks = [os.stat(p / name).st_blocks for p in (writable.mod, stock_writable.mod, tmp_path / "a",
                                                         tmp_path / "b")]
        assert len(set(blocks)) == 1, (name, blocks)
        for p in (writable.mod, tmp_path / "a"):
            assert (p / name).read_bytes() == (src / name).read_bytes()


@pytest.mark.parametrize("flags", [("-ai",), ("-ai", "--delete"), ("-ai", "--force"), ("-rl",)])
def test_directory_in_the_way(writable, stock_writable, stock_daemon_factory, rsync_bin, tmp_path, flags):
    """A non-empty directory where a file is to go: without --delete or
    --force it stays, with rsync's two messages and code 23; with them its
    contents are reported deleted and the file takes its place. Our daemon
    and our client say and leave what stock rsync does (lines compared in
    any order: two processes write them)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "one").write_text("file")
    (src / "keep").write_text("k")

    def prep(root):
        (root / "one").mkdir(parents=True)
        (root / "one" / "q").write_text("q")
        for p in (root / "one" / "q", root / "one"):
            os.utime(p, (1e9, 1e9))

    def said(p):
        return p.returncode, sorted(re.sub(r" at \S+ \[\w+=[\d.]+\]", "", (p.stdout + p.stderr).decode())
                                    .splitlines())
    got = []
    for d in (writable, stock_writable):
        prep(d.mod)
        got.append(said(run([rsync_bin, *flags, "--no-i-r", str(src) + "/", d.url + "/w/"], check=False)))
    assert got[0] == got[1]
    sa, sb = snapshot(str(writable.mod)), snapshot(str(stock_writable.mod))
    del sa["."], sb["."]
    if "-rl" in flags:  # without -t new files have the time they were made
        for snap in (sa, sb):
            snap["keep"].pop("mtime")
    assert sa == sb, diff_snapshots(sa, sb)
    daemon = stock_daemon_factory(rsync_bin, {"m": str(src)})
    a, b = tmp_path / "a", tmp_path / "b"
    prep(a)
    prep(b)
    mine = said(run(client_cmd() + [*flags, daemon.url + "/m/", str(a) + "/"], check=False))
    theirs = said(run([rsync_bin, *flags, "--no-i-r", daemon.url + "/m/", str(b) + "/"], check=False))
    assert mine[0] == theirs[0] and [l for l in mine[1] if not l.startswith("rsync error")] == \
        [l for l in theirs[1] if not l.startswith("rsync error")], (mine, theirs)
    assert (a / "one").is_dir() == ("--delete" not in flags and "--force" not in flags)


def test_list_only_push_lists_and_writes_nothing(writable, stock_writable, rsync_bin, tmp_path):
    """--list-only toward a writable module: the receiving daemon lists the
    sender's files to the client as stock's does, and creates nothing."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("x" * 3000)
    os.symlink("d/f", src / "lnk")
    outs = []
    for d in (writable, stock_writable):
        outs.append(run([rsync_bin, "-a", "--list-only", str(src) + "/", d.url + "/w/new/"]).stdout)
        assert os.listdir(d.mod) == []
    assert outs[0] == outs[1] and b"d/f" in outs[0] and b"lnk -> d/f" in outs[0]


def _hl_prep(root, src, how):
    """A destination for a three-name hard-link group: unlinked copies of
    all three, of one only, or with the first changed."""
    names = ("hl1", "hl2", "a/hl3")
    keep = {"unlinked": names, "only2": ("hl2",), "only3": ("a/hl3",), "changed1": names}[how]
    for n in keep:
        os.makedirs(os.path.dirname(root / n), exist_ok=True)
        (root / n).write_bytes((src / n).read_bytes())
        st = os.stat(src / n)
        os.utime(root / n, ns=(st.st_atime_ns, st.st_mtime_ns))
    if how == "changed1":
        (root / "hl1").write_text("other")
        os.utime(root / "hl1", (1e9, 1e9))


@pytest.mark.parametrize("how", ["unlinked", "only2", "only3", "changed1"])
def test_hard_link_group_led_by_what_the_destination_has(writable, stock_writable, stock_daemon_factory,
                                                         rsync_bin, tmp_path, how):
    """-H into a destination that already holds members of a group: the
    first member it has leads (kept or updated) and the others are linked
    to it, as stock rsync does; same lines, same links, both ways."""
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "hl1").write_text("data")
    os.link(src / "hl1", src / "hl2")
    os.link(src / "hl1", src / "a" / "hl3")

    def lines(p):
        return sorted(l for l in p.stdout.decode().splitlines() if not l.startswith("created directory"))
    got = []
    for d in (writable, stock_writable):
        _hl_prep(d.mod, src, how)
        got.append(lines(run([rsync_bin, "-aiH", "--no-i-r", str(src) + "/", d.url + "/w/"])))
    assert got[0] == got[1]
    sa, sb = snapshot(str(writable.mod)), snapshot(str(stock_writable.mod))
    assert sa["<hardlinks>"] == sb["<hardlinks>"] == [["a/hl3", "hl1", "hl2"]]
    daemon = stock_daemon_factory(rsync_bin, {"m": str(src)})
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        _hl_prep(d, src, how)
    mine = lines(run(client_cmd() + ["-aiH", daemon.url + "/m/", str(a) + "/"]))
    theirs = lines(run([rsync_bin, "-aiH", "--no-i-r", daemon.url + "/m/", str(b) + "/"]))
    assert mine == theirs
    assert snapshot(str(a))["<hardlinks>"] == [["a/hl3", "hl1", "hl2"]]
    if how == "unlinked":
        assert "hf          hl2 => hl1" in mine
