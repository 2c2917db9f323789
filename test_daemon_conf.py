"""gokr-rsyncd standing in for rsyncd: rsyncd.conf, the rsync daemon command
line (detaching, pid file), auth, hosts deny, refuse options, daemon
filters, and the SSH listeners driven through the daemon's own options."""

import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import IS_ROOT, daemon_cmd, free_port, need, run, snapshot, stop, wait_port


def conf_file(tmp_path, body, name="rsyncd.conf"):
    p = tmp_path / name
    p.write_text("reverse lookup = no\n" + ("uid = root\ngid = root\n" if IS_ROOT else "") + body)
    return p


def start_conf(tmp_path, conf, extra=()):
    port = free_port()
    log = tmp_path / ("d%d.log" % port)
    p = subprocess.Popen(daemon_cmd() + ["--daemon", "--no-detach", "--port=%d" % port, "--address=127.0.0.1",
                                         "--config=%s" % conf, "--log-file=%s" % log]
                         + ([] if IS_ROOT else ["--gokr.insecure_writable_modules"]) + list(extra),
                         stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not (log.exists() and "listening on" in log.read_text()):
        assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.poll() is not None else ""
        time.sleep(0.05)
    wait_port(port, p)
    return p, "rsync://127.0.0.1:%d" % port


@pytest.fixture
def procs():
    started = []
    yield started
    for p in started:
        stop(p)


def test_rsyncd_conf_and_toml_serve_the_same(src_tree, tmp_path, rsync_bin, procs, our_daemon_factory):
    conf = conf_file(tmp_path, "motd file = %s\n[m]\npath = %s\ncomment = the tree\n" % (tmp_path / "motd", src_tree))
    (tmp_path / "motd").write_text("Welcome to the test mirror\n")
    p, url = start_conf(tmp_path, conf)
    procs.append(p)
    toml = our_daemon_factory({"m": src_tree})
    a, b = tmp_path / "a", tmp_path / "b"
    out = run([rsync_bin, "-a", url + "/m/", str(a) + "/"])
    run([rsync_bin, "-a", toml.url + "/m/", str(b) + "/"])
    assert snapshot(str(a)) == snapshot(str(b))
    listing = run([rsync_bin, url + "/"]).stdout.decode()
    assert "Welcome to the test mirror" in listing and "the tree" in listing
    assert b"Welcome" in out.stdout


def test_detached_daemon_writes_pid_file(src_tree, tmp_path, rsync_bin):
    port = free_port()
    pidf = tmp_path / "gokr.pid"
    log = tmp_path / "d.log"
    conf = conf_file(tmp_path, "pid file = %s\nlog file = %s\n[m]\npath = %s\n" % (pidf, log, src_tree))
    r = subprocess.run(daemon_cmd() + ["--daemon", "--port=%d" % port, "--address=127.0.0.1", "--config=%s" % conf]
                       + ([] if IS_ROOT else ["--gokr.insecure_writable_modules"]), timeout=30)
    assert r.returncode == 0
    deadline = time.monotonic() + 20
    while not pidf.exists() or not pidf.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pid = int(pidf.read_text())
    try:
        wait_port(port)
        dst = tmp_path / "dst"
        run([rsync_bin, "-a", "rsync://127.0.0.1:%d/m/foo.txt" % port, str(dst)])
        assert dst.read_text() == "foo\n"
        assert "listening on port %d" % port in log.read_text()
    finally:
        os.kill(pid, signal.SIGTERM)


@pytest.mark.parametrize("digest", ["md5", "sha512"])
def test_auth_users_and_secrets(src_tree, tmp_path, rsync_bin, procs, digest):
    secrets = tmp_path / "secrets"
    secrets.write_text("joe:s3cret\nann:other\n")
    os.chmod(secrets, 0o600)
    conf = conf_file(tmp_path, "[m]\npath = %s\nauth users = joe, ann:deny\nsecrets file = %s\n" % (src_tree, secrets))
    p, url = start_conf(tmp_path, conf)
    procs.append(p)
    port = url.rsplit(":", 1)[1]
    env = dict(os.environ, RSYNC_PASSWORD="s3cret")
    from test_client import ours
    ours("rsync://joe@127.0.0.1:%s/m/foo.txt" % port, str(tmp_path / "ok"),
         env={"RSYNC_PASSWORD": "s3cret", "RSYNC_AUTH_DIGESTS": digest})
    assert (tmp_path / "ok").read_text() == "foo\n"
    run([rsync_bin, "rsync://joe@127.0.0.1:%s/m/foo.txt" % port, str(tmp_path / "ok2")], env=env)
    for user, pw in (("joe", "wrong"), ("ann", "other"), ("bob", "s3cret")):
        r = run([rsync_bin, "rsync://%s@127.0.0.1:%s/m/foo.txt" % (user, port), str(tmp_path / "no")],
                env=dict(os.environ, RSYNC_PASSWORD=pw), check=False)
        assert r.returncode == 5 and b"auth failed" in r.stderr, (user, r.stderr)
    assert not (tmp_path / "no").exists()


def test_hosts_deny_and_allow(src_tree, tmp_path, rsync_bin, procs):
    conf = conf_file(tmp_path, "[no]\npath = %s\nhosts deny = 127.0.0.0/8\n"
                               "[yes]\npath = %s\nhosts allow = 127.0.0.1\nhosts deny = *\n" % (src_tree, src_tree))
    p, url = start_conf(tmp_path, conf)
    procs.append(p)
    r = run([rsync_bin, url + "/no/foo.txt", str(tmp_path / "x")], check=False)
    assert r.returncode == 5 and b"access denied" in r.stderr
    run([rsync_bin, url + "/yes/foo.txt", str(tmp_path / "y")])
    assert (tmp_path / "y").read_text() == "foo\n"


def test_max_connections_one(src_tree, tmp_path, rsync_bin, procs):
    conf = conf_file(tmp_path, "[m]\npath = %s\nmax connections = 1\n" % src_tree)
    p, url = start_conf(tmp_path, conf)
    procs.append(p)
    port = int(url.rsplit(":", 1)[1])
    holder = socket.create_connection(("127.0.0.1", port))
    holder.sendall(b"@RSYNCD: 32.0 md5\nm\n")
    buf = b""
    while b"@RSYNCD: OK" not in buf:
        buf += holder.recv(4096)
    r = run([rsync_bin, url + "/m/foo.txt", str(tmp_path / "x")], check=False)
    assert r.returncode == 5 and b"max connections (1) reached" in r.stderr
    holder.close()


def test_refuse_options_and_filters(src_tree, tmp_path, rsync_bin, procs):
    conf = conf_file(tmp_path, "[m]\npath = %s\nrefuse options = delete checksum\nexclude = *.o /private\n"
                               % src_tree)
    p, url = start_conf(tmp_path, conf)
    procs.append(p)
    r = run([rsync_bin, "-ac", url + "/m/", str(tmp_path / "x")], check=False)
    assert r.returncode != 0 and b"refuse" in r.stderr and b"--checksum" in r.stderr
    dst = tmp_path / "y"
    run([rsync_bin, "-a", url + "/m/", str(dst) + "/"])
    got = {os.path.relpath(os.path.join(d, f), dst) for d, _, fs in os.walk(dst) for f in fs}
    assert "private" not in got and not any(g.endswith(".o") for g in got) and "foo.txt" in got
    r = run([rsync_bin, "-a", url + "/m/private", str(tmp_path / "z")], check=False)
    assert r.returncode == 23 and not (tmp_path / "z").exists()


def test_rsyncd_conf_writable_module_and_read_only(src_tree, tmp_path, rsync_bin, procs):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    conf = conf_file(tmp_path, "[in]\npath = %s\nread only = no\n[ro]\npath = %s\n" % (inbox, src_tree))
    p, url = start_conf(tmp_path, conf)
    procs.append(p)
    run([rsync_bin, "-a", src_tree + "/a/", url + "/in/"])
    assert (inbox / "x.c").read_text() == "int main;\n"
    r = run([rsync_bin, "-a", src_tree + "/a/", url + "/ro/"], check=False)
    assert r.returncode == 1 and b"read only" in r.stderr


def test_unsupported_conf_parameter_names_the_line(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("[m]\npath = /\npre-xfer exec = /bin/true\n")
    r = subprocess.run(daemon_cmd() + ["--daemon", "--no-detach", "--config=%s" % conf], capture_output=True,
                       timeout=30)
    assert r.returncode == 1 and b":3:" in r.stderr and b"pre-xfer exec" in r.stderr


def test_daemon_over_ssh_with_rsyncd_conf(sshd, src_tree, tmp_path, rsync_bin):
    conf = conf_file(tmp_path, "[m]\npath = %s\n" % src_tree)
    dst = tmp_path / "d"
    run([rsync_bin, "-a", "-e", sshd.rsh, "--rsync-path=%s --config=%s" % (" ".join(daemon_cmd()), conf),
         "rsync://root@127.0.0.1/m/", str(dst) + "/"])
    src = snapshot(src_tree)
    src["<hardlinks>"] = []
    assert snapshot(str(dst)) == src


def test_anonymous_ssh_listener_through_the_daemon(src_tree, tmp_path, rsync_bin, sshd):
    need(__import__("shutil").which("ssh"), "ssh")
    sshport = free_port()
    port = free_port()
    log = tmp_path / "d.log"
    p = subprocess.Popen(daemon_cmd() + ["--daemon", "--gokr.listen=127.0.0.1:%d" % port,
                                         "--gokr.anonssh_listen=127.0.0.1:%d" % sshport,
                                         "--gokr.hostkey=%s" % (tmp_path / "hostkey"),
                                         "--gokr.modulemap=m=%s" % src_tree]
                         + (["--gokr.user=root"] if IS_ROOT else ["--gokr.insecure_writable_modules"]),
                         stderr=open(log, "w"))
    try:
        deadline = time.monotonic() + 20
        while "serving SSH" not in log.read_text():
            assert p.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        rsh = ("ssh -p %d -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "
               "-o BatchMode=yes -i %s" % (sshport, sshd.clientkey))
        dst = tmp_path / "d"
        run([rsync_bin, "-a", "-e", rsh, "rsync://127.0.0.1/m/", str(dst) + "/"])
        src = snapshot(src_tree)
        src["<hardlinks>"] = []
        assert snapshot(str(dst)) == src
        r = subprocess.run(rsh.split() + ["127.0.0.1", "ls", "/"], capture_output=True, timeout=30)
        assert r.returncode != 0
        assert os.stat(tmp_path / "hostkey").st_mode & 0o777 == 0o600
    finally:
        stop(p)


def test_stock_client_setups_3_and_4_over_ssh(sshd, src_tree, tmp_path, rsync_bin):
    """Setup 3: rsync --rsync-path=gokr-rsyncd host:/path (SSH command mode);
    setup 4: rsync -e ssh --rsync-path=gokr-rsyncd rsync://host/module (daemon
    over SSH, reading the TOML config). Both at rsync's default protocol."""
    src = snapshot(src_tree)
    dst3 = tmp_path / "setup3"
    run([rsync_bin, "-aH", "-e", sshd.rsh, "--rsync-path=%s" % " ".join(daemon_cmd()),
         "root@127.0.0.1:%s/" % src_tree, str(dst3) + "/"])
    assert snapshot(str(dst3)) == src
    cfg = tmp_path / "gokr.toml"
    cfg.write_text('[[module]]\nname = "m"\npath = "%s"\n' % src_tree)
    dst4 = tmp_path / "setup4"
    run([rsync_bin, "-aH", "-e", sshd.rsh, "--rsync-path=%s --gokr.config=%s" % (" ".join(daemon_cmd()), cfg),
         "rsync://root@127.0.0.1/m/", str(dst4) + "/"])
    assert snapshot(str(dst4)) == src
    r = run([rsync_bin, "-a", "-e", sshd.rsh, "--rsync-path=%s --gokr.config=%s" % (" ".join(daemon_cmd()), cfg),
             str(tmp_path / "setup4") + "/", "rsync://root@127.0.0.1/m/"], check=False)
    assert r.returncode == 1 and b"read only" in r.stderr


def test_authorized_ssh_listener_from_toml(sshd, src_tree, tmp_path, rsync_bin):
    import subprocess as sp
    other = tmp_path / "otherkey"
    sp.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    keys = tmp_path / "authorized_keys"
    keys.write_text(open(sshd.clientkey + ".pub").read())
    sshport = free_port()
    cfg = tmp_path / "c.toml"
    cfg.write_text('[daemon]\nhostkey = "%s"\n[[listener]]\nauthorized_ssh = { address = "127.0.0.1:%d", '
                   'authorized_keys = "%s" }\n[[module]]\nname = "m"\npath = "%s"\n'
                   % (tmp_path / "hk", sshport, keys, src_tree))
    log = tmp_path / "d.log"
    p = subprocess.Popen(daemon_cmd() + ["--daemon", "--gokr.config=%s" % cfg]
                         + (["--gokr.user=root"] if IS_ROOT else ["--gokr.insecure_writable_modules"]),
                         stderr=open(log, "w"))
    try:
        deadline = time.monotonic() + 20
        while "serving SSH" not in log.read_text():
            assert p.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        base = ("ssh -p %d -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "
                "-o BatchMode=yes -o IdentitiesOnly=yes -i " % sshport)
        ok = run([rsync_bin, "-a", "-e", base + sshd.clientkey, "rsync://127.0.0.1/m/foo.txt",
                  str(tmp_path / "ok")])
        assert ok.returncode == 0 and (tmp_path / "ok").read_text() == "foo\n"
        bad = run([rsync_bin, "-a", "-e", base + str(other), "rsync://127.0.0.1/m/foo.txt", str(tmp_path / "bad")],
                  check=False)
        assert bad.returncode != 0 and not (tmp_path / "bad").exists()
    finally:
        stop(p)


def test_remote_shell_over_a_nonblocking_socketpair(src_tree, tmp_path, rsync_bin):
    """rsync hands a remote shell a socketpair it may have made non-blocking;
    our server must cope (it used to stop with EAGAIN half-way)."""
    shell = tmp_path / "localshell"
    shell.write_text('#!/bin/sh\nshift\neval exec "$@"\n')
    shell.chmod(0o755)
    dst = tmp_path / "d"
    run([rsync_bin, "-aH", "-e", str(shell), "--rsync-path=%s" % " ".join(daemon_cmd()),
         "x:%s/" % src_tree, str(dst) + "/"])
    assert snapshot(str(dst)) == snapshot(src_tree)
    back = tmp_path / "back"
    run([rsync_bin, "-aH", "-e", str(shell), "--rsync-path=%s" % " ".join(daemon_cmd()),
         src_tree + "/", "x:%s/" % back])
    assert snapshot(str(back)) == snapshot(src_tree)
