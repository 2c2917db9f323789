"""gokr-rsyncd: an rsync server that stock rsync clients pull from.

It speaks the rsync daemon protocol on TCP (`--daemon`), and serves as the
far end of a remote shell (`--server ...`, what `rsync --rsync-path` runs):
either one transfer (`--server --sender ... . PATH`) or the daemon protocol
over the pipe (`--server --daemon .`). Modules are read-only.

The daemon protocol (clientserver.c): both sides greet with
`@RSYNCD: <version>.<sub> <auth digests>`; the client names a module (or
`#list`); the server answers `@RSYNCD: OK` or `@ERROR: ...`; the client sends
the server's argv (NUL-terminated words from protocol 30, lines before), and
the session goes on as after a remote shell's version exchange.
"""

import ipaddress
import os
import socket
import socketserver
import sys
import threading
import time
import tomllib

import rsync
import rsync_jail

DEFAULT_CONFIG = os.path.expanduser("~/.config/gokr-rsyncd.toml")
AUTH_DIGESTS = "sha512 sha256 sha1 md5 md4"
HANDSHAKE_TIMEOUT = 60.0


class ConfigError(Exception):
    pass


class Module:
    """A named directory tree the daemon serves."""

    def __init__(self, name, path, comment="", acl=(), listed=True, writable=False):
        if not name or "/" in name or name.startswith("#") or any(c.isspace() for c in name):
            raise ConfigError("invalid module name %r" % name)
        self.name = name
        self.path = os.path.abspath(path)
        self.comment = comment
        self.acl = [parse_acl(a) for a in acl]
        self.listed = listed
        self.writable = writable
        self.timeout = 0
        self.max_connections = 0
        self.active = 0

    def check_access(self, addr):
        """The first acl entry matching the address decides; none allows."""
        try:
            ip = ipaddress.ip_address(addr.split("%")[0]) if addr else None
        except ValueError:
            ip = None
        for action, net in self.acl:
            if net is None or (ip is not None and _in_net(ip, net)):
                return action == "allow"
        return True


def _in_net(ip, net):
    if ip.version != net.version:
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        else:
            return False
    return ip in net


def parse_acl(text):
    """`allow|deny all|CIDR`."""
    action, _, who = text.strip().partition(" ")
    who = who.strip()
    if action not in ("allow", "deny") or not who:
        raise ConfigError("invalid acl %r (syntax: allow|deny <all|ipnet>)" % text)
    if who == "all":
        return action, None
    try:
        return action, ipaddress.ip_network(who, strict=False)
    except ValueError:
        raise ConfigError("invalid acl %r (syntax: allow|deny <all|ipnet>)" % text) from None


class Config:
    def __init__(self):
        self.listeners = []
        self.modules = {}
        self.handshake_timeout = HANDSHAKE_TIMEOUT
        self.max_connections = 0
        self.active = 0
        self.lock = threading.Lock()

    def admit(self, module):
        """max connections: one more client, globally and for the module, or
        None with the limit that refused it."""
        with self.lock:
            if self.max_connections and self.active >= self.max_connections:
                return self.max_connections
            if module.max_connections and module.active >= module.max_connections:
                return module.max_connections
            self.active += 1
            module.active += 1
            return None

    def release(self, module):
        with self.lock:
            self.active -= 1
            module.active -= 1

    def add_module(self, m):
        if m.name in self.modules:
            raise ConfigError("module %r defined twice" % m.name)
        self.modules[m.name] = m


def load_toml(path, cfg=None):
    """`[[listener]] rsyncd = "host:port"` and `[[module]] name/path/comment/acl`."""
    cfg = cfg or Config()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("%s: %s" % (path, e)) from None
    for lst in data.get("listener", []):
        if "rsyncd" in lst:
            cfg.listeners.append(lst["rsyncd"])
        else:
            raise ConfigError("%s: listener without a supported type (rsyncd): %r" % (path, lst))
    for m in data.get("module", []):
        unknown = set(m) - {"name", "path", "comment", "acl", "list", "writable", "max_connections",
                            "timeout"}
        if unknown:
            raise ConfigError("%s: module %r: unsupported key(s) %s"
                              % (path, m.get("name"), ", ".join(sorted(unknown))))
        if "name" not in m or "path" not in m:
            raise ConfigError("%s: a module needs a name and a path" % path)
        mod = Module(m["name"], m["path"], m.get("comment", ""), m.get("acl", []),
                     m.get("list", True), bool(m.get("writable", False)))
        mod.max_connections = int(m.get("max_connections", 0))
        mod.timeout = int(m.get("timeout", 0))
        cfg.add_module(mod)
    daemon = data.get("daemon", {})
    unknown = set(daemon) - {"handshake_timeout", "max_connections", "user"}
    if unknown:
        raise ConfigError("%s: [daemon]: unsupported key(s) %s" % (path, ", ".join(sorted(unknown))))
    if "handshake_timeout" in daemon:
        cfg.handshake_timeout = float(daemon["handshake_timeout"])
    cfg.max_connections = int(daemon.get("max_connections", 0))
    cfg.user = daemon.get("user")
    return cfg


def parse_hostport(text, default_port=873):
    """`host:port`, `:port`, `[v6]:port` → (host, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = text, ""
    return host, int(port) if port else default_port


class Logger:
    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.lock = threading.Lock()

    def __call__(self, msg):
        line = "%s [%d] %s\n" % (time.strftime("%Y/%m/%d %H:%M:%S"), os.getpid(), msg)
        with self.lock:
            try:
                self.stream.write(line)
                self.stream.flush()
            except (OSError, ValueError):
                pass


def _read_greeting(raw):
    line = raw.read_line(1024).rstrip(b"\r")
    text = line.decode("ascii", "replace")
    if not text.startswith("@RSYNCD: "):
        raise rsync.RsyncError("protocol startup error: %r" % text[:80], rsync.RERR_STARTCLIENT)
    word = text[9:].split(" ", 1)[0]
    version, _, sub = word.partition(".")
    try:
        version = int(version)
        sub = int(sub) if sub else -1
    except ValueError:
        raise rsync.RsyncError("protocol startup error: %r" % text[:80], rsync.RERR_STARTCLIENT) from None
    return version, sub, text


def serve_connection(transport, cfg, peer, log):
    """One daemon-protocol conversation (rsync's start_daemon/rsync_module)."""
    host = peer or "UNKNOWN"
    raw = rsync.RawIn(transport)
    admitted = None

    def say(text):
        transport.sendv([text.encode("utf-8", "replace")])

    start = time.monotonic()
    transport.deadline = start + cfg.handshake_timeout
    try:
        say("@RSYNCD: %d.0 %s\n" % (rsync.PROTOCOL_VERSION, AUTH_DIGESTS))
        version, sub, greeting = _read_greeting(raw)
        if sub < 0 and version >= 30:
            say("@ERROR: your client omitted the subprotocol value: %s\n" % greeting)
            return rsync.RERR_STARTCLIENT
        if version > 31 and len(greeting.split(" ")) < 3:
            say("@ERROR: your client omitted the digest name list: %s\n" % greeting)
            return rsync.RERR_STARTCLIENT
        protocol = min(rsync.PROTOCOL_VERSION, version)
        if version == rsync.PROTOCOL_VERSION and sub > 0:
            protocol -= 1
        if protocol < rsync.MIN_PROTOCOL_VERSION:
            say("@ERROR: protocol version %d is too old for this server (need %d)\n"
                % (version, rsync.MIN_PROTOCOL_VERSION))
            return rsync.RERR_PROTOCOL
        line = raw.read_line(1024).rstrip(b"\r").decode("utf-8", "replace")
        if line in ("", "#list"):
            log("module-list request from %s" % host)
            for m in cfg.modules.values():
                if m.listed:
                    say("%-15s\t%s\n" % (m.name, m.comment))
            say("@RSYNCD: EXIT\n")
            return 0
        if line.startswith("#"):
            say("@ERROR: Unknown command '%s'\n" % line[:200])
            return rsync.RERR_STARTCLIENT
        module = cfg.modules.get(line)
        if module is None:
            log("unknown module '%s' tried from %s" % (line[:200], host))
            say("@ERROR: Unknown module '%s'\n" % line[:200])
            return rsync.RERR_STARTCLIENT
        if not module.check_access(peer):
            log("rsync denied on module %s from %s" % (module.name, host))
            say("@ERROR: access denied to %s from %s (%s)\n" % (module.name, host, host))
            return rsync.RERR_STARTCLIENT
        if module.timeout and module.timeout < cfg.handshake_timeout:
            transport.deadline = start + module.timeout
        limit = cfg.admit(module)
        if limit is not None:
            log("max connections (%d) reached for %s from %s" % (limit, module.name, host))
            say("@ERROR: max connections (%d) reached -- try again later\n" % limit)
            return rsync.RERR_STARTCLIENT
        admitted = module
        say("@RSYNCD: OK\n")
        argv = _read_args(raw, protocol)
        argv = _module_args(argv, module.name)
        transport.deadline = None
        log("rsync on %s from %s: %s" % (module.name, host, " ".join(argv)))
        if hasattr(transport, "set_timeout"):
            transport.set_timeout(module.timeout or None)
        code = rsync.run_server(transport, argv, module.path, confined=True,
                                remote_protocol=protocol, log=log, raw=raw,
                                io_timeout=module.timeout, am_daemon=True,
                                root_shown="", writable=module.writable)
        log("finished %s from %s: exit code %d" % (module.name, host, code))
        return code
    except rsync.ConnectionClosed:
        log("connection from %s closed during the handshake" % host)
        return rsync.RERR_STARTCLIENT
    except rsync.RsyncError as e:
        log("error from %s: %s" % (host, e))
        try:
            say("@ERROR: %s\n" % e)
        except (rsync.RsyncError, OSError):
            pass
        return e.code
    finally:
        if admitted is not None:
            cfg.release(admitted)


def _read_args(raw, protocol):
    """The server argv: NUL-ended words from 30, lines before; empty ends."""
    args = []
    eol = b"\0" if protocol >= 30 else b"\n"
    while True:
        a = raw.read_line(rsync.MAX_PATH + 64, eol=eol)
        if eol == b"\n":
            a = a.rstrip(b"\r")
        if not a:
            return args
        if len(args) >= 1024:
            raise rsync.ProtocolError("too many daemon arguments", rsync.RERR_PROTOCOL)
        args.append(os.fsdecode(a))


def _module_args(argv, name):
    """Paths after the "." argument lose their module prefix, as rsync does."""
    out = []
    seen_dot = False
    for a in argv:
        if seen_dot:
            if a == name:
                a = "."
            elif a.startswith(name + "/"):
                a = a[len(name) + 1:] or "."
            out.append(a)
            continue
        out.append(a)
        if a == ".":
            seen_dot = True
    return out


class _Handler(socketserver.BaseRequestHandler):
    def handle(self):
        srv = self.server
        peer = self.client_address[0] if isinstance(self.client_address, tuple) else ""
        srv.log("connect from %s" % peer)
        transport = rsync.SocketTransport(self.request)
        try:
            serve_connection(transport, srv.cfg, peer, srv.log)
        except Exception as e:  # the daemon must outlive any one client
            srv.log("internal error serving %s: %r" % (peer, e))
        finally:
            transport.close()


class DaemonServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, addr, cfg, log, family=None, sock=None):
        self.cfg = cfg
        self.log = log
        if sock is not None:
            self.address_family = sock.family
            super().__init__(addr, _Handler, bind_and_activate=False)
            self.socket.close()
            self.socket = sock
            self.server_address = sock.getsockname()
            return
        self.address_family = family or (socket.AF_INET6 if ":" in addr[0] else socket.AF_INET)
        super().__init__(addr, _Handler)


USAGE = """usage: gokr-rsyncd --daemon [--gokr.listen=HOST:PORT] [--gokr.modulemap=NAME=PATH]...
                    [--gokr.config=FILE] [--gokr.user=USER]

Started as root on Linux, the daemon serves from a private mount namespace
that holds only its modules (read-only unless writable) and runs as USER
(default nobody). Without root it refuses modules it could write to unless
they are writable (--gokr.insecure_writable_modules turns that check off).
       gokr-rsyncd --server [--sender] OPTIONS . PATH...   (run by rsync over a remote shell)
       gokr-rsyncd --server --daemon [--gokr.config=FILE] .
"""


def parse_args(argv):
    """Our own options (those starting with --gokr. plus --daemon); the
    rest is the server argv of a remote-shell session."""
    opts = {"daemon": False, "server": False, "listen": [], "modulemap": [], "config": None,
            "rest": [], "user": None, "insecure": False}
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        name, eq, value = a.partition("=")
        if name == "--gokr.insecure_writable_modules":
            opts["insecure"] = True
            continue
        if name in ("--gokr.listen", "--gokr.modulemap", "--modulemap", "--gokr.config", "--gokr.user",
                    "--gokr.handshake_timeout"):
            if not eq:
                if i >= len(argv):
                    raise ConfigError("%s needs a value" % name)
                value = argv[i]
                i += 1
            key = name.split(".")[-1].lstrip("-")
            if key in ("config", "user", "handshake_timeout"):
                opts[key] = value
            else:
                opts[key].append(value)
            continue
        if a == "--daemon":
            opts["daemon"] = True
            opts["rest"].append(a)
            continue
        if a == "--server":
            opts["server"] = True
        if a in ("-h", "--help"):
            opts["help"] = True
            continue
        opts["rest"].append(a)
    return opts


def build_config(opts):
    cfg = Config()
    path = opts["config"]
    if path is None and not opts["modulemap"] and os.path.exists(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
    if path:
        load_toml(path, cfg)
    for mm in opts["modulemap"]:
        name, eq, p = mm.partition("=")
        if not eq:
            raise ConfigError("--gokr.modulemap wants NAME=PATH, got %r" % mm)
        cfg.add_module(Module(name, p))
    cfg.listeners.extend(opts["listen"])
    if opts.get("handshake_timeout"):
        try:
            cfg.handshake_timeout = float(opts["handshake_timeout"])
        except ValueError:
            raise ConfigError("--gokr.handshake_timeout wants seconds, got %r" % opts["handshake_timeout"]) from None
    if not opts.get("user") and getattr(cfg, "user", None):
        opts["user"] = cfg.user
    for m in cfg.modules.values():
        if not os.path.isdir(m.path):
            raise ConfigError("module %s: path %s is not a directory" % (m.name, m.path))
    return cfg


def activation_sockets():
    """systemd socket activation: LISTEN_FDS sockets from fd 3, if they are
    meant for this process (LISTEN_PID)."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        n = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)
    socks = []
    for fd in range(3, 3 + n):
        os.set_inheritable(fd, False)
        socks.append(socket.socket(fileno=fd))
    return socks


def _prepare_for_chroot():
    """Loads now what serving needs later from the file system we leave."""
    __import__("encodings.idna")
    import rsync_delta
    rsync_delta.checksum1(b"x")
    for name in ("rsync_compress", "rsync_conf", "rsync_md4", "rsync_sshd"):
        try:
            __import__(name)
        except ImportError:
            pass
    rsync.new_hash("md4").update(b"x")
    rsync.prime_id_caches()
    time.strftime("%Y")


def confine(cfg, opts, log=lambda msg: None):
    """The jail (root on Linux), or refusing writable modules (not root)."""
    mods = list(cfg.modules.values())
    if rsync_jail.can_jail():
        user = opts.get("user") or "nobody"
        uid, gid = rsync_jail.lookup_user(user)
        inside = rsync_jail.enter([(m.name, m.path, m.writable) for m in mods], prepare=_prepare_for_chroot)
        for m in mods:
            m.path = inside[m.name]
        if uid != 0:
            rsync_jail.drop_privileges(uid, gid)
        log("confined to %d module(s), running as %s (uid %d)" % (len(mods), user, os.geteuid()))
    elif os.geteuid() != 0 and not opts.get("insecure"):
        rsync_jail.check_unwritable([(m.name, m.path, m.writable) for m in mods])


def _stdin_is_socket():
    import stat
    try:
        return stat.S_ISSOCK(os.fstat(0).st_mode)
    except OSError:
        return False


def serve_inetd(cfg):
    """Started with a socket as standard input (inetd, or a client's
    RSYNC_CONNECT_PROG), serve that one connection and exit, as rsync does."""
    sock = socket.socket(fileno=os.dup(0))
    try:
        peer = sock.getpeername()
        peer = peer[0] if isinstance(peer, tuple) else ""
    except OSError:
        peer = ""
    transport = rsync.SocketTransport(sock)
    try:
        return serve_connection(transport, cfg, peer, lambda msg: None)
    finally:
        transport.close()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    log = Logger()
    try:
        opts = parse_args(argv)
        if opts.get("help") or not (opts["daemon"] or opts["server"]):
            sys.stdout.write(USAGE)
            return 0 if opts.get("help") else rsync.RERR_SYNTAX
        if opts["server"]:
            log = lambda msg: None  # noqa: E731 - stderr reaches the client's terminal
            transport = rsync.PipeTransport(sys.stdin.fileno(), sys.stdout.fileno())
            if opts["daemon"]:
                cfg = build_config(opts)
                return serve_connection(transport, cfg, os.environ.get("SSH_CLIENT", "").split(" ")[0],
                                        log)
            return rsync.run_server(transport, opts["rest"], ".", confined=False, log=log)
        cfg = build_config(opts)
        if not cfg.modules:
            raise ConfigError("no modules configured (use --gokr.modulemap=NAME=PATH or a config file)")
        if _stdin_is_socket():
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            confine(cfg, opts)
            return serve_inetd(cfg)
        servers = [DaemonServer(None, cfg, log, sock=s) for s in activation_sockets()]
        if not servers:
            for spec in cfg.listeners or ["localhost:873"]:
                host, port = parse_hostport(spec)
                servers.append(DaemonServer((host or "0.0.0.0", port), cfg, log))
        confine(cfg, opts, log)
        for srv in servers:
            log("gokr-rsyncd %s listening on %s:%d, modules: %s" % (
                rsync.VERSION, srv.server_address[0], srv.server_address[1], ", ".join(cfg.modules)))
        for srv in servers[1:]:
            threading.Thread(target=srv.serve_forever, daemon=True).start()
        try:
            servers[0].serve_forever()
        except KeyboardInterrupt:
            pass
        return 0
    except (ConfigError, rsync_jail.JailError) as e:
        sys.stderr.write("gokr-rsyncd: %s\n" % e)
        return rsync.RERR_SYNTAX
    except OSError as e:
        sys.stderr.write("gokr-rsyncd: %s\n" % e)
        return rsync.RERR_SOCKETIO


if __name__ == "__main__":
    sys.exit(main())
