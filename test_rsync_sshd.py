"""The SSH listener against the real OpenSSH client and stock rsync: pulls
over `rsync -e ssh rsync://...`, everything else refused, host keys,
authorized_keys, and clients that are not SSH clients at all."""

import base64
import os
import shlex
import shutil
import socket
import stat
import subprocess
import threading
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

import daemon
import rsync_sshd
from conftest import MTIME, diff_snapshots, make_tree, need, run, snapshot

SSH = shutil.which("ssh")
SSH_KEYGEN = shutil.which("ssh-keygen")
SSH_KEYSCAN = shutil.which("ssh-keyscan")
SFTP = shutil.which("sftp")
ENV = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
DAEMON_ARGV = ["rsync", "--server", "--daemon", "."]


@pytest.fixture(scope="session")
def openssh():
    need(SSH and SSH_KEYGEN and SSH_KEYSCAN and SFTP, "OpenSSH client (ssh, ssh-keygen, ssh-keyscan, sftp)")


def keygen(path, kind="ed25519", *extra):
    subprocess.run([SSH_KEYGEN, "-q", "-t", kind, "-N", "", "-C", "test-" + kind, *extra, "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL)
    return str(path)


@pytest.fixture(scope="session")
def keys(tmp_path_factory, openssh):
    """Client keys: `listed` and `other` (ed25519), `ecdsa` and `rsa`."""
    d = tmp_path_factory.mktemp("clientkeys")
    return {"listed": keygen(d / "listed"), "other": keygen(d / "other"),
            "ecdsa": keygen(d / "ecdsa", "ecdsa"), "rsa": keygen(d / "rsa", "rsa", "-b", "2048")}


def pubkey(path):
    with open(path + ".pub") as f:
        return f.read().strip()


def ssh_opts(port, key=None):
    opts = ["-F", "/dev/null", "-p", str(port), "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes"]
    if key:
        return opts + ["-o", "IdentitiesOnly=yes", "-i", key]
    return opts + ["-o", "PubkeyAuthentication=no"]


def rsh(port, key=None):
    return " ".join(shlex.quote(a) for a in [SSH] + ssh_opts(port, key))


def ssh(port, key, *args, check=False, **kw):
    return run([SSH, *ssh_opts(port, key), *args], check=check, env=ENV, stdin=subprocess.DEVNULL,
               timeout=120, **kw)


def rsync_ssh(rsync_bin, port, key, *args, check=True):
    return run([rsync_bin, "-e", rsh(port, key), *args], check=check, env=ENV, stdin=subprocess.DEVNULL,
               timeout=300)


@pytest.fixture
def start_listener(tmp_path, openssh):
    """SSHListeners on 127.0.0.1:0, each serving module `m` with daemon.py's
    session code; each records the serve() calls and its log lines."""
    started = []

    def start(module_path=None, host_key=None, cls=rsync_sshd.SSHListener, address=("127.0.0.1", 0), **kw):
        cfg = daemon.Config()
        if module_path:
            cfg.add_module(daemon.Module("m", str(module_path)))
        calls, logs = [], []

        def serve(transport, peer, argv):
            calls.append((peer, argv))
            return daemon.serve_connection(transport, cfg, peer, logs.append)
        if host_key is None:
            host_key = rsync_sshd.load_or_create_host_key(str(tmp_path / "host_key"))
        listener = cls(address, host_key, serve, log=logs.append, **kw)
        thread = threading.Thread(target=listener.serve_forever, daemon=True)
        thread.start()
        listener.port, listener.calls, listener.logs = listener.server_address[1], calls, logs
        started.append((listener, thread))
        return listener
    yield start
    for listener, thread in started:
        listener.shutdown()
        thread.join()


@pytest.fixture
def module(tmp_path):
    root = tmp_path / "mod"
    root.mkdir()
    """A small module whose times are in the past: stock rsync leaves alone a
    directory time within the second it creates the directory in."""
    (root / "file").write_bytes(os.urandom(100_000))
    (root / "small").write_text("small\n")
    (root / "dir").mkdir()
    for i, p in enumerate([root / "file", root / "small", root / "dir", root]):
        os.utime(p, ns=(MTIME * 10**9, (MTIME + i) * 10**9 + 123))
    return root


def serves(listener, rsync_bin, key, dst):
    """A real pull through the listener works and brings the module."""
    rsync_ssh(rsync_bin, listener.port, key, "-a", "rsync://127.0.0.1/m/", str(dst) + "/")
    return sorted(os.listdir(dst)) == ["dir", "file", "small"]


def wait_for(predicate, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("gave up waiting for " + what)
        time.sleep(0.05)


# ----------------------------------------------------------------------------
# Pulls


def test_pull_over_ssh_equals_the_source(start_listener, keys, tmp_path, rsync_bin):
    src = make_tree(str(tmp_path / "src"), big_size=8 << 20)
    listener = start_listener(src)
    dst = tmp_path / "dst"
    rsync_ssh(rsync_bin, listener.port, keys["listed"], "-aH", "rsync://127.0.0.1/m/", str(dst) + "/")
    got, want = snapshot(str(dst)), snapshot(src)
    assert got == want, diff_snapshots(got, want)
    assert listener.calls == [("127.0.0.1", DAEMON_ARGV)]


def test_module_list_and_rsync_path(start_listener, module, keys, rsync_bin):
    listener = start_listener(module)
    p = rsync_ssh(rsync_bin, listener.port, keys["listed"], "rsync://127.0.0.1/")
    assert [line.split()[0] for line in p.stdout.decode().splitlines()] == ["m"]
    rsync_ssh(rsync_bin, listener.port, keys["listed"], "--rsync-path=python3 daemon.py", "rsync://127.0.0.1/")
    assert [argv for _, argv in listener.calls] == [
        DAEMON_ARGV, ["python3", "daemon.py", "--server", "--daemon", "."]]


def test_exit_status_is_the_sessions(start_listener, module, keys, rsync_bin):
    listener = start_listener(module)
    p = ssh(listener.port, keys["listed"], "127.0.0.1", *DAEMON_ARGV)
    assert p.stdout.startswith(b"@RSYNCD: ") and p.returncode == 5
    p = rsync_ssh(rsync_bin, listener.port, keys["listed"], "rsync://127.0.0.1/nope/", check=False)
    assert p.returncode == 5 and b"Unknown module 'nope'" in p.stderr


def test_ipv6(start_listener, module, keys, rsync_bin):
    try:
        socket.socket(socket.AF_INET6).close()
        listener = start_listener(module, address=("::1", 0))
    except OSError:
        listener = need(None, "an IPv6 loopback")
    p = rsync_ssh(rsync_bin, listener.port, keys["listed"], "rsync://[::1]/")
    assert p.stdout.split()[0] == b"m"
    assert listener.calls == [("::1", DAEMON_ARGV)]


def test_concurrent_pulls(start_listener, module, keys, rsync_bin, tmp_path):
    listener = start_listener(module)
    procs = [subprocess.Popen([rsync_bin, "-a", "-e", rsh(listener.port, keys["listed"]),
                               "rsync://127.0.0.1/m/", str(tmp_path / ("d%d" % i)) + "/"],
                              env=ENV, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for i in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    for i in range(4):
        assert snapshot(str(tmp_path / ("d%d" % i))) == snapshot(str(module))


# ----------------------------------------------------------------------------
# Everything else is refused


def test_other_commands_are_refused(start_listener, module, keys):
    listener = start_listener(module)
    for command in (["ls", "/"], ["rsync", "--server", "--sender", "-logDtpre.iLsfxC", ".", "/etc"],
                    ["rsync", "--server", "--daemon", "--config=/etc/rsyncd.conf", "."]):
        p = ssh(listener.port, keys["listed"], "127.0.0.1", *command)
        assert p.returncode == 127, p.stderr
        assert b"command not found" in p.stderr and b"rsync://" in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1
    assert listener.calls == []
    assert sum("refused exec" in line for line in listener.logs) == 3


def test_shell_is_refused(start_listener, module, keys):
    listener = start_listener(module)
    p = ssh(listener.port, keys["listed"], "-T", "127.0.0.1")
    assert p.returncode == 1 and b"no shell" in p.stderr
    p = ssh(listener.port, keys["listed"], "-tt", "127.0.0.1")
    assert p.returncode != 0
    assert listener.calls == []
    assert any("refused pty" in line for line in listener.logs)
    assert sum("refused shell" in line for line in listener.logs) >= 1


def test_sftp_is_refused(start_listener, module, keys):
    listener = start_listener(module)
    opts = ssh_opts(listener.port, keys["listed"])
    opts[opts.index("-p")] = "-P"
    p = run([SFTP, *opts, "-b", "/dev/null", "127.0.0.1"], check=False, env=ENV, stdin=subprocess.DEVNULL,
            timeout=120)
    assert p.returncode != 0
    p = ssh(listener.port, keys["listed"], "-s", "127.0.0.1", "sftp")
    assert p.returncode != 0
    assert sum("refused subsystem 'sftp'" in line for line in listener.logs) == 2
    assert listener.calls == []


def test_port_forwarding_is_refused(start_listener, module, keys):
    listener = start_listener(module)
    p = ssh(listener.port, keys["listed"], "-W", "127.0.0.1:%d" % listener.port, "127.0.0.1")
    assert p.returncode == 255
    p = ssh(listener.port, keys["listed"], "-N", "-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9",
            "127.0.0.1")
    assert p.returncode == 255 and b"forwarding failed" in p.stderr
    assert any("refused port forwarding" in line for line in listener.logs)
    assert any("refused remote port forwarding" in line for line in listener.logs)


@pytest.mark.parametrize("command,argv", [
    (b"rsync --server --daemon .", DAEMON_ARGV),
    (b"/usr/bin/rsync --server --daemon .", ["/usr/bin/rsync", "--server", "--daemon", "."]),
    (b"gokr-rsyncd --server --daemon .", ["gokr-rsyncd", "--server", "--daemon", "."]),
    (b"python3 daemon.py --server --daemon .", ["python3", "daemon.py", "--server", "--daemon", "."]),
    (b"'/opt/my rsync/rsync' --daemon --server .", ["/opt/my rsync/rsync", "--daemon", "--server", "."]),
])
def test_parse_exec_command_accepts_daemon_starts(command, argv):
    assert rsync_sshd.parse_exec_command(command) == argv


@pytest.mark.parametrize("command", [
    b"", b"ls /", b"rsync", b"--server --daemon .", b"rsync --server --daemon", b"rsync --daemon .",
    b"rsync --server .", b"rsync --server --daemon . extra", b"rsync --server --daemon /tmp .",
    b"rsync --server --sender -vlogDtpre.iLsfxC . /etc", b"rsync --server --daemon . ; rm -rf /",
    b"rsync --server --daemon .; id", b"rsync '--server --daemon .", b"rsync --server --daemon \xff .",
    b"rsync --server --daemon --config=/etc/passwd .", b"rsync --server --daemon --gokr.config=/x .",
    b"rsync --server --daemon --modulemap=m=/ .", b"rsync --server --daemon -M uid=0 .",
    b"rsync --server --daemon --log-file=/etc/x .", b"rsync --server --daemon .\0",
])
def test_parse_exec_command_refuses_the_rest(command):
    assert rsync_sshd.parse_exec_command(command) is None


# ----------------------------------------------------------------------------
# Host keys


def keyscan(port):
    p = run([SSH_KEYSCAN, "-p", str(port), "-T", "30", "127.0.0.1"], env=ENV, stdin=subprocess.DEVNULL)
    return sorted(" ".join(line.split()[1:3]) for line in p.stdout.decode().splitlines()
                  if line and not line.startswith("#"))


def test_host_key_is_created_private_and_kept(start_listener, tmp_path, module):
    path = tmp_path / "state" / "gokr-rsyncd" / "ssh_host_ed25519_key"
    old = os.umask(0)
    try:
        key = rsync_sshd.load_or_create_host_key(str(path))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(path.parent) == [path.name]
    public = "ssh-ed25519 " + key.get_base64()
    assert run([SSH_KEYGEN, "-y", "-f", str(path)]).stdout.decode().split()[:2] == public.split()
    first = start_listener(module, host_key=key)
    assert keyscan(first.port) == [public]
    first.shutdown()
    again = rsync_sshd.load_or_create_host_key(str(path))
    assert again.asbytes() == key.asbytes()
    second = start_listener(module, host_key=again)
    assert keyscan(second.port) == [public]
    fp = run([SSH_KEYGEN, "-lf", str(path)]).stdout.decode().split()[1]
    assert any(fp in line for line in second.logs)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_host_key_readable_by_others_is_refused(tmp_path, mode):
    path = tmp_path / "host_key"
    rsync_sshd.load_or_create_host_key(str(path))
    os.chmod(path, mode)
    with pytest.raises(rsync_sshd.SSHSetupError, match="chmod 600"):
        rsync_sshd.load_or_create_host_key(str(path))


@pytest.mark.parametrize("kind,extra", [("ed25519", ()), ("ecdsa", ()), ("rsa", ("-b", "2048")),
                                        ("rsa", ("-b", "2048", "-m", "PEM")), ("ecdsa", ("-m", "PEM"))])
def test_existing_host_keys_load(tmp_path, openssh, kind, extra):
    path = keygen(tmp_path / "key", kind, *extra)
    key = rsync_sshd.load_or_create_host_key(path)
    assert pubkey(path).split()[:2] == [key.get_name(), key.get_base64()]


def test_pkcs8_host_key_loads(tmp_path):
    """The format gokrazy/rsync's Go listener writes its generated key in."""
    path = tmp_path / "key"
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, pem)
    os.close(fd)
    assert rsync_sshd.load_or_create_host_key(str(path)).get_name() == "ssh-ed25519"


def test_unusable_host_keys_are_refused(tmp_path, openssh):
    enc = tmp_path / "enc"
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "secret", "-f", str(enc)], check=True)
    with pytest.raises(rsync_sshd.SSHSetupError, match="passphrase"):
        rsync_sshd.load_or_create_host_key(str(enc))
    junk = tmp_path / "junk"
    fd = os.open(junk, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"not a key\n")
    os.close(fd)
    with pytest.raises(rsync_sshd.SSHSetupError, match="not an OpenSSH or PEM private key"):
        rsync_sshd.load_or_create_host_key(str(junk))


# ----------------------------------------------------------------------------
# authorized_keys


@pytest.fixture
def authorized(tmp_path, keys):
    path = tmp_path / "authorized_keys"
    kind, blob, _ = pubkey(keys["listed"]).split()
    path.write_text("\n".join([
        "# a comment line, and a blank one",
        "",
        'restrict,command="echo ssh-ed25519 %s",from="10.0.0.0/8" %s %s listed key' % (
            pubkey(keys["other"]).split()[1], kind, blob),
        pubkey(keys["ecdsa"]),
        "no-pty " + pubkey(keys["rsa"]),
        "ssh-ed25519 not-base64!",
        "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIA== sk",
    ]) + "\n")
    return path


@pytest.mark.parametrize("which", ["listed", "ecdsa", "rsa"])
def test_listed_keys_are_admitted(start_listener, module, keys, authorized, rsync_bin, tmp_path, which):
    listener = start_listener(module, authorized_keys=str(authorized))
    assert serves(listener, rsync_bin, keys[which], tmp_path / "dst")


def test_unlisted_or_no_key_is_refused(start_listener, module, keys, authorized, rsync_bin, tmp_path):
    listener = start_listener(module, authorized_keys=str(authorized))
    p = ssh(listener.port, keys["other"], "127.0.0.1", *DAEMON_ARGV)
    assert p.returncode == 255
    p = ssh(listener.port, None, "127.0.0.1", *DAEMON_ARGV)
    assert p.returncode == 255
    p = rsync_ssh(rsync_bin, listener.port, keys["other"], "rsync://127.0.0.1/", check=False)
    assert p.returncode != 0
    assert listener.calls == []
    wait_for(lambda: sum("failed" in line for line in listener.logs) == 3, "three failures logged")
    assert sum("is not authorized" in line for line in listener.logs) == 2, listener.logs


def test_authorized_keys_are_read_per_connection(start_listener, module, keys, authorized, rsync_bin,
                                                 tmp_path):
    listener = start_listener(module, authorized_keys=str(authorized))
    assert ssh(listener.port, keys["other"], "127.0.0.1", *DAEMON_ARGV).returncode == 255
    with open(authorized, "a") as f:
        f.write(pubkey(keys["other"]) + "\n")
    assert serves(listener, rsync_bin, keys["other"], tmp_path / "dst")


def test_missing_authorized_keys_file(start_listener, module, tmp_path):
    with pytest.raises(rsync_sshd.SSHSetupError, match="authorized keys"):
        start_listener(module, authorized_keys=str(tmp_path / "nope"))


def test_parse_authorized_keys(keys):
    kind, blob, _ = pubkey(keys["listed"]).split()
    other = pubkey(keys["other"]).split()[1]
    text = '\n'.join([
        '  # comment %s %s' % (kind, other),
        'command="echo \\"quoted %s %s\\"",no-pty %s %s comment' % (kind, other, kind, blob),
        'ssh-dss %s' % other,
    ])
    assert rsync_sshd.parse_authorized_keys(text) == {base64.b64decode(blob)}


# ----------------------------------------------------------------------------
# Clients that are not SSH clients


def connect(listener):
    return socket.create_connection(("127.0.0.1", listener.port), timeout=60)


def read_to_eof(s):
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk
    except ConnectionResetError:
        return data


def test_garbage_and_silence_do_not_stop_the_listener(start_listener, module, keys, rsync_bin, tmp_path):
    listener = start_listener(module, handshake_timeout=2.0)
    silent = connect(listener)
    with connect(listener) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n" + os.urandom(20000))
        assert read_to_eof(s).startswith(b"SSH-2.0-")
    with connect(listener) as s:
        s.sendall(b"SSH-2.0-OpenSSH_9.2\r\n" + os.urandom(20000))
        read_to_eof(s)
    with connect(listener) as s:
        s.sendall(b"SSH-2.0-OpenSSH_9.2\r\n" + b"\0\0\0\x0c\x0a\x15" + b"\0" * 10)
        read_to_eof(s)
    assert serves(listener, rsync_bin, keys["listed"], tmp_path / "dst")
    assert read_to_eof(silent).startswith(b"SSH-2.0-gokr_rsyncd")
    silent.close()
    wait_for(lambda: sum("failed" in line for line in listener.logs) == 4, "four failures logged")
    assert any("not authenticated within" in line for line in listener.logs)
    assert serves(listener, rsync_bin, keys["listed"], tmp_path / "dst2")


def test_unauthenticated_connections_are_capped(start_listener, module, keys, rsync_bin, tmp_path):
    class Small(rsync_sshd.SSHListener):
        MAX_UNAUTHENTICATED = 2

    listener = start_listener(module, cls=Small)
    held = [connect(listener) for _ in range(2)]
    for s in held:
        assert s.recv(100).startswith(b"SSH-2.0-")
    with connect(listener) as s:
        assert read_to_eof(s) == b""
    assert any("dropped" in line for line in listener.logs)
    for s in held:
        s.close()
    wait_for(lambda: sum("failed" in line for line in listener.logs) == 2, "the held connections to end")
    assert serves(listener, rsync_bin, keys["listed"], tmp_path / "dst")


def test_client_vanishing_mid_transfer_ends_only_its_session(start_listener, module, keys, rsync_bin,
                                                             tmp_path):
    with open(module / "big", "wb") as f:
        f.write(os.urandom(32 << 20))
    listener = start_listener(module)
    dst = tmp_path / "partial"
    dst.mkdir()
    p = subprocess.Popen([rsync_bin, "-a", "--bwlimit=2000", "-e", rsh(listener.port, keys["listed"]),
                          "rsync://127.0.0.1/m/big", str(dst) + "/"],
                         env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: any(f.stat().st_size for f in dst.iterdir()), "the transfer to start")
    finally:
        os.killpg(p.pid, 9)
        p.wait()
    wait_for(lambda: any(line.startswith("finished m") for line in listener.logs), "the session to end")
    os.unlink(module / "big")
    assert serves(listener, rsync_bin, keys["listed"], tmp_path / "dst")


def test_shutdown_ends_sessions(start_listener, module, keys):
    listener = start_listener(module)
    p = subprocess.Popen([SSH, *ssh_opts(listener.port, keys["listed"]), "127.0.0.1", *DAEMON_ARGV],
                         env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline().startswith(b"@RSYNCD: ")
    listener.shutdown()
    p.communicate(timeout=60)
    assert p.returncode != 0
    with pytest.raises(OSError):
        connect(listener).close()
