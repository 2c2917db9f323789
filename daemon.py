"""gokr-rsyncd: an rsync server that stock rsync clients pull from and push to.

It speaks the rsync daemon protocol on TCP (`--daemon`), over SSH channels
of its own listener (`--gokr.anonssh_listen`), on a socket handed to it
(systemd, inetd, RSYNC_CONNECT_PROG), and as the far end of a remote shell
(`--server ...`, what `rsync --rsync-path` runs): either one transfer
(`--server [--sender] ... . PATH`) or the daemon protocol over the pipe
(`--server --daemon .`). Modules are read-only unless configured writable.

The daemon protocol (clientserver.c): both sides greet with
`@RSYNCD: <version>.<sub> <auth digests>`; the server sends its motd; the
client names a module (or `#list`); the server may challenge it
(`@RSYNCD: AUTHREQD <challenge>`), then answers `@RSYNCD: OK` or
`@ERROR: ...`; the client sends the server's argv (NUL-terminated words
from protocol 30, lines before), and the session goes on as after a remote
shell's version exchange.

Configuration comes from TOML (`--gokr.config`, `--gokr.modulemap`) or from
a stock rsyncd.conf (`--config`), so gokr-rsyncd can stand in for rsyncd.
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
DEFAULT_HOSTKEY = os.path.expanduser("~/.config/gokr-rsyncd/ssh_host_ed25519_key")
AUTH_DIGESTS = "sha512 sha256 sha1 md5 md4"
HANDSHAKE_TIMEOUT = 60.0


class ConfigError(Exception):
    pass


class Module:
    """A named directory tree the daemon serves, with its access rules."""

    def __init__(self, name, path, comment="", acl=(), listed=True, writable=False):
        if not name or "/" in name or name.startswith("#") or any(c.isspace() for c in name):
            raise ConfigError("invalid module name %r" % name)
        self.name = name
        self.path = os.path.abspath(path)
        self.comment = comment
        self.acl = [parse_acl(a) for a in acl]
        self.listed = listed
        self.writable = writable
        self.write_only = False
        self.timeout = 0
        self.max_connections = 0
        self.active = 0
        self.conf = None
        self.auth_users = []
        self.secrets_file = None
        self.secrets = None
        self.strict_modes = True
        self.refuse_options = []
        self.filters = None
        self.numeric_ids = False
        self.ignore_errors = False

    def check_access(self, addr, hostname=None):
        """TOML acl (first matching entry decides, none allows), then
        rsyncd.conf's hosts allow / hosts deny."""
        try:
            ip = ipaddress.ip_address(addr.split("%")[0]) if addr else None
        except ValueError:
            ip = None
        for action, net in self.acl:
            if net is None or (ip is not None and _in_net(ip, net)):
                if action != "allow":
                    return False
                break
        if self.conf is not None:
            return self.conf.allows_host(addr, hostname)
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


class Listener:
    """Where to listen: kind "rsyncd" (TCP), "anonssh" (any SSH client) or
    "authorized_ssh" (only keys in `authorized_keys`)."""

    def __init__(self, kind, address, authorized_keys=None):
        self.kind = kind
        self.address = address
        self.authorized_keys = authorized_keys


class Config:
    def __init__(self):
        self.listeners = []
        self.modules = {}
        self.handshake_timeout = HANDSHAKE_TIMEOUT
        self.max_connections = 0
        self.active = 0
        self.lock = threading.Lock()
        self.user = None
        self.group = None
        self.motd = ""
        self.pid_file = None
        self.log_file = None
        self.hostkey = None
        self.reverse_lookup = False

    def admit(self, module):
        """max connections: one more client, globally and for the module, or
        the limit that refuses it."""
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
    """`[daemon]`, `[[listener]] rsyncd = "host:port"` (or `anonssh`, or
    `authorized_ssh = {address, authorized_keys}`) and `[[module]]`."""
    cfg = cfg or Config()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("%s: %s" % (path, e)) from None
    except OSError as e:
        raise ConfigError("%s: %s" % (path, e.strerror)) from None
    for lst in data.get("listener", []):
        if not isinstance(lst, dict) or len(lst) != 1:
            raise ConfigError("%s: a listener has exactly one of rsyncd, anonssh, authorized_ssh: %r"
                              % (path, lst))
        (kind, value), = lst.items()
        if kind in ("rsyncd", "anonssh") and isinstance(value, str):
            cfg.listeners.append(Listener(kind, value))
        elif kind == "authorized_ssh" and isinstance(value, dict) and \
                set(value) == {"address", "authorized_keys"}:
            cfg.listeners.append(Listener(kind, value["address"], value["authorized_keys"]))
        else:
            raise ConfigError("%s: unsupported listener %r (rsyncd = \"host:port\", anonssh = "
                              "\"host:port\", authorized_ssh = {address, authorized_keys})" % (path, lst))
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
    unknown = set(daemon) - {"handshake_timeout", "max_connections", "user", "hostkey"}
    if unknown:
        raise ConfigError("%s: [daemon]: unsupported key(s) %s" % (path, ", ".join(sorted(unknown))))
    if "handshake_timeout" in daemon:
        cfg.handshake_timeout = float(daemon["handshake_timeout"])
    cfg.max_connections = int(daemon.get("max_connections", 0))
    cfg.user = daemon.get("user")
    cfg.hostkey = daemon.get("hostkey")
    return cfg


def load_rsyncd_conf(path):
    """A stock rsyncd.conf, for gokr-rsyncd to stand in for rsyncd."""
    import rsync_conf
    import rsync_filter
    try:
        conf = rsync_conf.load_rsyncd_conf(path)
    except rsync_conf.ConfigError as e:
        raise ConfigError(str(e)) from None
    except OSError as e:
        raise ConfigError("%s: %s" % (path, e.strerror)) from None
    cfg = Config()
    g = conf.globals
    cfg.pid_file = g.pid_file
    cfg.log_file = g.log_file
    cfg.reverse_lookup = g.reverse_lookup
    if g.motd_file:
        try:
            with open(g.motd_file, "r", errors="replace") as f:
                cfg.motd = f.read()
        except OSError:
            cfg.motd = ""
    uids = {m.uid for m in conf.modules} | {g.uid}
    gids = {m.gid for m in conf.modules} | {g.gid}
    if len(uids - {None}) > 1 or len(gids - {None}) > 1:
        raise ConfigError("%s: modules with different uid/gid are not supported (gokr-rsyncd "
                          "serves every module as one user); set uid and gid globally" % path)
    cfg.user = next(iter(uids - {None}), None)
    cfg.group = next(iter(gids - {None}), None)
    for m in conf.modules:
        if m.munge_symlinks:
            raise ConfigError("%s:%d: munge symlinks = yes is not supported (gokr-rsyncd never "
                              "follows a symlink, so it stores them unchanged)" % (path, m.lineno))
        mod = Module(m.name, m.path, m.comment, (), m.list, not m.read_only)
        mod.conf = m
        mod.write_only = m.write_only
        mod.timeout = m.timeout
        mod.max_connections = m.max_connections
        mod.auth_users = list(m.auth_users)
        mod.secrets_file = m.secrets_file
        mod.strict_modes = m.strict_modes
        mod.refuse_options = list(m.refuse_options)
        mod.numeric_ids = m.numeric_ids_for(True)
        mod.ignore_errors = m.ignore_errors
        if m.filter_rules:
            fl = rsync_filter.FilterList()
            for kind, text in m.filter_rules:
                if kind.endswith(" from"):
                    try:
                        with open(text, "rb") as f:
                            text = f.read()
                    except OSError as e:
                        raise ConfigError("%s:%d: %s %s: %s" % (path, m.lineno, kind, text, e.strerror)) from None
                fl.add_daemon_rules(text, kind=kind)
            mod.filters = fl
        cfg.add_module(mod)
    return cfg, conf


def parse_hostport(text, default_port=873):
    """`host:port`, `:port`, `[v6]:port` → (host, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = text, ""
    try:
        return host, int(port) if port else default_port
    except ValueError:
        raise ConfigError("invalid listen address %r (want HOST:PORT)" % text) from None


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
    words = text[9:].split(" ")
    version, _, sub = words[0].partition(".")
    try:
        version = int(version)
        sub = int(sub) if sub else -1
    except ValueError:
        raise rsync.RsyncError("protocol startup error: %r" % text[:80], rsync.RERR_STARTCLIENT) from None
    return version, sub, text, words[1:]


def _hostname(cfg, module, addr):
    """The client's host name, when a hosts rule needs one and reverse
    lookups are on (as rsyncd does); else None."""
    conf = module.conf
    if conf is None or not conf.reverse_lookup or not addr:
        return None
    try:
        return socket.gethostbyaddr(addr)[0]
    except OSError:
        return None


def _authenticate(say, raw, module, digests, protocol, addr, host, log):
    """rsync's auth_server: challenge, check the response against the
    secrets file. Returns the access the user gets ("ro", "rw" or ""), or
    None after answering @ERROR."""
    import rsync_conf
    digest = rsync_conf.pick_auth_digest(digests or None, protocol)
    challenge = rsync_conf.auth_challenge(addr, digest if digest != "md4_old" else "md4")
    say("@RSYNCD: AUTHREQD %s\n" % challenge)
    line = raw.read_line(1024).rstrip(b"\r").decode("utf-8", "replace")
    try:
        if module.secrets is not None:
            secrets = module.secrets
        elif not module.secrets_file:
            raise rsync_conf.AuthError("no secrets file configured")
        else:
            secrets = rsync_conf.read_secrets(module.secrets_file, module.strict_modes)
        user, access = rsync_conf.check_auth(line, challenge, module.auth_users, secrets, digest,
                                             module=module.name, host=host, addr=addr)
    except (rsync_conf.AuthError, rsync_conf.SecretsError, OSError) as e:
        log("auth failed on module %s from %s: %s" % (module.name, host, e))
        say("@ERROR: auth failed on module %s\n" % module.name)
        return None
    log("auth ok on module %s from %s for %s" % (module.name, host, user))
    return access


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
        if cfg.motd:
            say(cfg.motd if cfg.motd.endswith("\n") else cfg.motd + "\n")
            say("\n")
        version, sub, greeting, digests = _read_greeting(raw)
        if sub < 0 and version >= 30:
            say("@ERROR: your client omitted the subprotocol value: %s\n" % greeting)
            return rsync.RERR_STARTCLIENT
        if version > 31 and not digests:
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
                if m.listed and (m.conf is None or m.check_access(peer, _hostname(cfg, m, peer))):
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
        hostname = _hostname(cfg, module, peer)
        if not module.check_access(peer, hostname):
            log("rsync denied on module %s from %s" % (module.name, host))
            say("@ERROR: access denied to %s from %s (%s)\n" % (module.name, hostname or host, host))
            return rsync.RERR_STARTCLIENT
        if module.timeout and module.timeout < cfg.handshake_timeout:
            transport.deadline = start + module.timeout
        limit = cfg.admit(module)
        if limit is not None:
            log("max connections (%d) reached for %s from %s" % (limit, module.name, host))
            say("@ERROR: max connections (%d) reached -- try again later\n" % limit)
            return rsync.RERR_STARTCLIENT
        admitted = module
        writable = module.writable
        if module.auth_users:
            access = _authenticate(say, raw, module, digests, protocol, peer, host, log)
            if access is None:
                return rsync.RERR_STARTCLIENT
            if access == "ro":
                writable = False
            elif access == "rw":
                writable = True
        say("@RSYNCD: OK\n")
        argv = _read_args(raw, protocol)
        if rsync.protect_args_requested(argv):
            argv = rsync.with_protected_args(argv, raw)
        argv = _module_args(argv, module.name)
        transport.deadline = None
        refusal = None
        if module.refuse_options:
            import rsync_conf
            refusal = rsync_conf.refused_option(module.refuse_options, argv)
        if module.write_only and "--sender" in argv:
            refusal = "ERROR: module is write only"
        log("rsync %s %s from %s: %s" % ("on" if "--sender" in argv else "to", module.name, host,
                                        " ".join(argv)))
        if hasattr(transport, "set_timeout"):
            transport.set_timeout(module.timeout or None)
        code = rsync.run_server(transport, argv, module.path, confined=True,
                                remote_protocol=protocol, log=log, raw=raw,
                                io_timeout=module.timeout, am_daemon=True, writable=writable,
                                daemon_filters=module.filters, refusal=refusal,
                                numeric_ids=module.numeric_ids, ignore_errors=module.ignore_errors,
                                module=module.name)
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
                    [--gokr.config=FILE] [--gokr.user=USER] [--gokr.anonssh_listen=HOST:PORT]
                    [--gokr.hostkey=FILE] [--gokr.handshake_timeout=SECONDS]
       gokr-rsyncd --daemon --config=RSYNCD.CONF [--no-detach] [--port=N] [--address=A]
                    [--log-file=FILE]                     (standing in for rsync --daemon)
       gokr-rsyncd --server [--sender] OPTIONS . PATH...   (run by rsync over a remote shell)
       gokr-rsyncd --server --daemon [--gokr.config=FILE | --config=FILE] .

Started as root on Linux, the daemon serves from a private mount namespace
that holds only its modules (read-only unless writable) and runs as USER
(default nobody). Without root it refuses modules it could write to unless
they are writable (--gokr.insecure_writable_modules turns that check off).
With a socket on standard input it serves that one connection (inetd); with
LISTEN_FDS it serves the sockets systemd passes.
"""

# Our options: name -> (key, takes a value)
OPTIONS = {
    "--gokr.listen": ("listen", True), "--gokr.modulemap": ("modulemap", True),
    "--modulemap": ("modulemap", True), "--gokr.config": ("toml", True),
    "--gokr.user": ("user", True), "--gokr.handshake_timeout": ("handshake_timeout", True),
    "--gokr.anonssh_listen": ("anonssh", True), "--gokr.hostkey": ("hostkey", True),
    "--gokr.insecure_writable_modules": ("insecure", False),
    "--config": ("conf", True), "--port": ("port", True), "--address": ("address", True),
    "--log-file": ("log_file", True), "--no-detach": ("no_detach", False),
    "--detach": ("detach", False),
}


def parse_args(argv):
    """With --daemon, our own options and rsync daemon's; otherwise (the
    --server of a remote shell) the argv is rsync's server argv."""
    opts = {"daemon": False, "server": False, "listen": [], "modulemap": [], "anonssh": [],
            "toml": None, "conf": None, "rest": [], "user": None, "insecure": False}
    if "--daemon" not in argv and "--server" in argv:
        opts["server"] = True
        opts["rest"] = list(argv)
        return opts
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        name, eq, value = a.partition("=")
        if name in OPTIONS:
            key, wants = OPTIONS[name]
            if not wants:
                opts[key] = True
                continue
            if not eq:
                if i >= len(argv):
                    raise ConfigError("%s needs a value" % name)
                value = argv[i]
                i += 1
            if isinstance(opts.get(key), list):
                opts[key].append(value)
            else:
                opts[key] = value
            continue
        if a == "--daemon":
            opts["daemon"] = True
        elif a == "--server":
            opts["server"] = True
        elif a in ("-h", "--help"):
            opts["help"] = True
        elif a == ".":
            pass
        else:
            raise ConfigError("%s: unknown option (see --help)" % a)
    return opts


def build_config(opts):
    """The Config from rsyncd.conf (--config), or from TOML and modulemaps."""
    if opts["conf"]:
        if opts["toml"] or opts["modulemap"]:
            raise ConfigError("--config (rsyncd.conf) and --gokr.config/--gokr.modulemap exclude each other")
        cfg, conf = load_rsyncd_conf(opts["conf"])
        g = conf.globals
        port = opts.get("port") or g.port or 873
        address = opts.get("address") or g.address or ""
        cfg.listeners.append(Listener("rsyncd", "%s:%s" % (
            "[%s]" % address if ":" in address else address, port)))
        if opts.get("log_file"):
            cfg.log_file = opts["log_file"]
    else:
        cfg = Config()
        path = opts["toml"]
        if path is None and not opts["modulemap"] and os.path.exists(DEFAULT_CONFIG):
            path = DEFAULT_CONFIG
        if path:
            load_toml(path, cfg)
        for mm in opts["modulemap"]:
            name, eq, p = mm.partition("=")
            if not eq:
                raise ConfigError("--gokr.modulemap wants NAME=PATH, got %r" % mm)
            cfg.add_module(Module(name, p))
        cfg.listeners.extend(Listener("rsyncd", a) for a in opts["listen"])
        cfg.log_file = opts.get("log_file")
    cfg.listeners.extend(Listener("anonssh", a) for a in opts["anonssh"])
    if opts.get("hostkey"):
        cfg.hostkey = opts["hostkey"]
    if opts.get("handshake_timeout"):
        try:
            cfg.handshake_timeout = float(opts["handshake_timeout"])
        except ValueError:
            raise ConfigError("--gokr.handshake_timeout wants seconds, got %r" % opts["handshake_timeout"]) from None
    if opts.get("user"):
        cfg.user = opts["user"]
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


def _prepare_for_chroot(ssh=False):
    """Loads now what serving needs later from the file system we leave."""
    __import__("encodings.idna")
    import rsync_delta
    rsync_delta.checksum1(b"x")
    for name in ("rsync_sender", "rsync_receiver", "rsync_filter", "rsync_compress", "rsync_conf", "rsync_md4") + (("rsync_sshd", "paramiko") if ssh else ()):
        try:
            __import__(name)
        except ImportError:
            pass
    rsync.new_hash("md4").update(b"x")
    rsync.prime_id_caches()
    time.strftime("%Y")


def confine(cfg, opts, log=lambda msg: None, sshs=()):
    """The jail (root on Linux), or refusing writable modules (not root).
    SSH listeners' authorized_keys files are bound into the jail, since
    they are read again for every connection."""
    mods = list(cfg.modules.values())
    if rsync_jail.can_jail():
        for m in mods:
            if m.secrets_file:
                import rsync_conf
                try:
                    m.secrets = rsync_conf.read_secrets(m.secrets_file, m.strict_modes)
                except (rsync_conf.SecretsError, OSError) as e:
                    raise ConfigError("module %s: %s" % (m.name, e)) from None
        user = cfg.user or "nobody"
        uid, gid = rsync_jail.lookup_user(user)
        if cfg.group:
            gid = rsync_jail.lookup_group(cfg.group)
        keyfiles = [s.authorized_keys for s in sshs if s.authorized_keys]
        inside = rsync_jail.enter([(m.name, m.path, m.writable) for m in mods],
                                  prepare=lambda: _prepare_for_chroot(bool(sshs)), files=keyfiles)
        for m in mods:
            m.path = inside[m.name]
        for s in sshs:
            if s.authorized_keys:
                s.authorized_keys = inside[s.authorized_keys]
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


def _ssh_listeners(cfg, log):
    """SSH listeners serving the daemon protocol on their channels."""
    if not any(lst.kind in ("anonssh", "authorized_ssh") for lst in cfg.listeners):
        return []
    import rsync_sshd
    key = rsync_sshd.load_or_create_host_key(cfg.hostkey or DEFAULT_HOSTKEY)
    out = []
    for lst in cfg.listeners:
        if lst.kind not in ("anonssh", "authorized_ssh"):
            continue
        host, port = parse_hostport(lst.address, 22873)
        out.append(rsync_sshd.SSHListener(
            (host or "0.0.0.0", port), key,
            lambda transport, peer, argv: serve_connection(transport, cfg, peer, log),
            authorized_keys=lst.authorized_keys, log=log,
            handshake_timeout=cfg.handshake_timeout))
    return out


def detach(pid_file):
    """rsync --daemon without --no-detach: a background process in its own
    session, writing its pid file."""
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if pid_file:
        fd = os.open(pid_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, b"%d\n" % os.getpid())
        os.close(fd)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    log = Logger()
    try:
        opts = parse_args(argv)
        if opts.get("help") or not (opts["daemon"] or opts["server"]):
            sys.stdout.write(USAGE)
            return 0 if opts.get("help") else rsync.RERR_SYNTAX
        if opts["server"] and not opts["daemon"]:
            return rsync.run_server(rsync.PipeTransport(sys.stdin.fileno(), sys.stdout.fileno()),
                                    opts["rest"], ".", confined=False, log=lambda msg: None)
        cfg = build_config(opts)
        if opts["server"]:
            transport = rsync.PipeTransport(sys.stdin.fileno(), sys.stdout.fileno())
            peer = os.environ.get("SSH_CLIENT", "").split(" ")[0]
            return serve_connection(transport, cfg, peer, lambda msg: None)
        if not cfg.modules:
            raise ConfigError("no modules configured (use --gokr.modulemap=NAME=PATH or a config file)")
        if cfg.log_file:
            log = Logger(open(cfg.log_file, "a"))
        if _stdin_is_socket():
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            confine(cfg, opts)
            return serve_inetd(cfg)
        servers = [DaemonServer(None, cfg, log, sock=s) for s in activation_sockets()]
        if not servers:
            for lst in cfg.listeners or [Listener("rsyncd", "localhost:873")]:
                if lst.kind == "rsyncd":
                    host, port = parse_hostport(lst.address)
                    servers.append(DaemonServer((host or "0.0.0.0", port), cfg, log))
            if not servers and not any(lst.kind != "rsyncd" for lst in cfg.listeners):
                servers.append(DaemonServer(("localhost", 873), cfg, log))
        sshs = _ssh_listeners(cfg, log)
        if opts["conf"] and not opts.get("no_detach"):
            detach(cfg.pid_file)
        elif cfg.pid_file:
            with open(cfg.pid_file, "w") as f:
                f.write("%d\n" % os.getpid())
        confine(cfg, opts, log, sshs)
        for srv in servers:
            log("gokr-rsyncd %s listening on %s:%d, modules: %s" % (
                rsync.VERSION, srv.server_address[0], srv.server_address[1], ", ".join(cfg.modules)))
            if opts["conf"]:
                log("rsyncd version %s starting, listening on port %d" % (rsync.VERSION, srv.server_address[1]))
        for ssh in sshs:
            log("gokr-rsyncd %s serving SSH on %s:%d" % (rsync.VERSION, ssh.server_address[0],
                                                         ssh.server_address[1]))
        runners = [srv.serve_forever for srv in servers] + [s.serve_forever for s in sshs]
        for run in runners[1:]:
            threading.Thread(target=run, daemon=True).start()
        try:
            runners[0]()
        except KeyboardInterrupt:
            pass
        return 0
    except (ConfigError, rsync_jail.JailError) as e:
        sys.stderr.write("gokr-rsyncd: %s\n" % e)
        return rsync.RERR_SYNTAX
    except OSError as e:
        sys.stderr.write("gokr-rsyncd: %s\n" % e)
        return rsync.RERR_SOCKETIO
    except Exception as e:
        if type(e).__name__ == "SSHSetupError":
            sys.stderr.write("gokr-rsyncd: %s\n" % e)
            return rsync.RERR_SYNTAX
        raise


if __name__ == "__main__":
    sys.exit(main())
