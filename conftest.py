"""Shared test fixtures: stock rsync peers, our daemon, generated trees and
a tree comparison that looks at bytes and metadata.

Tests that need stock rsync (or sshd) fail instead of skipping when the
environment variable CI is set, because CI always installs them."""

import importlib.machinery
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
RSYNC = shutil.which("rsync")
RSYNC_327 = next((p for p in (os.environ.get("RSYNC_327"), "/opt/rsync-3.2.7/usr/bin/rsync",
                              "/opt/rsync327/usr/bin/rsync") if p and os.path.exists(p)), None)
IS_ROOT = os.geteuid() == 0


def need(thing, what):
    """Fails under CI, skips elsewhere, when what a test needs (a peer
    program, root, an IPv6 loopback) is missing."""
    if thing:
        return thing
    if os.environ.get("CI"):
        pytest.fail("%s is required in CI but missing" % what)
    pytest.skip("%s missing" % what)


@pytest.fixture(scope="session")
def rsync_bin():
    return need(RSYNC, "stock rsync")


@pytest.fixture(scope="session")
def rsync327_bin():
    return need(RSYNC_327, "rsync 3.2.7 (contrib/install-test-deps.sh unpacks it)")


def _library_files():
    return [os.path.join(HERE, "_rsync_delta" + suffix)
            for suffix in importlib.machinery.EXTENSION_SUFFIXES
            if os.path.isfile(os.path.join(HERE, "_rsync_delta" + suffix))]


@pytest.fixture(scope="session")
def clib():
    """The C library, built in place if missing: a failed build fails under CI."""
    if not _library_files():
        build = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                               cwd=HERE, capture_output=True, text=True)
        if build.returncode != 0 or not _library_files():
            message = f"building the C library failed:\n{build.stdout}\n{build.stderr}"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
    import rsync_delta
    import rsync_flist
    if rsync_delta._lib is None:
        rsync_delta._lib = rsync_delta._find_library()
        rsync_flist._fl_decode, rsync_flist._fl_encode, rsync_flist._fl_lstat = rsync_flist._c_flist()
    if rsync_delta._lib is None:
        message = f"cannot load {_library_files()}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return rsync_delta._lib


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc=None, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("server exited with %s" % proc.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("port %d did not open" % port)


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class OurDaemon:
    """gokr-rsyncd in a subprocess on an ephemeral loopback port."""

    def __init__(self, tmp, modules, extra=()):
        self.log = os.path.join(tmp, "gokr-rsyncd.log")
        self.port = None
        args = [sys.executable, os.path.join(HERE, "daemon.py"), "--daemon",
                "--gokr.listen=127.0.0.1:0"]
        args += ["--gokr.modulemap=%s=%s" % (n, p) for n, p in modules.items()]
        args += ["--gokr.user=root"] if IS_ROOT else ["--gokr.insecure_writable_modules"]
        args += list(extra)
        self.logf = open(self.log, "w+")
        self.proc = subprocess.Popen(args, stderr=self.logf, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while self.port is None:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("gokr-rsyncd did not start: %s" % self.read_log())
            for line in self.read_log().splitlines():
                if "listening on" in line:
                    self.port = int(line.split("listening on ")[1].split(",")[0].rsplit(":", 1)[1])
            time.sleep(0.05)
        self.url = "rsync://127.0.0.1:%d" % self.port

    def read_log(self):
        with open(self.log) as f:
            return f.read()

    def stop(self):
        stop(self.proc)
        self.logf.close()


class StockDaemon:
    """rsync --daemon with its own rsyncd.conf on an ephemeral loopback port."""

    def __init__(self, binary, tmp, modules, read_only=True, extra_conf=""):
        self.conf = os.path.join(tmp, "rsyncd-%d.conf" % id(self))
        self.log = os.path.join(tmp, "rsyncd-%d.log" % id(self))
        lines = ["use chroot = no", "log file = %s" % self.log, "reverse lookup = no",
                 "pid file = %s" % os.path.join(tmp, "rsyncd-%d.pid" % id(self))]
        if IS_ROOT:
            lines += ["uid = root", "gid = root"]
        lines.append(extra_conf)
        for name, path in modules.items():
            lines += ["[%s]" % name, "path = %s" % path, "read only = %s" % ("yes" if read_only else "no")]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        for _ in range(5):
            self.port = free_port()
            self.proc = subprocess.Popen([binary, "--daemon", "--no-detach", "--address=127.0.0.1",
                                          "--port=%d" % self.port, "--config=%s" % self.conf],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_port(self.port, self.proc)
                break
            except RuntimeError:
                stop(self.proc)
        else:
            raise RuntimeError("stock rsync daemon did not start")
        self.url = "rsync://127.0.0.1:%d" % self.port

    def stop(self):
        stop(self.proc)


@pytest.fixture
def our_daemon_factory(tmp_path):
    started = []

    def start(modules, extra=()):
        d = OurDaemon(str(tmp_path), modules, extra)
        started.append(d)
        return d
    yield start
    for d in started:
        d.stop()


@pytest.fixture
def stock_daemon_factory(tmp_path):
    started = []

    def start(binary, modules, **kw):
        d = StockDaemon(binary, str(tmp_path), modules, **kw)
        started.append(d)
        return d
    yield start
    for d in started:
        d.stop()


def run(cmd, check=True, **kw):
    """Runs a command, returns CompletedProcess with text output."""
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=kw.pop("timeout", 300),
                       **kw)
    if check and p.returncode != 0:
        raise AssertionError("%s exited %d\nstdout: %s\nstderr: %s" % (
            " ".join(map(str, cmd)), p.returncode, p.stdout.decode(errors="replace"),
            p.stderr.decode(errors="replace")))
    return p


# ----------------------------------------------------------------------------
# Generated trees

BLOCK = 700
MTIME = 1_700_000_000


def make_tree(root, big_size=64 << 20, devices=IS_ROOT):
    """The tree every interop test transfers: edge sizes, odd names, links,
    special files, a large file."""
    os.makedirs(root)
    rnd = __import__("random").Random(42)

    def write(rel, data, mode=0o644, mtime=None):
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
        os.chmod(p, mode)
        t = MTIME + rnd.randrange(10_000_000) if mtime is None else mtime
        os.utime(p, ns=(t * 10**9, t * 10**9 + rnd.randrange(10**9)))

    write("empty", b"")
    write("one_block", rnd.randbytes(BLOCK))
    write("block_minus_1", rnd.randbytes(BLOCK - 1))
    write("block_plus_1", rnd.randbytes(BLOCK + 1))
    write("exec.sh", b"#!/bin/sh\necho hi\n", 0o755)
    write("private", b"secret-ish\n", 0o600)
    write("ünïcödé-名前.txt", "unicode\n".encode())
    write("with space.txt", b"spaces\n")
    write("new\nline", b"newline in name\n")
    write("a/b/c/deep.txt", b"deep\n")
    write("a/b/sibling.o", b"object\n")
    write("a/x.c", b"int main;\n")
    write("a/x.o", b"obj\n")
    write("foo/bar/baz", b"baz\n")
    write("foo.txt", b"foo\n")
    write("build/out.o", b"o\n")
    write("a/.rsync-filter", b"- *.o\n+ b/\n")
    write("medium.bin", rnd.randbytes(600_000))
    os.makedirs(os.path.join(root, "emptydir"))
    os.makedirs(os.path.join(root, "a/emptysub"))
    if big_size:
        with open(os.path.join(root, "big.bin"), "wb") as f:
            left = big_size
            while left:
                n = min(left, 1 << 22)
                f.write(os.urandom(n))
                left -= n
        os.utime(os.path.join(root, "big.bin"), (MTIME, MTIME))
    os.symlink("foo.txt", os.path.join(root, "rel-link"))
    os.symlink("/etc/passwd", os.path.join(root, "abs-link"))
    os.symlink("does/not/exist", os.path.join(root, "dangling"))
    os.symlink("../../outside", os.path.join(root, "a/escape-link"))
    os.link(os.path.join(root, "foo.txt"), os.path.join(root, "hardlink-to-foo"))
    os.link(os.path.join(root, "foo.txt"), os.path.join(root, "a/hardlink2"))
    os.mkfifo(os.path.join(root, "fifo"))
    os.utime(os.path.join(root, "fifo"), ns=(MTIME * 10**9, MTIME * 10**9 + 5))
    if devices:
        os.mknod(os.path.join(root, "nulldev"), stat.S_IFCHR | 0o644, os.makedev(1, 3))
        os.utime(os.path.join(root, "nulldev"), ns=(MTIME * 10**9, MTIME * 10**9 + 7))
    if IS_ROOT:
        os.chown(os.path.join(root, "private"), 1, 1)
        os.lchown(os.path.join(root, "rel-link"), 2, 2)
        os.chown(os.path.join(root, "with space.txt"), 3_000_000_000, 4_294_967_294)
    for d, dirs, files in os.walk(root, topdown=False):
        for name in dirs:
            p = os.path.join(d, name)
            if not os.path.islink(p):
                os.utime(p, (MTIME - 5, MTIME - 5))
    os.utime(root, (MTIME - 7, MTIME - 7))
    return root


def snapshot(root, ns=True, owners=IS_ROOT, links_times=False):
    """{relpath: description} of a tree: type, perms, size, content hash,
    mtime (ns or s), symlink target, ownership, and hard-link groups."""
    import hashlib
    out = {}
    inodes = {}
    for d, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            p = os.path.join(d, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            desc = {"type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode)}
            if stat.S_ISLNK(st.st_mode):
                desc["target"] = os.readlink(p)
                del desc["mode"]
                if links_times:
                    desc["mtime"] = st.st_mtime_ns if ns else st.st_mtime_ns // 10**9
            else:
                desc["mtime"] = st.st_mtime_ns if ns else st.st_mtime_ns // 10**9
            if stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                desc["sha256"] = h.hexdigest()
                desc["size"] = st.st_size
                if st.st_nlink > 1:
                    inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                desc["rdev"] = st.st_rdev
            if stat.S_ISDIR(st.st_mode):
                desc.pop("size", None)
            if owners:
                desc["uid"], desc["gid"] = st.st_uid, st.st_gid
            out[rel] = desc
    groups = sorted(sorted(g) for g in inodes.values() if len(g) > 1)
    out["<hardlinks>"] = groups
    out["."] = {"mode": stat.S_IMODE(os.stat(root).st_mode),
                "mtime": os.stat(root).st_mtime_ns if ns else os.stat(root).st_mtime_ns // 10**9}
    return out


def diff_snapshots(a, b):
    """Human-readable differences, empty when equal."""
    lines = []
    for k in sorted(set(a) | set(b), key=str):
        if a.get(k) != b.get(k):
            lines.append("%r: %r != %r" % (k, a.get(k), b.get(k)))
    return "\n".join(lines[:40])


@pytest.fixture(scope="session")
def src_tree(tmp_path_factory):
    """The standard source tree, generated once per test session."""
    base = tmp_path_factory.mktemp("src")
    return make_tree(str(base / "tree"), big_size=int(os.environ.get("GOKR_TEST_BIG", 64 << 20)))


# ----------------------------------------------------------------------------
# A throwaway OpenSSH server on loopback, for remote-shell transports.

SSHD = "/usr/sbin/sshd"


class SSHServer:
    """sshd on an ephemeral loopback port, admitting one generated key for
    the current user; `rsh` is the -e value that reaches it."""

    def __init__(self, tmp):
        d = os.path.join(tmp, "ssh")
        os.makedirs(d, exist_ok=True)
        os.chmod(d, 0o700)
        self.hostkey = os.path.join(d, "host_ed25519")
        self.clientkey = os.path.join(d, "client_ed25519")
        for k in (self.hostkey, self.clientkey):
            if not os.path.exists(k):
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", k], check=True)
        self.authorized = os.path.join(d, "authorized_keys")
        with open(self.clientkey + ".pub") as src, open(self.authorized, "w") as dst:
            dst.write(src.read())
        os.chmod(self.authorized, 0o600)
        os.makedirs("/run/sshd", exist_ok=True)
        self.log = os.path.join(d, "sshd.log")
        for _ in range(5):
            self.port = free_port()
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-p", str(self.port), "-o", "ListenAddress=127.0.0.1",
                 "-h", self.hostkey, "-o", "AuthorizedKeysFile=" + self.authorized,
                 "-o", "PermitRootLogin=prohibit-password", "-o", "StrictModes=no",
                 "-o", "UsePAM=no", "-o", "PidFile=none", "-o", "PasswordAuthentication=no",
                 "-o", "SetEnv=PYTHONDONTWRITEBYTECODE=1"],
                stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
            try:
                wait_port(self.port, self.proc)
                break
            except RuntimeError:
                stop(self.proc)
        else:
            raise RuntimeError("sshd did not start")
        self.rsh = ("ssh -p %d -i %s -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                    "-o LogLevel=ERROR -o BatchMode=yes" % (self.port, self.clientkey))

    def stop(self):
        stop(self.proc)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    need(os.path.exists(SSHD) and shutil.which("ssh-keygen") and shutil.which("ssh"), "OpenSSH server and client")
    s = SSHServer(str(tmp_path_factory.mktemp("sshd")))
    yield s
    s.stop()


def client_cmd():
    return [sys.executable, os.path.join(HERE, "client.py")]


def daemon_cmd():
    return [sys.executable, os.path.join(HERE, "daemon.py")]
