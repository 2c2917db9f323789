"""gokr-rsyncd started as root: a mount namespace holding only the modules,
read-only unless writable, and the serving process running as nobody.
Without root: modules it could write to are refused unless writable."""

import errno
import os
import subprocess
import sys

import pytest

from conftest import IS_ROOT, daemon_cmd, run, snapshot, wait_port, free_port, stop

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux namespaces")


def start(args, tmp_path, **kw):
    """The daemon, once it logged that it listens (after confining itself)."""
    import time
    port = free_port()
    log = open(tmp_path / ("daemon-%d.log" % port), "w+")
    p = subprocess.Popen(daemon_cmd() + ["--daemon", "--gokr.listen=127.0.0.1:%d" % port] + args,
                         stderr=log, **kw)
    deadline = time.monotonic() + 20
    while "listening on" not in open(log.name).read():
        assert p.poll() is None and time.monotonic() < deadline, open(log.name).read()
        time.sleep(0.05)
    wait_port(port, p)
    return p, "rsync://127.0.0.1:%d" % port


def status(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return line.split()[1:]


@pytest.fixture
def modules(tmp_path):
    ro = tmp_path / "pub"
    ro.mkdir()
    (ro / "hello.txt").write_text("hello\n")
    os.chmod(ro / "hello.txt", 0o644)
    rw = tmp_path / "inbox"
    rw.mkdir()
    os.chown(rw, 65534, 65534) if IS_ROOT else None
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('[[module]]\nname = "pub"\npath = "%s"\n[[module]]\nname = "inbox"\npath = "%s"\n'
                   'writable = true\n' % (ro, rw))
    return ro, rw, cfg


@pytest.mark.skipif(not IS_ROOT, reason="the jail needs root")
def test_root_daemon_is_jailed_and_unprivileged(modules, tmp_path, rsync_bin):
    ro, rw, cfg = modules
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    p, url = start(["--gokr.config=%s" % cfg], tmp_path, env=dict(os.environ, TMPDIR=str(tmpdir)))
    try:
        assert os.listdir(tmpdir) == [], "the jail left its root behind on the host"
        assert status(p.pid, "Uid") == ["65534"] * 4
        assert status(p.pid, "Gid") == ["65534"] * 4
        assert status(p.pid, "Groups") == []
        root = "/proc/%d/root" % p.pid
        assert os.listdir(root) == ["modules"]
        assert sorted(os.listdir(root + "/modules")) == ["inbox", "pub"]
        with pytest.raises(OSError) as e:
            open(root + "/modules/pub/new-file", "w")
        assert e.value.errno == errno.EROFS
        with open(root + "/modules/inbox/probe", "w") as f:
            f.write("writable")
        os.unlink(root + "/modules/inbox/probe")
        dst = tmp_path / "dst"
        run([rsync_bin, "-a", url + "/pub/", str(dst) + "/"])
        assert (dst / "hello.txt").read_text() == "hello\n"
        src = tmp_path / "upload"
        src.mkdir()
        (src / "up.txt").write_text("up\n")
        run([rsync_bin, "-rt", str(src) + "/", url + "/inbox/"])
        assert (rw / "up.txt").read_text() == "up\n"
        assert os.stat(rw / "up.txt").st_uid == 65534
        assert snapshot(str(ro))["hello.txt"]["sha256"]
    finally:
        stop(p)


def run_as_nobody(argv):
    """daemon.main(argv) in a forked child that became nobody (the Python
    installation may not be readable by nobody, so no new interpreter)."""
    import daemon
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.dup2(w, 2)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            sys.stderr = os.fdopen(2, "w")
            code = daemon.main(argv)
            sys.stderr.flush()
        except BaseException:
            code = 99
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        err = f.read()
    _, st = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(st), err


@pytest.mark.skipif(not IS_ROOT, reason="needs root to become another user")
def test_unprivileged_daemon_refuses_writable_module(tmp_path):
    import shutil
    import tempfile
    top = tempfile.mkdtemp(prefix="gokr-jail-test-")
    os.chmod(top, 0o755)
    mod = os.path.join(top, "mod")
    os.mkdir(mod)
    os.chown(mod, 65534, 65534)
    code, err = run_as_nobody(["--daemon", "--gokr.listen=127.0.0.1:0", "--gokr.modulemap=m=%s" % mod])
    try:
        assert code == 1, err
        assert b"module m" in err and b"writable" in err
    finally:
        shutil.rmtree(top)
