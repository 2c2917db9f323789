"""An SSH listener that serves the rsync daemon protocol over SSH channels.

This is gokr-rsyncd's `--gokr.anonssh_listen`: stock rsync, given `-e ssh`
and an `rsync://` URL, runs `ssh HOST rsync --server --daemon .` and speaks
the daemon protocol over the channel. The listener runs nothing else: no
shell, no other command, no subsystem (sftp), no port forwarding.

Without an authorized_keys file anyone may connect (any key, or none);
with one, only the public keys it lists are admitted.
"""

import base64
import binascii
import errno
import hashlib
import io
import logging
import os
import selectors
import shlex
import socket
import stat
import sys
import tempfile
import threading
import time
from typing import Callable

import paramiko
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from paramiko.common import MSG_CHANNEL_REQUEST

import rsync

logging.getLogger(__name__).addHandler(logging.NullHandler())

KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
             "ssh-rsa")
MAX_KEY_FILE = 1 << 16
# Options that would let a client pick this machine's configuration or files.
SERVER_SIDE_OPTIONS = ("--gokr.", "--config", "--modulemap", "--dparam", "-M", "--log-file")


class SSHSetupError(Exception):
    """A host key or authorized_keys file that cannot be used."""


# ----------------------------------------------------------------------------
# The channel as an rsync transport.


class ChannelTransport(rsync.Transport):
    """An SSH session channel: stdin/stdout of the remote rsync daemon."""

    CHUNK = 1 << 15

    def __init__(self, chan, timeout=None):
        self.chan = chan
        self.set_timeout(timeout)

    def set_timeout(self, timeout):
        self.timeout = timeout
        self.chan.settimeout(timeout)

    def recv(self, n):
        try:
            return self.chan.recv(n)
        except socket.timeout:
            raise rsync.RsyncError("timeout waiting for data from the peer", rsync.RERR_TIMEOUT) from None

    def sendv(self, buffers):
        data = memoryview(b"".join(buffers))
        try:
            while data:
                sent = self.chan.send(bytes(data[:self.CHUNK]))
                if sent <= 0:
                    raise rsync.ConnectionClosed("connection unexpectedly closed (SSH channel closed)",
                                                 rsync.RERR_SOCKETIO)
                data = data[sent:]
        except socket.timeout:
            raise rsync.RsyncError("timeout sending data to the peer", rsync.RERR_TIMEOUT) from None
        except (OSError, EOFError, paramiko.SSHException):
            raise rsync.ConnectionClosed("connection unexpectedly closed (SSH channel closed)",
                                         rsync.RERR_SOCKETIO) from None

    def shutdown_write(self):
        try:
            self.chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass

    def close(self):
        _close(self.chan)


def _close(chan):
    try:
        chan.close()
    except (OSError, EOFError, paramiko.SSHException):
        pass  # the connection is gone, and the channel with it


# ----------------------------------------------------------------------------
# Keys.


def fingerprint(key):
    """OpenSSH's SHA256 fingerprint of a paramiko key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def load_or_create_host_key(path: str) -> paramiko.PKey:
    """The host key at `path` (OpenSSH or PEM; ed25519, ecdsa or rsa); when
    the file does not exist, a new ed25519 key is written there (mode 0600)."""
    try:
        return _load_host_key(path)
    except FileNotFoundError:
        pass
    try:
        _create_host_key(path)
    except OSError as e:
        raise SSHSetupError("cannot create host key %s: %s" % (path, e)) from None
    return _load_host_key(path)


def _load_host_key(path):
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise SSHSetupError("host key %s is not a regular file" % path)
        if st.st_mode & 0o077:
            raise SSHSetupError("host key %s is accessible by group or others (mode %04o); "
                                "run: chmod 600 %s" % (path, st.st_mode & 0o7777, path))
        data = f.read(MAX_KEY_FILE + 1)
    if len(data) > MAX_KEY_FILE:
        raise SSHSetupError("host key %s is too large to be a private key" % path)
    try:
        if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
            key = serialization.load_ssh_private_key(data, None)
        else:
            key = serialization.load_pem_private_key(data, None)
    except TypeError:
        raise SSHSetupError("host key %s is encrypted; a host key must have no passphrase "
                            "(ssh-keygen -p -N '' -f %s)" % (path, path)) from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise SSHSetupError("host key %s is not an OpenSSH or PEM private key: %s" % (path, e)) from None
    if isinstance(key, rsa.RSAPrivateKey):
        return paramiko.RSAKey(key=key)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        cls = paramiko.Ed25519Key
    elif isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in (
            "secp256r1", "secp384r1", "secp521r1"):
        cls = paramiko.ECDSAKey
    else:
        raise SSHSetupError("host key %s: unsupported key type %s (use ed25519, ecdsa or rsa)"
                            % (path, type(key).__name__))
    text = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption()).decode("ascii")
    return cls(file_obj=io.StringIO(text))


def _create_host_key(path):
    """Writes a new ed25519 key to `path` without ever exposing it: a 0600
    temporary file, linked into place only if `path` still does not exist."""
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    data = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another start created it first: everyone uses that key
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            if not os.path.exists(path):
                os.rename(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def parse_authorized_keys(text: str) -> set[bytes]:
    """The key blobs of an OpenSSH authorized_keys text; options, comments
    and key types other than ed25519, ecdsa and rsa are ignored."""
    keys = set()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if fields[0] not in KEY_TYPES:
            fields = _skip_options(line).split()
        if len(fields) < 2 or fields[0] not in KEY_TYPES:
            continue
        try:
            blob = base64.b64decode(fields[1], validate=True)
        except (binascii.Error, ValueError):
            continue
        if blob[4:4 + len(fields[0])] == fields[0].encode() and \
                int.from_bytes(blob[:4], "big") == len(fields[0]):
            keys.add(blob)
    return keys


def _skip_options(line):
    """The rest of an authorized_keys line after its options field, which
    ends at the first blank outside double quotes."""
    quoted = escaped = False
    for i, c in enumerate(line):
        if escaped:
            escaped = False
        elif c == "\\" and quoted:
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c in " \t" and not quoted:
            return line[i:].lstrip()
    return ""


def _read_authorized_keys(path):
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 22)
    except OSError as e:
        raise SSHSetupError("cannot read authorized keys file %s: %s" % (path, e.strerror or e)) from None
    return parse_authorized_keys(data.decode("utf-8", "replace"))


# ----------------------------------------------------------------------------
# Commands.


def parse_exec_command(command: bytes) -> list[str] | None:
    """The argv of an exec request that starts an rsync daemon over ssh
    (`PROGRAM... [OPTIONS] --server --daemon .`), or None for any other command."""
    try:
        text = command.decode("utf-8") if isinstance(command, bytes) else command
        if "\0" in text:
            return None
        argv = shlex.split(text)
    except (UnicodeDecodeError, ValueError):
        return None
    first_option = next((i for i, a in enumerate(argv) if a.startswith("-")), 0)
    if first_option == 0 or argv[-1] != ".":
        return None
    options = argv[first_option:-1]
    if not all(o.startswith("-") for o in options):
        return None
    if "--server" not in options or "--daemon" not in options:
        return None
    if any(o.startswith(SERVER_SIDE_OPTIONS) for o in options):
        return None
    return argv


# ----------------------------------------------------------------------------
# The listener.


def _stderr_log(msg):
    sys.stderr.write("rsync_sshd: %s\n" % msg)


def _where(addr):
    host, port = addr[0], addr[1]
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def _clean(text, limit=200):
    """Client-supplied text made safe for a one-line log entry."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    return repr(text[:limit])


class _Transport(paramiko.Transport):
    """paramiko's transport with two hooks into its thread: the connection
    learns of a successful authentication as it happens, and a session's
    worker starts only once the reply to the request that started it is on
    its way (a quick refusal's exit status and close must not overtake it)."""

    _channel_handler_table = dict(getattr(paramiko.Transport, "_channel_handler_table", {}))

    def _channel_request(chan, m):
        paramiko.Channel._handle_request(chan, m)
        conn = chan.transport.server_object
        if isinstance(conn, _Connection):
            conn.start_pending(chan.chanid)

    HOOKED = MSG_CHANNEL_REQUEST in _channel_handler_table
    _channel_handler_table[MSG_CHANNEL_REQUEST] = _channel_request
    del _channel_request

    def _auth_trigger(self):
        super()._auth_trigger()
        if isinstance(self.server_object, _Connection):
            self.server_object.on_authenticated()


class _Connection(paramiko.ServerInterface):
    """The policy for one client connection: who gets in, which requests
    are served."""

    def __init__(self, listener, addr, keys):
        self.listener = listener
        self.log = listener.log
        self.peer = addr[0]
        self.where = _where(addr)
        self.keys = keys
        self.auth = None
        self.authenticated = threading.Event()
        self.rejected = None
        self.lock = threading.Lock()
        self.started = set()
        self.pending = {}
        self.channels = []
        self.unaccepted = 0

    # Authentication.

    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_none(self, username):
        if self.keys is None:
            self.auth = "user %s, anonymous" % _clean(username, 64)
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_auth_publickey(self, username, key):
        if self.keys is None or key.asbytes() in self.keys:
            self.auth = "user %s, key %s %s" % (_clean(username, 64), key.get_name(), fingerprint(key))
            return paramiko.AUTH_SUCCESSFUL
        self.rejected = "%s %s" % (key.get_name(), fingerprint(key))
        return paramiko.AUTH_FAILED

    def on_authenticated(self):
        self.log("ssh: connection from %s: %s" % (self.where, self.auth))
        self.authenticated.set()

    # Channels and requests.

    def check_channel_request(self, kind, chanid):
        if kind != "session":
            self.log("ssh: refused %s channel from %s" % (_clean(kind, 64), self.where))
            return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        with self.lock:
            self.channels = [c for c in self.channels if not c.closed]
            if len(self.channels) + self.unaccepted >= self.listener.MAX_SESSIONS:
                self.log("ssh: refused session from %s: %d sessions already open"
                         % (self.where, self.listener.MAX_SESSIONS))
                return paramiko.OPEN_FAILED_RESOURCE_SHORTAGE
            self.unaccepted += 1
        return paramiko.OPEN_SUCCEEDED

    def accepted(self, chan):
        with self.lock:
            self.unaccepted -= 1
            self.channels.append(chan)

    def check_channel_direct_tcpip_request(self, chanid, origin, destination):
        self.log("ssh: refused port forwarding to %s from %s" % (_clean("%s:%s" % destination, 100),
                                                                  self.where))
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_port_forward_request(self, address, port):
        self.log("ssh: refused remote port forwarding of %s from %s"
                 % (_clean("%s:%s" % (address, port), 100), self.where))
        return False

    def check_channel_exec_request(self, channel, command):
        if not self._first_request(channel, "exec"):
            return False
        argv = parse_exec_command(command)
        if argv is None:
            self.log("ssh: refused exec %s from %s" % (_clean(command), self.where))
            self._after_reply(channel, self._refuse, channel, 127,
                              "gokr-rsyncd: %s: command not found; %s"
                              % (_command_name(command), self.listener.usage()))
            return True
        self._after_reply(channel, self._serve, channel, argv)
        return True

    def check_channel_shell_request(self, channel):
        if not self._first_request(channel, "shell"):
            return False
        self.log("ssh: refused shell from %s" % self.where)
        self._after_reply(channel, self._refuse, channel, 1,
                          "gokr-rsyncd: no shell access; %s" % self.listener.usage())
        return True

    def check_channel_pty_request(self, channel, term, width, height, pixelwidth, pixelheight, modes):
        self.log("ssh: refused pty from %s" % self.where)
        return False

    def check_channel_subsystem_request(self, channel, name):
        self.log("ssh: refused subsystem %s from %s" % (_clean(name, 64), self.where))
        return False

    def check_channel_x11_request(self, channel, single_connection, auth_protocol, auth_cookie,
                                  screen_number):
        self.log("ssh: refused X11 forwarding from %s" % self.where)
        return False

    def check_channel_forward_agent_request(self, channel):
        self.log("ssh: refused agent forwarding from %s" % self.where)
        return False

    def _first_request(self, channel, what):
        with self.lock:
            if channel.chanid in self.started:
                self.log("ssh: refused a second %s on one session from %s" % (what, self.where))
                return False
            self.started.add(channel.chanid)
        return True

    def _after_reply(self, channel, target, *args):
        worker = threading.Thread(target=target, args=args, daemon=True,
                                  name="rsync-sshd session %s" % self.where)
        if not _Transport.HOOKED:
            worker.start()
            return
        with self.lock:
            self.pending[channel.chanid] = worker

    def start_pending(self, chanid):
        with self.lock:
            worker = self.pending.pop(chanid, None)
        if worker is not None:
            worker.start()

    # Session workers.

    def _refuse(self, channel, status, message):
        try:
            channel.sendall_stderr((message + "\n").encode())
            channel.send_exit_status(status)
        except (OSError, EOFError, paramiko.SSHException):
            pass
        _close(channel)

    def _serve(self, channel, argv):
        transport = ChannelTransport(channel, timeout=self.listener.handshake_timeout)
        try:
            code = int(self.listener.serve(transport, self.peer, argv))
        except Exception as e:  # one broken session must not take the listener down
            self.log("ssh: internal error serving %s: %r" % (self.where, e))
            code = rsync.RERR_STREAMIO
        try:
            channel.send_exit_status(code)
        except (OSError, EOFError, paramiko.SSHException):
            pass
        finally:
            transport.close()


def _command_name(command):
    try:
        words = shlex.split(command.decode("utf-8", "replace"))
    except ValueError:
        words = command.decode("utf-8", "replace").split()
    name = words[0] if words else ""
    return "".join(c if c.isprintable() else "?" for c in name[:64])


class SSHListener:
    """Accepts SSH connections on `address` and hands every channel that
    execs `rsync --server --daemon .` to `serve(transport, peer_ip, argv)`,
    whose return value becomes the command's exit status."""

    MAX_UNAUTHENTICATED = 32
    MAX_SESSIONS = 10
    BANNER = "SSH-2.0-gokr_rsyncd_" + rsync.VERSION

    def __init__(self, address: tuple[str, int], host_key: paramiko.PKey,
                 serve: Callable[[rsync.Transport, str, list[str]], int],
                 authorized_keys: str | None = None, log: Callable[[str], None] = _stderr_log,
                 handshake_timeout: float = 30.0):
        self.host_key = host_key
        self.serve = serve
        self.authorized_keys = authorized_keys
        self.log = log
        self.handshake_timeout = handshake_timeout
        if authorized_keys is not None:
            _read_authorized_keys(authorized_keys)
        host = address[0]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(address)
            self.socket.listen(128)
            self.socket.setblocking(False)
        except OSError:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()
        self._unauthenticated = threading.BoundedSemaphore(self.MAX_UNAUTHENTICATED)
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._lock = threading.Lock()
        self._transports = set()

    def usage(self):
        """What a refused client is told to run instead."""
        port = self.server_address[1]
        rsh = "ssh" if port == 22 else "'ssh -p %d'" % port
        return "this server only serves rsync: rsync -e %s rsync://HOST/MODULE/ DEST" % rsh

    def serve_forever(self) -> None:
        """Accepts connections, each in its own thread, until shutdown()."""
        with self._lock:
            if self._stopping.is_set():
                return
            self._stopped.clear()
        mode = ("authorized keys in %s" % self.authorized_keys if self.authorized_keys is not None
                else "anonymous")
        self.log("ssh: serving rsync on %s, host key %s %s, %s" % (
            _where(self.server_address), self.host_key.get_name(), fingerprint(self.host_key), mode))
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(self.socket, selectors.EVENT_READ)
                sel.register(self._wake_r, selectors.EVENT_READ)
                while not self._stopping.is_set():
                    sel.select()
                    if self._stopping.is_set():
                        break
                    try:
                        sock, addr = self.socket.accept()
                    except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                        continue
                    except OSError as e:
                        self.log("ssh: accept: %s" % e)
                        self._stopping.wait(0.1)
                        continue
                    threading.Thread(target=self._handle, args=(sock, addr), daemon=True,
                                     name="rsync-sshd %s" % _where(addr)).start()
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stops serve_forever, closes the listening socket and every connection."""
        with self._lock:
            self._stopping.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._stopped.wait()
        for s in (self.socket, self._wake_r, self._wake_w):
            s.close()
        with self._lock:
            transports = list(self._transports)
        for t in transports:
            t.close()

    def _handle(self, sock, addr):
        where = _where(addr)
        if not self._unauthenticated.acquire(blocking=False):
            self.log("ssh: connection from %s dropped: %d connections are already authenticating"
                     % (where, self.MAX_UNAUTHENTICATED))
            sock.close()
            return
        authenticating = True
        t = None
        try:
            keys = None
            if self.authorized_keys is not None:
                keys = _read_authorized_keys(self.authorized_keys)
            conn = _Connection(self, addr, keys)
            sock.setblocking(True)
            t = _Transport(sock)
            t.set_log_channel(__name__ + ".paramiko")
            t.local_version = self.BANNER
            t.banner_timeout = t.handshake_timeout = t.auth_timeout = self.handshake_timeout
            t.add_server_key(self.host_key)
            with self._lock:
                if self._stopping.is_set():
                    return
                self._transports.add(t)
            t.start_server(event=threading.Event(), server=conn)
            failure = self._authenticate(t, conn)
            self._unauthenticated.release()
            authenticating = False
            if failure:
                self.log("ssh: connection from %s failed: %s" % (where, failure))
                return
            if not conn.authenticated.is_set():
                conn.on_authenticated()
            while t.is_active():
                chan = t.accept(timeout=5)
                if chan is not None:
                    conn.accepted(chan)
        except SSHSetupError as e:
            self.log("ssh: connection from %s refused: %s" % (where, e))
        except Exception as e:  # one broken client must not take the listener down
            self.log("ssh: connection from %s: %s" % (where, _reason(e)))
        finally:
            if authenticating:
                self._unauthenticated.release()
            if t is not None:
                t.close()
                with self._lock:
                    self._transports.discard(t)
            sock.close()

    def _authenticate(self, t, conn):
        """Waits until the client is authenticated; the reason it is not otherwise."""
        deadline = time.monotonic() + self.handshake_timeout
        while not (conn.authenticated.is_set() or t.is_authenticated()):
            if not t.is_active():
                e = t.get_exception()
                if e is None or isinstance(e, EOFError):
                    reason = "closed by the client before authenticating"
                else:
                    reason = _reason(e)
                if conn.rejected:
                    reason += " (key %s is not authorized)" % conn.rejected
                return reason
            left = deadline - time.monotonic()
            if left <= 0:
                return "not authenticated within %g seconds" % self.handshake_timeout
            conn.authenticated.wait(min(left, 0.1))
        return None


def _reason(e):
    text = str(e).strip() or type(e).__name__
    return "".join(c if c.isprintable() else "?" for c in text[:300])
