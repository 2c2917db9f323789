"""gokr-rsyncd in-process: configuration, and files that vanish or cannot be
read between the file list and the transfer (rsync's exit codes 24 and 23)."""

import os
import threading

import pytest

import daemon
import rsync_sender
from conftest import run


@pytest.fixture
def inproc(tmp_path):
    servers = []

    def start(modules):
        cfg = daemon.Config()
        for name, path in modules.items():
            cfg.add_module(daemon.Module(name, path))
        logs = []
        srv = daemon.DaemonServer(("127.0.0.1", 0), cfg, logs.append)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        srv.url = "rsync://127.0.0.1:%d" % srv.server_address[1]
        srv.logs = logs
        return srv
    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def tree(tmp_path):
    mod = tmp_path / "mod"
    mod.mkdir()
    for name in ("a", "vanish", "locked", "z"):
        (mod / name).write_bytes(name.encode() * 1000)
    return mod


def test_vanished_file_gives_24_and_the_rest_transfers(inproc, tmp_path, rsync_bin, monkeypatch):
    mod = tree(tmp_path)
    srv = inproc({"m": str(mod)})
    real_open = rsync_sender.Base.open_file

    def racing_open(self, rel, noatime=False):
        if rel == b"vanish":
            os.unlink(mod / "vanish")
        return real_open(self, rel, noatime)
    monkeypatch.setattr(rsync_sender.Base, "open_file", racing_open)
    dst = tmp_path / "dst"
    p = run([rsync_bin, "-a", srv.url + "/m/", str(dst) + "/"], check=False)
    assert p.returncode == 24, p.stderr
    assert b"vanished" in p.stderr
    assert sorted(os.listdir(dst)) == ["a", "locked", "z"]
    assert (dst / "z").read_bytes() == b"z" * 1000


def test_unreadable_file_gives_23_and_the_rest_transfers(inproc, tmp_path, rsync_bin, monkeypatch):
    mod = tree(tmp_path)
    srv = inproc({"m": str(mod)})
    real_open = rsync_sender.Base.open_file

    def denied_open(self, rel, noatime=False):
        if rel == b"locked":
            raise PermissionError(13, "Permission denied")
        return real_open(self, rel, noatime)
    monkeypatch.setattr(rsync_sender.Base, "open_file", denied_open)
    for proto in ("--protocol=29", "--protocol=32"):
        dst = tmp_path / ("dst" + proto[-2:])
        p = run([rsync_bin, "-a", proto, srv.url + "/m/", str(dst) + "/"], check=False)
        assert p.returncode == 23, p.stderr
        assert b"Permission denied" in p.stderr
        assert sorted(os.listdir(dst)) == ["a", "vanish", "z"]


def test_missing_argument_gives_23(inproc, tmp_path, rsync_bin):
    mod = tree(tmp_path)
    srv = inproc({"m": str(mod)})
    dst = tmp_path / "dst"
    p = run([rsync_bin, "-a", srv.url + "/m/a", srv.url + "/m/nothere", str(dst) + "/"], check=False)
    assert p.returncode == 23
    assert b"nothere" in p.stderr
    assert os.listdir(dst) == ["a"]


def test_toml_config(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[[listener]]\nrsyncd = "localhost:8730"\n'
                 '[[module]]\nname = "pub"\npath = "%s"\ncomment = "public"\nacl = ["allow 10.0.0.0/8", "deny all"]\n'
                 % tmp_path)
    cfg = daemon.load_toml(str(p))
    assert [(l.kind, l.address) for l in cfg.listeners] == [("rsyncd", "localhost:8730")]
    m = cfg.modules["pub"]
    assert m.comment == "public" and m.path == str(tmp_path)
    assert m.check_access("10.1.2.3") and not m.check_access("127.0.0.1")
    assert m.check_access("::ffff:10.0.0.1") and not m.check_access("::1")


@pytest.mark.parametrize("text", [
    '[[module]]\nname = "x"\n',
    '[[module]]\nname = "x"\npath = "/"\nacl = ["permit all"]\n',
    '[[module]]\nname = "x"\npath = "/"\nacl = ["allow 300.0.0.0/8"]\n',
    '[[module]]\nname = "x"\npath = "/"\nfrobnicate = true\n',
    '[[module]]\nname = "a/b"\npath = "/"\n',
    '[[listener]]\nhttp = "x"\n',
    'not toml at all [',
])
def test_bad_config_is_refused_with_a_message(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(daemon.ConfigError):
        daemon.load_toml(str(p))


def test_daemon_cli_errors(tmp_path):
    import subprocess
    import sys
    p = subprocess.run([sys.executable, daemon.__file__, "--daemon", "--gokr.listen=127.0.0.1:0",
                        "--gokr.modulemap=m=%s" % (tmp_path / "missing")], capture_output=True, timeout=30)
    assert p.returncode == 1 and b"not a directory" in p.stderr
    p = subprocess.run([sys.executable, daemon.__file__, "--daemon", "--gokr.listen=127.0.0.1:0",
                        "--gokr.modulemap=nopath"], capture_output=True, timeout=30)
    assert p.returncode == 1 and b"NAME=PATH" in p.stderr


def test_module_args_strip_module_name():
    assert daemon._module_args(["--server", "--sender", "-r", ".", "m/a", "m", "m/"], "m") == \
        ["--server", "--sender", "-r", ".", "a", ".", "."]


def test_handshake_deadline_drops_idle_and_trickling_clients(our_daemon_factory, tmp_path, rsync_bin):
    import socket
    import time
    mod = tree(tmp_path)
    d = our_daemon_factory({"m": str(mod)}, extra=["--gokr.handshake_timeout=1.5"])
    idle = socket.create_connection(("127.0.0.1", d.port))
    trickle = socket.create_connection(("127.0.0.1", d.port))
    trickle.sendall(b"@RSYNCD: 32.0 md5\n")
    t0 = time.monotonic()
    closed = {idle: None, trickle: None}
    while None in closed.values() and time.monotonic() - t0 < 20:
        for s, v in closed.items():
            if v is None:
                s.settimeout(0.2)
                try:
                    if s is trickle:
                        s.sendall(b"m"[:1])
                    data = s.recv(4096)
                    if not data:
                        closed[s] = time.monotonic() - t0
                except socket.timeout:
                    pass
                except OSError:
                    closed[s] = time.monotonic() - t0
    assert closed[idle] is not None and closed[trickle] is not None, closed
    assert run([rsync_bin, "-a", d.url + "/m/a", str(tmp_path / "x")]).returncode == 0


def test_max_connections(tmp_path, our_daemon_factory, rsync_bin):
    import socket
    mod = tree(tmp_path)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[module]]\nname = "m"\npath = "%s"\nmax_connections = 1\n' % mod)
    d = our_daemon_factory({}, extra=["--gokr.config=%s" % cfg])
    holder = socket.create_connection(("127.0.0.1", d.port))
    holder.sendall(b"@RSYNCD: 32.0 md5\nm\n")
    buf = b""
    while b"@RSYNCD: OK" not in buf:
        buf += holder.recv(4096)
    p = run([rsync_bin, "-a", d.url + "/m/a", str(tmp_path / "x")], check=False)
    assert p.returncode == 5 and b"max connections (1) reached" in p.stderr
    holder.close()
    import time
    for _ in range(50):
        p = run([rsync_bin, "-a", d.url + "/m/a", str(tmp_path / "x")], check=False)
        if p.returncode == 0:
            break
        time.sleep(0.1)
    assert p.returncode == 0


def test_socket_activation(tmp_path, rsync_bin):
    import socket
    import subprocess
    import sys
    from conftest import IS_ROOT, stop
    mod = tree(tmp_path)
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    port = lsock.getsockname()[1]
    fd = lsock.fileno()

    def child():
        os.dup2(fd, 3)
        os.set_inheritable(3, True)
    user = "--gokr.user=root" if IS_ROOT else "--gokr.insecure_writable_modules"
    p = subprocess.Popen(["sh", "-c", 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"', "sh", sys.executable,
                          daemon.__file__, "--daemon", "--gokr.modulemap=m=%s" % mod, user],
                         preexec_fn=child, close_fds=False, stderr=subprocess.DEVNULL)
    lsock.close()
    try:
        out = run([rsync_bin, "-a", "rsync://127.0.0.1:%d/m/" % port, str(tmp_path / "dst") + "/"])
        assert out.returncode == 0
        assert sorted(os.listdir(tmp_path / "dst")) == ["a", "locked", "vanish", "z"]
    finally:
        stop(p)


def test_file_shrinking_while_mapped_does_not_kill_the_daemon(inproc, tmp_path, rsync_bin, monkeypatch):
    """A file truncated while the delta search reads it: the read sees zeros
    instead of a SIGBUS, the client is told (exit 23), the daemon serves on."""
    import rsync_delta
    mod = tmp_path / "mod"
    mod.mkdir()
    data = os.urandom(3 << 20)
    (mod / "big").write_bytes(data)
    stale = tmp_path / "stale"
    stale.write_bytes(data[:-5000] + os.urandom(5000))
    srv = inproc({"m": str(mod)})
    real_match = rsync_delta.match

    def shrinking(table, buf, length, strong, inplace=False):
        os.truncate(mod / "big", 4096)
        return real_match(table, buf, length, strong, inplace)
    monkeypatch.setattr(rsync_delta, "match", shrinking)
    p = run([rsync_bin, "-a", "--no-whole-file", "-I", srv.url + "/m/big", str(stale)], check=False)
    assert p.returncode == 23, p.stderr
    assert b"changed size" in p.stderr
    monkeypatch.setattr(rsync_delta, "match", real_match)
    (mod / "small").write_text("still here")
    run([rsync_bin, "-a", srv.url + "/m/small", str(tmp_path / "small")])
    assert (tmp_path / "small").read_text() == "still here"


@pytest.mark.parametrize("size", [1000, 300_000])
def test_file_shrinking_while_sent_whole(inproc, tmp_path, rsync_bin, monkeypatch, size):
    """A file truncated after it was opened for a whole-file send (the small
    files' single read, and the large files' slices): the missing bytes go
    as zeros, the client is told (exit 23), the daemon serves on."""
    import rsync_sender
    mod = tmp_path / "mod"
    mod.mkdir()
    (mod / "f").write_bytes(os.urandom(size))
    srv = inproc({"m": str(mod)})
    real = rsync_sender.Sender._send_whole

    def shrinking(self, fd, length):
        os.truncate(mod / "f", 100)
        return real(self, fd, length)
    monkeypatch.setattr(rsync_sender.Sender, "_send_whole", shrinking)
    p = run([rsync_bin, "-a", srv.url + "/m/f", str(tmp_path / "got")], check=False)
    assert p.returncode == 23, p.stderr
    assert b"read errors mapping" in p.stderr
    got = (tmp_path / "got").read_bytes()
    assert len(got) == size and got[:100] == (mod / "f").read_bytes() and got[100:] == bytes(size - 100)
    monkeypatch.setattr(rsync_sender.Sender, "_send_whole", real)
    (mod / "small").write_text("still here")
    run([rsync_bin, "-a", srv.url + "/m/small", str(tmp_path / "small")])
    assert (tmp_path / "small").read_text() == "still here"


def test_failed_verification_is_redone(inproc, tmp_path, monkeypatch):
    """A file whose sum does not match its data (here: the daemon spoils the
    first sum it sends) is discarded with rsync's warning and asked for
    again in the redo phase; the second copy lands, and the run succeeds."""
    import subprocess
    from conftest import client_cmd
    mod = tmp_path / "mod"
    (mod / "d").mkdir(parents=True)
    for name, size in (("d/small", 3000), ("d/other", 10), ("big", 3 << 20)):
        (mod / name).write_bytes(os.urandom(size))
    srv = inproc({"m": str(mod)})
    spoiled = []
    real_small = rsync_sender.Sender._send_small

    def spoil_small(self, fd, size):
        if not spoiled:
            spoiled.append(size)
            real_write = self.sess.out.write_parts

            def write_parts(parts):
                self.sess.out.write_parts = real_write
                parts[-1] = bytes(len(parts[-1]))
                return real_write(parts)
            self.sess.out.write_parts = write_parts
        return real_small(self, fd, size)
    monkeypatch.setattr(rsync_sender.Sender, "_send_small", spoil_small)
    dst = tmp_path / "dst"
    p = subprocess.run(client_cmd() + ["-a", srv.url + "/m/", str(dst) + "/"], capture_output=True, timeout=120)
    assert spoiled
    assert p.returncode == 0, p.stderr
    assert b"failed verification -- update discarded (will try again)" in p.stderr
    for name in ("d/small", "d/other", "big"):
        assert (dst / name).read_bytes() == (mod / name).read_bytes()
    assert not [n for n in os.listdir(dst / "d") if n.startswith(".")], "temp file left behind"
