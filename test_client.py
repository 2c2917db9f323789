"""gokr-rsync against stock rsync servers (daemon, remote shell, daemon over
a remote shell) and against a scripted hostile server."""

import os
import re
import socket
import stat
import subprocess
import threading

import pytest

import rsync
import rsync_flist
from conftest import (IS_ROOT, client_cmd, daemon_cmd, diff_snapshots, run, snapshot)

PROTOCOLS = [27, 28, 29, 30, 31, 32]


def ours(*args, check=True, env=None, input=None):
    e = dict(os.environ)
    if env:
        e.update(env)
    p = subprocess.run(client_cmd() + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=300, env=e, input=input)
    if check and p.returncode != 0:
        raise AssertionError("gokr-rsync %s exited %d\n%s\n%s" % (
            " ".join(args), p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")))
    return p


def stats(text):
    def num(label):
        m = re.search(label + r": ([\d,]+)", text)
        return int(m.group(1).replace(",", "")) if m else None
    return {"literal": num("Literal data"), "matched": num("Matched data"),
            "files": num("Number of regular files transferred")}


@pytest.fixture
def stock350(src_tree, stock_daemon_factory, rsync_bin):
    return stock_daemon_factory(rsync_bin, {"m": src_tree})


@pytest.fixture
def stock327(src_tree, stock_daemon_factory, rsync327_bin):
    return stock_daemon_factory(rsync327_bin, {"m": src_tree})


CASES = [("3.5.0", p, ("-a",)) for p in PROTOCOLS] + [("3.2.7", 32, ("-a",)), ("3.2.7", 30, ("-a",))]
if IS_ROOT:
    CASES += [("3.5.0", p, ("-aHD", "--numeric-ids")) for p in (27, 29, 31, 32)]
    CASES += [("3.5.0", 32, ("-aHD",)), ("3.2.7", 32, ("-aHD",))]


@pytest.mark.parametrize("version,protocol,flags", CASES,
                         ids=["%s-p%d-%s" % (v, p, "".join(f)) for v, p, f in CASES])
def test_pull_from_stock_daemon(request, tmp_path, rsync_bin, src_tree, version, protocol, flags):
    """Our client and the stock client pull the same tree from the same stock
    daemon; the results are identical and the data is the source's."""
    daemon = request.getfixturevalue("stock350" if version == "3.5.0" else "stock327")
    a, b = str(tmp_path / "ours"), str(tmp_path / "stock")
    proto = ["--protocol=%d" % protocol] if protocol != 32 else []
    ours(*flags, *proto, daemon.url + "/m/", a + "/")
    run([rsync_bin, *flags, *proto, daemon.url + "/m/", b + "/"])
    ns = protocol >= 31
    sa, sb = snapshot(a, ns=ns), snapshot(b, ns=ns)
    assert sa == sb, diff_snapshots(sa, sb)
    src = snapshot(src_tree, ns=ns)
    for rel, desc in sa.items():
        if isinstance(desc, dict) and "sha256" in desc:
            assert desc["sha256"] == src[rel]["sha256"], rel
    if "H" in "".join(flags):
        assert sa["<hardlinks>"] == src["<hardlinks>"] and sa["<hardlinks>"]


def test_second_pull_and_delta(stock350, tmp_path, src_tree):
    dst = str(tmp_path / "d")
    ours("-a", stock350.url + "/m/", dst + "/")
    again = stats(ours("-a", "--stats", stock350.url + "/m/", dst + "/").stdout.decode())
    assert again["files"] == 0 and again["literal"] == 0, again
    big = os.path.join(dst, "big.bin")
    size = os.path.getsize(big)
    changed = 0
    with open(big, "r+b") as f:
        for i in range(16):
            f.seek(size // 17 * (i + 1))
            f.write(os.urandom(4096))
            changed += 4096
    s = stats(ours("-a", "--stats", "--no-whole-file", "-I", stock350.url + "/m/big.bin", big).stdout.decode())
    assert changed <= s["literal"] <= changed + 16 * 2 * 8192, s
    assert s["matched"] >= size - changed - 16 * 2 * 8192
    assert snapshot(big) == snapshot(os.path.join(src_tree, "big.bin"))
    log = open(stock350.log).read()
    assert "sent" in log


def mask(text):
    """Drops what legitimately differs between two runs: timings, rates,
    byte counts of the conversation."""
    out = []
    for line in text.splitlines():
        if line.startswith(("File list generation time", "File list transfer time", "Total bytes sent",
                            "Total bytes received", "sent ", "total size is", "receiving ")):
            line = line.split(":")[0] if ":" in line else line.split(" ")[0]
        out.append(line)
    return out


@pytest.mark.parametrize("flags", [("-av", "--stats"), ("-aiv",), ("-avH", "--stats", "--delete"),
                                   ("-aiv", "--protocol=28"), ("-a", "--out-format=%i|%n|%L|%f|%l|%o|%M|%B|%U|%G")])
def test_output_matches_stock_client(stock350, tmp_path, rsync_bin, flags):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for d in (a, b):
        os.makedirs(d)
        with open(os.path.join(d, "stale"), "w") as f:
            f.write("to delete")
    pa = ours(*flags, stock350.url + "/m/", a + "/").stdout.decode()
    pb = run([rsync_bin, *flags, "--no-inc-recursive", stock350.url + "/m/", b + "/"]).stdout.decode()
    pa, pb = pa.replace(a, "DEST"), pb.replace(b, "DEST")
    assert mask(pa) == mask(pb), "ours:\n%s\nstock:\n%s" % (pa, pb)


@pytest.mark.parametrize("flags", [("-a",), ("-rlpt",)])
def test_pull_into_setgid_directory(stock350, tmp_path, rsync_bin, flags):
    """Files made in a set-group-ID directory start with its group (the
    client learns which group new files get from the first file of each
    directory, not from every one); -g must still leave the sender's group
    on all of them. Without -g, what they keep depends on when directory
    modes are set: at once, as rsync's generator does, so the destination
    loses its set-group-ID bit before anything is made in it. Both clients
    leave the same owners, groups and modes."""
    other = [g for g in os.getgroups() if g != os.getegid()]
    if not IS_ROOT and not other:
        pytest.skip("needs root or a second group")
    gid = 65534 if IS_ROOT else other[0]
    trees = {}
    for who in ("ours", "stock"):
        d = tmp_path / who
        d.mkdir()
        os.chown(d, -1, gid)
        os.chmod(d, 0o2775)
        if who == "ours":
            ours(*flags, stock350.url + "/m/", str(d) + "/")
        else:
            run([rsync_bin, *flags, stock350.url + "/m/", str(d) + "/"])
        trees[who] = snapshot(str(d), owners=True)
    assert not diff_snapshots(trees["ours"], trees["stock"]), diff_snapshots(trees["ours"], trees["stock"])
    assert gid not in {desc["gid"] for desc in trees["ours"].values() if "gid" in desc}


def _as_nobody(fn):
    """fn() in a forked child that became nobody (the Python installation
    may not be readable by nobody, so no new interpreter); its exit code."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            code = fn()
        except BaseException:
            pass
        os._exit(code if isinstance(code, int) else 98)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.skipif(not IS_ROOT, reason="needs root to become nobody")
def test_unprivileged_pull_into_read_only_directories(stock_daemon_factory, rsync_bin):
    """Without root, a directory whose mode shuts its owner out is given
    rwx for the owner while it is filled and its own mode at the end, as
    rsync's generator does: everything arrives, with the sender's modes."""
    import shutil
    import tempfile
    import client
    top = tempfile.mkdtemp(prefix="gokr-ro-dirs-")
    try:
        os.chmod(top, 0o755)
        src = os.path.join(top, "src")
        os.makedirs(os.path.join(src, "ro", "sub"))
        for rel, data in (("ro/f", b"hi"), ("ro/sub/g", b"x" * 5000)):
            with open(os.path.join(src, rel), "wb") as f:
                f.write(data)
        for rel in ("ro/f", "ro/sub/g", "ro/sub", "ro", ""):
            # (in the past: rsync leaves a time alone whose seconds match)
            os.utime(os.path.join(src, rel), ns=(1_600_000_000_123_456_789,) * 2)
            if rel in ("ro/sub", "ro"):
                os.chmod(os.path.join(src, rel), 0o555)
        daemon = stock_daemon_factory(rsync_bin, {"m": src})
        trees = {}
        for who in ("ours", "stock"):
            dst = os.path.join(top, who)
            os.mkdir(dst)
            os.chown(dst, 65534, 65534)
            argv = ["-a", daemon.url + "/m/", dst + "/"]
            if who == "ours":
                code = _as_nobody(lambda: client.main(argv))
            else:
                code = _as_nobody(lambda: subprocess.run([rsync_bin] + argv, stdout=subprocess.DEVNULL).returncode)
            assert code == 0, (who, code)
            trees[who] = snapshot(dst, owners=True)
        assert not diff_snapshots(trees["ours"], trees["stock"]), diff_snapshots(trees["ours"], trees["stock"])
        assert trees["ours"]["ro"]["mode"] == trees["ours"]["ro/sub"]["mode"] == 0o555
        assert trees["ours"]["ro/sub/g"]["uid"] == 65534
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.skipif(not IS_ROOT, reason="needs root to become nobody")
def test_unreachable_destination_directory_is_an_error_not_a_crash(stock_daemon_factory, rsync_bin):
    """A destination directory we may not enter (mode 0 and not ours): its
    files fail with rsync's mkstemp error and exit 23, the rest arrives, as
    with the stock client."""
    import shutil
    import tempfile
    import client
    top = tempfile.mkdtemp(prefix="gokr-unreachable-")
    try:
        os.chmod(top, 0o755)
        src = os.path.join(top, "src")
        os.makedirs(os.path.join(src, "shut"))
        for rel in ("shut/f", "open.txt"):
            with open(os.path.join(src, rel), "wb") as f:
                f.write(rel.encode() * 100)
        daemon = stock_daemon_factory(rsync_bin, {"m": src})
        for who in ("ours", "stock"):
            dst = os.path.join(top, who)
            os.makedirs(os.path.join(dst, "shut"))
            os.chown(dst, 65534, 65534)
            os.chmod(os.path.join(dst, "shut"), 0)
            argv = ["-rt", daemon.url + "/m/", dst + "/"]
            if who == "ours":
                code = _as_nobody(lambda: client.main(argv))
            else:
                code = _as_nobody(lambda: subprocess.run([rsync_bin] + argv, stdout=subprocess.DEVNULL,
                                                         stderr=subprocess.DEVNULL).returncode)
            assert code == 23, (who, code)
            with open(os.path.join(dst, "open.txt"), "rb") as f:
                assert f.read() == b"open.txt" * 100
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_resync_after_local_changes(stock_daemon_factory, rsync_bin, tmp_path):
    """A second pull over a copy changed locally (files rewritten with a new
    time, removed, replaced by a directory or a symlink, a mode changed)
    puts back exactly the source. The list is long enough to come in
    pieces, so that the generator's stats are taken while it still comes."""
    import random
    rnd = random.Random(8)
    src = tmp_path / "src"
    names = []
    for d in range(50):
        for f in range(200):
            rel = "d%02d/f%03d" % (d, f)
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(rnd.randbytes(rnd.randrange(0, 300)))
            names.append(rel)
    daemon = stock_daemon_factory(rsync_bin, {"m": str(src)})
    dst = tmp_path / "d"
    ours("-a", daemon.url + "/m/", str(dst) + "/")
    for rel in names[5::1000]:
        (dst / rel).write_bytes(b"changed")
        os.utime(dst / rel, (1, 1))
    for rel in names[7::1000]:
        os.unlink(dst / rel)
    for rel in names[11::1000]:
        os.unlink(dst / rel)
        (dst / rel).mkdir()
    for rel in names[13::1000]:
        os.unlink(dst / rel)
        os.symlink("/etc/passwd", dst / rel)
    for rel in names[17::1000]:
        os.chmod(dst / rel, 0o600)
    ours("-a", daemon.url + "/m/", str(dst) + "/")
    got, want = snapshot(str(dst)), snapshot(str(src))
    assert not diff_snapshots(got, want), diff_snapshots(got, want)


def test_multiple_sources_and_single_file(stock350, tmp_path, rsync_bin):
    a, b = tmp_path / "a", tmp_path / "b"
    ours("-a", stock350.url + "/m/foo.txt", stock350.url + "/m/a", str(a) + "/")
    run([rsync_bin, "-a", stock350.url + "/m/foo.txt", stock350.url + "/m/a", str(b) + "/"])
    sa, sb = snapshot(str(a)), snapshot(str(b))
    del sa["."], sb["."]
    assert sa == sb
    ours("-a", stock350.url + "/m/foo.txt", str(tmp_path / "renamed.txt"))
    assert (tmp_path / "renamed.txt").read_bytes() == b"foo\n"


def test_module_listing_and_errors(stock350, tmp_path):
    out = ours(stock350.url + "/").stdout.decode()
    assert out.split()[0] == "m"
    p = ours("-a", stock350.url + "/nope/", str(tmp_path / "x"), check=False)
    assert p.returncode == 5 and b"Unknown module" in p.stderr
    p = ours("-a", stock350.url + "/m/missing-file", str(tmp_path / "y"), check=False)
    assert p.returncode == 23 and b"missing-file" in p.stderr
    p = ours("--frobnicate", stock350.url + "/m/", str(tmp_path), check=False)
    assert p.returncode == 1 and b"--frobnicate: unknown option" in p.stderr
    p = ours("-a", "rsync://127.0.0.1:1/m/", str(tmp_path), check=False)
    assert p.returncode == 10
    assert ours("--version").stdout.startswith(b"gokr-rsync version")
    assert b"--dry-run" in ours("--help").stdout


def test_dry_run_and_delete(stock350, tmp_path, src_tree):
    dst = tmp_path / "d"
    dst.mkdir()
    (dst / "extra").write_text("x")
    (dst / "extradir").mkdir()
    (dst / "extradir" / "f").write_text("y")
    out = ours("-avn", "--delete", stock350.url + "/m/", str(dst) + "/").stdout.decode()
    assert "deleting extra" in out and "big.bin" in out
    assert sorted(os.listdir(dst)) == ["extra", "extradir"]
    ours("-aH", "--delete", "--exclude=keep*", stock350.url + "/m/", str(dst) + "/")
    (dst / "keep.me").write_text("k")
    ours("-aH", "--delete", "--exclude=keep*", stock350.url + "/m/", str(dst) + "/")
    assert (dst / "keep.me").exists() and not (dst / "extra").exists()
    s = snapshot(str(dst))
    del s["keep.me"]
    assert s == snapshot(src_tree)


def test_checksum_choices_and_c(stock350, tmp_path):
    for choice in ("xxh128", "xxh3", "xxh64", "md5", "md4", "sha1"):
        dst = tmp_path / choice
        ours("-a", "--checksum-choice=" + choice, stock350.url + "/m/a/", str(dst) + "/")
        target = dst / "x.c"
        st = os.stat(target)
        target.write_bytes(b"int MAIN\n")
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        out = ours("-ac", "--stats", "--checksum-choice=" + choice, stock350.url + "/m/a/", str(dst) + "/")
        assert stats(out.stdout.decode())["files"] == 1
        assert target.read_bytes() == b"int main;\n"


def test_auth(stock_daemon_factory, rsync_bin, src_tree, tmp_path):
    secrets = tmp_path / "secrets"
    secrets.write_text("joe:s3cret\n")
    os.chmod(secrets, 0o600)
    d = stock_daemon_factory(rsync_bin, {"m": src_tree},
                             extra_conf="auth users = joe\nsecrets file = %s\nstrict modes = no" % secrets)
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    os.chmod(pw, 0o600)
    for digests in ("md5", "sha512", None):
        env = {"RSYNC_PASSWORD": "s3cret"}
        if digests:
            env["RSYNC_AUTH_DIGESTS"] = digests
        url = "rsync://joe@127.0.0.1:%d/m/foo.txt" % d.port
        ours(url, str(tmp_path / ("ok-%s" % digests)), env=env)
        assert (tmp_path / ("ok-%s" % digests)).read_text() == "foo\n"
        env["RSYNC_PASSWORD"] = "wrong"
        p = ours(url, str(tmp_path / "bad"), env=env, check=False)
        assert p.returncode == 5 and b"auth failed" in p.stderr
    env = {"RSYNC_PASSWORD": "wrong"}
    ours("--password-file=%s" % pw, "rsync://joe@127.0.0.1:%d/m/foo.txt" % d.port, str(tmp_path / "pwfile"),
         env=env)


def test_over_ssh_from_stock_server(sshd, tmp_path, src_tree, rsync_bin):
    dst = tmp_path / "d"
    ours("-a", "-e", sshd.rsh, "--rsync-path=%s" % rsync_bin, "root@127.0.0.1:%s/" % src_tree, str(dst) + "/")
    ref = tmp_path / "ref"
    run([rsync_bin, "-a", "-e", sshd.rsh, "root@127.0.0.1:%s/" % src_tree, str(ref) + "/"])
    assert snapshot(str(dst)) == snapshot(str(ref))
    conf = tmp_path / "rsyncd.conf"
    conf.write_text("use chroot = no\nuid = root\ngid = root\n[m]\npath = %s\n" % src_tree)
    dd = tmp_path / "dd"
    ours("-a", "-e", sshd.rsh, "--rsync-path=%s --config=%s" % (rsync_bin, conf),
         "rsync://root@127.0.0.1/m/", str(dd) + "/")
    assert snapshot(str(dd)) == snapshot(str(ref))


def test_over_ssh_from_our_server(sshd, tmp_path, src_tree):
    dst = tmp_path / "d"
    ours("-aH", "-e", sshd.rsh, "--rsync-path=%s" % " ".join(daemon_cmd()),
         "root@127.0.0.1:%s/" % src_tree, str(dst) + "/")
    assert snapshot(str(dst)) == snapshot(src_tree)


def test_from_our_daemon(our_daemon_factory, tmp_path, src_tree):
    d = our_daemon_factory({"m": src_tree})
    for p in (27, 30, 32):
        dst = tmp_path / str(p)
        ours("-aH", "--protocol=%d" % p, d.url + "/m/", str(dst) + "/")
        assert snapshot(str(dst), ns=p >= 31) == snapshot(src_tree, ns=p >= 31)


# ----------------------------------------------------------------------------
# A hostile server


class FakeServer:
    """A scripted rsync daemon on loopback: it greets, accepts the module and
    the arguments, sets up the session, and then runs `script(sess)`."""

    def __init__(self, script):
        self.script = script
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.error = None
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        conn, _ = self.sock.accept()
        t = rsync.SocketTransport(conn, timeout=20)
        try:
            raw = rsync.RawIn(t)
            t.sendv([b"@RSYNCD: 32.0 md5\n"])
            raw.read_line()
            raw.read_line()
            t.sendv([b"@RSYNCD: OK\n"])
            args = []
            while True:
                a = raw.read_line(eol=b"\0")
                if not a:
                    break
                args.append(a.decode())
            opts, paths = rsync.parse_server_args(args)
            sess = rsync.Session(t, opts, am_server=True, am_sender=True, raw=raw)
            sess.set_protocol(32)
            sess.setup_protocol()
            sess.start_mux_out()
            sess.start_mux_in()
            rsync.recv_filter_rules(sess)
            self.script(sess)
            sess.out.flush()
            try:
                while raw.transport.recv(65536):
                    pass
            except rsync.RsyncError:
                pass
        except Exception as e:  # the client hanging up is the expected outcome
            self.error = e
        finally:
            t.close()


def send_list(sess, entries):
    enc = rsync_flist.FlistEncoder(sess.out, sess.opts, sess.protocol, sess.xfer_flags_as_varint,
                             sess.checksums.file_len)
    for i, e in enumerate(entries):
        enc.send(e, i)
    enc.end(0, True)
    enc.send_id_lists(sess.id0_names)
    sess.out.flush()


def reg(name, data=b"x"):
    e = rsync_flist.FileEntry(name, stat.S_IFREG | 0o644, len(data), 1_700_000_000)
    return e


def top():
    e = rsync_flist.FileEntry(b".", stat.S_IFDIR | 0o755, 0, 1_700_000_000)
    e.flags = rsync_flist.FLAG_TOP_DIR | rsync_flist.FLAG_CONTENT_DIR
    return e


def link(name, target):
    e = rsync_flist.FileEntry(name, stat.S_IFLNK | 0o777, len(target), 1_700_000_000)
    e.link = target
    return e


@pytest.fixture
def arena(tmp_path):
    """A destination inside a directory whose other contents must never change."""
    root = tmp_path / "arena"
    root.mkdir()
    (root / "outside").mkdir()
    (root / "outside" / "keep").write_text("untouched")
    return root


def arena_unchanged(root):
    names = sorted(os.listdir(root))
    return [n for n in names if n not in ("dst", "outside")] == [] and \
        sorted(os.listdir(root / "outside")) == ["keep"] and \
        (root / "outside" / "keep").read_text() == "untouched"


@pytest.mark.parametrize("entries", [
    [top(), reg(b"../escape")],
    [top(), reg(b"sub/../../escape")],
    [top(), reg(b"/etc/escape")],
], ids=["dotdot", "inner-dotdot", "absolute"])
def test_hostile_names(arena, entries):
    srv = FakeServer(lambda sess: send_list(sess, entries))
    p = ours("-a", "rsync://127.0.0.1:%d/m/" % srv.port, str(arena / "dst") + "/", check=False)
    assert p.returncode in (2, 4, 12), p.stderr
    assert arena_unchanged(arena)
    assert not os.path.exists("/etc/escape")


def test_hostile_unrequested_name(arena):
    srv = FakeServer(lambda sess: send_list(sess, [reg(b"other")]))
    p = ours("-a", "rsync://127.0.0.1:%d/m/wanted" % srv.port, str(arena / "dst") + "/", check=False)
    assert p.returncode != 0 and b"unrequested" in p.stderr
    assert arena_unchanged(arena)


def test_hostile_duplicate_name(arena):
    srv = FakeServer(lambda sess: send_list(sess, [top(), reg(b"twice"), reg(b"twice", b"y")]))
    p = ours("-a", "rsync://127.0.0.1:%d/m/" % srv.port, str(arena / "dst") + "/", check=False)
    assert p.returncode == 2 and b"duplicate name in file list: twice" in p.stderr, p.stderr
    assert arena_unchanged(arena)


def test_hostile_excluded_name(arena):
    srv = FakeServer(lambda sess: send_list(sess, [top(), reg(b"secret.key")]))
    p = ours("-a", "--exclude=*.key", "rsync://127.0.0.1:%d/m/" % srv.port, str(arena / "dst") + "/",
             check=False)
    assert p.returncode != 0 and b"excluded" in p.stderr
    assert arena_unchanged(arena)


def answer_requests(sess, n, reply):
    """Reads the generator's requests and answers the first with `reply`."""
    inp = sess.inp
    while True:
        ndx = inp.ndx()
        if ndx == rsync.NDX_DONE:
            continue
        iflags = inp.shortint()
        if iflags & rsync.ITEM_TRANSFER:
            head = sess.read_sum_head()
            if head[0]:
                sess.read_sums(head[0], head[2])
            reply(sess, ndx, iflags, head)
            sess.out.flush()
            return
        sess.write_ndx_and_attrs(ndx, iflags)
        sess.out.flush()


def test_hostile_symlink_then_file_through_it(arena):
    target = str(arena / "outside").encode()

    def script(sess):
        send_list(sess, [top(), link(b"ln", target), reg(b"ln/keep", b"overwritten")])

        def reply(sess, ndx, iflags, head):
            sess.write_ndx_and_attrs(ndx, iflags)
            sess.write_sum_head(*head)
            sess.out.int32(11)
            sess.out.write(b"overwritten")
            sess.out.int32(0)
            h = sess.checksums.file_hasher()
            h.update(b"overwritten")
            sess.out.write(h.digest())
        try:
            answer_requests(sess, 3, reply)
        except rsync.RsyncError:
            pass
    srv = FakeServer(script)
    ours("-a", "rsync://127.0.0.1:%d/m/" % srv.port, str(arena / "dst") + "/", check=False)
    assert arena_unchanged(arena)
    assert (arena / "outside" / "keep").read_text() == "untouched"


@pytest.mark.parametrize("attack", ["index", "literal", "block", "flags", "name-length"])
def test_hostile_answers(arena, attack):
    def reply(sess, ndx, iflags, head):
        if attack == "index":
            sess.write_ndx_and_attrs(ndx + 7, iflags)
        elif attack == "flags":
            sess.write_ndx_and_attrs(ndx, iflags | rsync.ITEM_BASIS_TYPE_FOLLOWS)
            sess.out.byte(0)
        else:
            sess.write_ndx_and_attrs(ndx, iflags)
            sess.write_sum_head(*head)
            if attack == "literal":
                sess.out.int32(1 << 30)
            else:
                sess.out.int32(-1000)

    def script(sess):
        if attack == "name-length":
            sess.out.varint(rsync.XMIT_LONG_NAME)
            sess.out.varint(1 << 20)
            sess.out.flush()
            return
        send_list(sess, [top(), reg(b"f", b"data")])
        try:
            answer_requests(sess, 2, reply)
        except rsync.RsyncError:
            pass
    srv = FakeServer(script)
    p = ours("-a", "rsync://127.0.0.1:%d/m/" % srv.port, str(arena / "dst") + "/", check=False)
    assert p.returncode in (2, 11, 12, 22), (p.returncode, p.stderr)
    assert arena_unchanged(arena)
    dst = arena / "dst"
    if dst.exists():
        assert not (dst / "f").exists()
        assert not [n for n in os.listdir(dst) if n.startswith(".f.")], "temp file left behind"


def test_rsync_connect_prog_both_ways(tmp_path, src_tree, rsync_bin):
    """RSYNC_CONNECT_PROG: our client runs stock rsyncd over a socketpair, and
    the stock client runs our daemon in inetd mode the same way."""
    conf = tmp_path / "c.conf"
    conf.write_text("use chroot = no\nuid = root\ngid = root\n[m]\npath = %s\n" % src_tree)
    a, b = tmp_path / "a", tmp_path / "b"
    ours("-a", "rsync://localhost/m/", str(a) + "/",
         env={"RSYNC_CONNECT_PROG": "%s --daemon --config=%s" % (rsync_bin, conf)})
    run([rsync_bin, "-a", "rsync://localhost/m/", str(b) + "/"],
        env=dict(os.environ, RSYNC_CONNECT_PROG=" ".join(daemon_cmd()) + " --daemon --gokr.modulemap=m=%s %s" % (
            src_tree, "--gokr.user=root" if IS_ROOT else "--gokr.insecure_writable_modules")))
    sa, sb, src = snapshot(str(a)), snapshot(str(b)), snapshot(src_tree)
    assert sa == sb
    src["<hardlinks>"] = []
    assert sa == src


def test_many_small_files_over_a_socketpair(tmp_path, rsync_bin):
    """Small socket buffers (RSYNC_CONNECT_PROG's socketpair) once deadlocked
    the client: its receiving thread flushed requests and blocked on the send
    while the server was blocked sending file data to it."""
    import random
    rnd = random.Random(5)
    src = tmp_path / "src"
    for d in range(200):
        (src / ("d%03d" % d)).mkdir(parents=True)
        for f in range(100):
            (src / ("d%03d" % d) / ("f%03d" % f)).write_bytes(rnd.randbytes(rnd.randrange(1024, 8192)))
    conf = tmp_path / "c.conf"
    conf.write_text("use chroot = no\n" + ("uid = root\ngid = root\n" if IS_ROOT else "") +
                    "[m]\npath = %s\n" % src)
    dst = tmp_path / "dst"
    env = {"RSYNC_CONNECT_PROG": "%s --daemon --config=%s" % (rsync_bin, conf)}
    ours("-a", "--timeout=60", "rsync://localhost/m/", str(dst) + "/", env=env)
    assert snapshot(str(dst)) == snapshot(str(src))


def test_writer_thread_failure_is_reported(clib, tmp_path, stock_daemon_factory, rsync_bin, monkeypatch, capsys):
    """A file the writer thread cannot put in place (here: a directory
    appears at its name after the generator looked) is reported as a failed
    rename, the rest arrives, and the exit code is 23."""
    import client
    import rsync_receiver
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / ("f%02d" % i)).write_bytes(b"%d" % i * 100)
    daemon = stock_daemon_factory(rsync_bin, {"m": str(src)})
    dst = tmp_path / "dst"
    submitted = []
    real = rsync_receiver.Writer.submit

    def submit(self, tag, dfd, tmp, leaf, *rest):
        submitted.append(leaf)
        if leaf == b"f07":
            os.mkdir(b"f07", dir_fd=dfd)
            inner = os.open(b"f07", os.O_RDONLY, dir_fd=dfd)
            os.mkdir(b"inside", dir_fd=inner)
            os.close(inner)
        return real(self, tag, dfd, tmp, leaf, *rest)
    monkeypatch.setattr(rsync_receiver.Writer, "submit", submit)
    code = client.main(["-a", daemon.url + "/m/", str(dst) + "/"])
    err = capsys.readouterr().err
    assert b"f07" in submitted and len(submitted) > 20
    assert code == 23, err
    assert 'rsync: [receiver] rename into "f07" failed: Is a directory (21)' in err
    for i in range(30):
        if i != 7:
            assert (dst / ("f%02d" % i)).read_bytes() == b"%d" % i * 100
    assert sorted(os.listdir(dst)) == sorted(["f%02d" % i for i in range(30)]), "a temp file was left behind"


def test_size_limits_parse_as_stock(tmp_path, stock_daemon_factory, rsync_bin):
    """--max-size and --min-size take rsync's size syntax (units of 1024 or,
    with a trailing b, 1000; a +1 or -1 adjustment); our client keeps and
    skips the same files as the stock client, and refuses what it refuses."""
    src = tmp_path / "src"
    src.mkdir()
    sizes = [0, 1, 999, 1000, 1023, 1024, 1025, 716800, 716801, 1048576, 1048577]
    for n in sizes:
        (src / ("s%d" % n)).write_bytes(b"x" * n)
    daemon = stock_daemon_factory(rsync_bin, {"m": str(src)})
    for arg in ("--max-size=716801", "--max-size=716800", "--max-size=1M", "--max-size=1M-1",
                "--max-size=1Mb", "--max-size=1k", "--max-size=1kb+1", "--max-size=1KiB",
                "--max-size=0.5k", "--min-size=1", "--min-size=1k+1", "--min-size=1023b",
                "--max-size=1m --min-size=1000", "--min-size=k+1", "--max-size=."):
        got = {}
        for who, cmd in (("ours", client_cmd()), ("stock", [rsync_bin])):
            dst = tmp_path / ("%s%d" % (who, len(os.listdir(tmp_path))))
            run(cmd + ["-r"] + arg.split() + [daemon.url + "/m/", str(dst) + "/"])
            got[who] = sorted(os.listdir(dst))
        assert got["ours"] == got["stock"], (arg, got)
        assert 0 < len(got["ours"]) < len(sizes), (arg, got)
    for bad in ("--max-size=1Q", "--max-size=1ib", "--min-size=-1", "--max-size=+1", "--max-size=1.5.5",
                "--max-size=99999999999999999999999"):
        p = run(client_cmd() + ["-r", bad, daemon.url + "/m/", str(tmp_path / "bad") + "/"], check=False)
        s = run([rsync_bin, "-r", bad, daemon.url + "/m/", str(tmp_path / "bad") + "/"], check=False)
        assert p.returncode == s.returncode == 1, (bad, p.stderr, s.stderr)
        assert re.search(r"%s is (invalid|too large)" % re.escape(bad), p.stderr.decode()), p.stderr
        assert not (tmp_path / "bad").exists()


def _listing_tree(root):
    os.makedirs(os.path.join(root, "sub", "deep"))
    with open(os.path.join(root, "a"), "w") as f:
        f.write("hello\n")
    os.utime(os.path.join(root, "a"), (1577934245, 1577934245))
    os.symlink("a", os.path.join(root, "lnk"))
    os.mkfifo(os.path.join(root, "fifo"))
    with open(os.path.join(root.encode(), b"odd\xffname"), "wb") as f:
        f.write(b"zz")
    with open(os.path.join(root, "sub", "b"), "w") as f:
        f.write("x" * 5000)
    os.chmod(os.path.join(root, "sub", "b"), 0o4755)


LISTINGS = [(), ("-a",), ("-r",), ("--no-h",), ("-h", "-r"), ("-av",), ("-d",), ("--list-only", "-a"), ("-8", "-r")]


@pytest.mark.parametrize("where", ["daemon", "ssh", "local"])
def test_listing_matches_stock(where, tmp_path, stock_daemon_factory, rsync_bin, sshd):
    """A source without a destination, or --list-only with one, lists the
    files as stock rsync does, from a daemon, over ssh and locally, and
    writes nothing."""
    src = str(tmp_path / "src")
    _listing_tree(src)
    if where == "daemon":
        base = stock_daemon_factory(rsync_bin, {"m": src}).url + "/m"
        rsh = []
    elif where == "ssh":
        base, rsh = "root@127.0.0.1:" + src, ["-e", sshd.rsh, "--rsync-path=" + rsync_bin]
    else:
        base, rsh = src, []
    dst = tmp_path / "dst"
    for flags in LISTINGS:
        for path in ("/", "/sub", "/a"):
            extra = [str(dst) + "/"] if "--list-only" in flags else []
            args = list(flags) + rsh + [base + path] + extra
            mine = run(client_cmd() + args, check=False)
            theirs = run([rsync_bin] + args, check=False)
            # Without incremental recursion ours says "receiving file list ... done".
            header = re.compile(r"^(receiving|sending|building) (incremental )?file list( \.\.\. done)?$", re.M)
            assert (mine.returncode, mask(header.sub("FILE LIST", mine.stdout.decode("latin-1")))) == \
                (theirs.returncode, mask(header.sub("FILE LIST", theirs.stdout.decode("latin-1")))), \
                (args, mine.stderr, theirs.stderr)
            assert b"lnk" in mine.stdout or path != "/", args
            assert not dst.exists()


def _prep(dst, window_file=None):
    """A destination holding an older copy: a changed file of the same size
    and mtime (only -c notices) and a file one second off (--modify-window)."""
    os.makedirs(dst)
    for name, data, t in (("same-size", b"old!", 1e9), ("off-by-one", b"same", 1e9 + 1)):
        with open(os.path.join(dst, name), "wb") as f:
            f.write(data)
        os.utime(os.path.join(dst, name), (t, t))


@pytest.mark.parametrize("flags", [("-aic",), ("-ai", "--modify-window=1"), ("-ai",), ("-aic", "--modify-window=2")])
def test_itemized_changes_match_stock(tmp_path, stock_daemon_factory, rsync_bin, flags):
    """-c reports the checksum change (the c of >fc...) and --modify-window
    leaves a file one second off alone, as the stock client does; the
    resulting trees are the same."""
    src = tmp_path / "src"
    src.mkdir()
    for name, data in (("same-size", b"new!"), ("off-by-one", b"same")):
        (src / name).write_bytes(data)
        os.utime(src / name, (1e9, 1e9))
    daemon = stock_daemon_factory(rsync_bin, {"m": str(src)})
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    _prep(a)
    _prep(b)
    mine = ours(*flags, daemon.url + "/m/", a + "/").stdout.decode()
    theirs = run([rsync_bin, *flags, "--no-i-r", daemon.url + "/m/", b + "/"]).stdout.decode()
    assert mine == theirs
    # The top directory's mtime is when a file was last renamed into it.
    sa, sb = snapshot(a), snapshot(b)
    del sa["."], sb["."]
    assert sa == sb, diff_snapshots(sa, sb)
    if "-aic" in flags:
        assert ">fc" in mine
    if "--modify-window=1" in flags:
        assert "off-by-one" not in mine


def test_failures_end_with_an_rsync_error_line(tmp_path, stock_daemon_factory, rsync_bin):
    """A failing run says why and ends with rsync's `rsync error: ... (code
    N)` line, with stock's exit code; a destination that is a file is an
    error (code 3), not a crash."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    (tmp_path / "afile").write_text("not a directory")
    daemon = stock_daemon_factory(rsync_bin, {"m": str(src)})
    for args in ([daemon.url + "/m/missing", str(tmp_path / "d1") + "/"],
                 [daemon.url + "/nomodule/", str(tmp_path / "d2") + "/"],
                 [daemon.url + "/m/", str(tmp_path / "afile") + "/"],
                 [str(tmp_path / "missing") + "/", str(tmp_path / "d3") + "/"],
                 [str(src) + "/", str(tmp_path / "afile") + "/"]):
        mine = run(client_cmd() + ["-a"] + args, check=False)
        theirs = run([rsync_bin, "-a"] + args, check=False)
        assert mine.returncode == theirs.returncode != 0, (args, mine.stderr, theirs.stderr)
        err = mine.stderr.decode()
        assert re.search(r"^rsync error: .* \(code %d\)" % mine.returncode, err, re.M), err
        assert err.count("rsync error:") == 1, err
        assert "Traceback" not in err
    args = [daemon.url + "/m/", str(tmp_path / "no" / "such") + "/"]
    mine = run(client_cmd() + ["-a"] + args, check=False)
    theirs = run([rsync_bin, "-a"] + args, check=False)
    assert mine.returncode == theirs.returncode == 11
    assert mine.stderr.splitlines()[0] == theirs.stderr.splitlines()[0]


def test_output_reader_gone_the_transfer_goes_on(tmp_path, stock_daemon_factory, rsync_bin):
    """`gokr-rsync -v ... | head -1`: once nobody reads our output the
    transfer still completes and exits 0, as stock rsync's does."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(200):
        (src / ("f%03d" % i)).write_text("x" * i)
    daemon = stock_daemon_factory(rsync_bin, {"m": str(src)})
    dst = tmp_path / "dst"
    p = subprocess.Popen(client_cmd() + ["-av", "--progress", daemon.url + "/m/", str(dst) + "/"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=120) == 0, err
    assert b"Traceback" not in err
    assert sorted(os.listdir(dst)) == sorted(os.listdir(src))
