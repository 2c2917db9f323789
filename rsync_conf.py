"""What gokr-rsyncd needs to stand in for rsyncd: rsyncd.conf, and "hosts
allow" and "hosts deny", each as rsync 3.5.0 does it.

Parsing and matching work on strings.  The few functions that touch the
system are thin and replaceable: load_rsyncd_conf reads the file,
forward_lookup asks the resolver and innetgr asks NSS.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import functools
import ipaddress
import os
import re
import socket
import stat
from collections.abc import Callable, Iterable

from rsync_filter import wildmatch

_new_list = list  # ModuleConf has a field named "list"

# ----------------------------------------------------------------------------
# rsyncd.conf


class ConfigError(ValueError):
    """An rsyncd.conf that rsync would reject, or that uses what we lack."""


_SPACE = " \t\n\v\f\r"
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")

DEFAULT_LOCK_FILE = "/var/run/rsyncd.lock"
DEFAULT_LOG_FORMAT = "%o %h [%a] %m (%u) %f %l"


def _key(name: str) -> str:
    """How rsync compares parameter and module names: case and whitespace
    do not count (underscores and dashes do)."""
    return "".join(c for c in name if c not in _SPACE).translate(_ASCII_UPPER)


# label: (attribute, kind, global only, default).  Kinds: str, path (a str
# without trailing slashes), bool, bool3 (yes, no or unset), int.
_PARAMS = {
    "path": ("path", "path", False, None),
    "comment": ("comment", "str", False, None),
    "read only": ("read_only", "bool", False, True),
    "write only": ("write_only", "bool", False, False),
    "list": ("list", "bool", False, True),
    "hosts allow": ("hosts_allow", "str", False, None),
    "hosts deny": ("hosts_deny", "str", False, None),
    "max connections": ("max_connections", "int", False, 0),
    "timeout": ("timeout", "int", False, 0),
    "auth users": ("auth_users", "str", False, None),
    "secrets file": ("secrets_file", "str", False, None),
    "strict modes": ("strict_modes", "bool", False, True),
    "uid": ("uid", "str", False, None),
    "gid": ("gid", "str", False, None),
    "use chroot": ("use_chroot", "bool3", False, None),
    "refuse options": ("refuse_options", "str", False, None),
    "filter": ("filter", "str", False, None),
    "include from": ("include_from", "str", False, None),
    "include": ("include", "str", False, None),
    "exclude from": ("exclude_from", "str", False, None),
    "exclude": ("exclude", "str", False, None),
    "log file": ("log_file", "str", False, None),
    "lock file": ("lock_file", "str", False, DEFAULT_LOCK_FILE),
    "reverse lookup": ("reverse_lookup", "bool", False, True),
    "forward lookup": ("forward_lookup", "bool", False, True),
    "numeric ids": ("numeric_ids", "bool3", False, None),
    "munge symlinks": ("munge_symlinks", "bool3", False, None),
    "ignore errors": ("ignore_errors", "bool", False, False),
    "ignore nonreadable": ("ignore_nonreadable", "bool", False, False),
    "dont compress": ("dont_compress", "str", False, None),
    "transfer logging": ("transfer_logging", "bool", False, False),
    "log format": ("log_format", "str", False, DEFAULT_LOG_FORMAT),
    "motd file": ("motd_file", "str", True, None),
    "pid file": ("pid_file", "str", True, None),
    "port": ("port", "int", True, 0),
    "address": ("address", "str", True, None),
}
_BY_KEY = {_key(label): (label,) + spec for label, spec in _PARAMS.items()}

# The rest of rsync 3.5.0's parameters: known to rsync, not implemented here.
_STOCK_ONLY = {_key(label) for label in (
    "daemon chroot", "daemon gid", "daemon uid", "proxy protocol hosts", "socket options",
    "listen backlog", "proxy protocol", "auth digest", "charset", "early exec",
    "incoming chmod", "outgoing chmod", "name", "name converter", "post-xfer exec",
    "pre-xfer exec", "syslog tag", "temp dir", "max verbosity", "syslog facility",
    "fake super", "insecure links", "open noatime")}

_TRUE_WORDS = {"YES", "TRUE", "1"}
_FALSE_WORDS = {"NO", "FALSE", "0"}
_UNSET_WORDS = {"UNSET", "-1"}

# rsyncd applies a module's filter parameters in this order.
FILTER_KINDS = ("filter", "include from", "include", "exclude from", "exclude")
_FILTER_ATTRS = {kind: kind.replace(" ", "_") for kind in FILTER_KINDS}


@dataclasses.dataclass
class ModuleConf:
    """One [module] of rsyncd.conf, with the global defaults filled in.

    use_chroot is what rsync tries; use_chroot_required says a failed chroot
    is fatal (set explicitly, or unset with a "/./" in the path), otherwise a
    failing chroot falls back to none, as rsync does for an unset value.
    numeric_ids and munge_symlinks are None when unset: see
    numeric_ids_for and munge_symlinks_for.  filter_rules holds
    (kind, value) pairs in the order rsyncd applies them, for
    rsync_filter.FilterList.add_daemon_rules; for "include from" and
    "exclude from" the value is the file to read.  hosts_allow and
    hosts_deny hold the patterns, auth_users the rules as written (joe:ro,
    @staff:rw), refuse_options the patterns.
    """

    name: str = ""
    path: str | None = None
    comment: str = ""
    read_only: bool = True
    write_only: bool = False
    hosts_allow: list[str] = dataclasses.field(default_factory=_new_list)
    hosts_deny: list[str] = dataclasses.field(default_factory=_new_list)
    max_connections: int = 0
    timeout: int = 0
    auth_users: list[str] = dataclasses.field(default_factory=_new_list)
    secrets_file: str | None = None
    strict_modes: bool = True
    uid: str | None = None
    gid: str | None = None
    use_chroot: bool = True
    use_chroot_required: bool = False
    refuse_options: list[str] = dataclasses.field(default_factory=_new_list)
    filter_rules: list[tuple[str, str]] = dataclasses.field(default_factory=_new_list)
    log_file: str | None = None
    lock_file: str = DEFAULT_LOCK_FILE
    reverse_lookup: bool = True
    forward_lookup: bool = True
    numeric_ids: bool | None = None
    munge_symlinks: bool | None = None
    ignore_errors: bool = False
    ignore_nonreadable: bool = False
    dont_compress: str | None = None
    transfer_logging: bool = False
    log_format: str = DEFAULT_LOG_FORMAT
    lineno: int = 0
    list: bool = True

    def allows_host(self, addr: str, hostname: str | None) -> bool:
        """hosts allow/deny for this module (see host_allowed), with the
        forward lookups of hostnames that "forward lookup" (on by default)
        asks for.  hostname is the client's name when rsyncd would have
        looked it up (RsyncdConf.wants_hostname), else None."""
        return host_allowed(addr, hostname, self.hosts_allow, self.hosts_deny,
                            resolve=forward_lookup if self.forward_lookup else None,
                            netgroup=innetgr)

    def numeric_ids_for(self, chrooted: bool) -> bool:
        """rsyncd's choice for an unset "numeric ids": on in a chroot."""
        if chrooted:
            return self.numeric_ids is not False
        return self.numeric_ids is True

    def munge_symlinks_for(self, chrooted: bool) -> bool:
        """rsyncd's choice for an unset "munge symlinks": off only when the
        chroot's root is the module itself."""
        if self.munge_symlinks is not None:
            return self.munge_symlinks
        if not chrooted:
            return True
        path = self.path or ""
        if "/./" not in path:
            return False
        return os.path.normpath("/" + path.split("/./", 1)[1]) != "/"


@dataclasses.dataclass
class GlobalConf(ModuleConf):
    """The global section: defaults for every module, and the settings that
    only exist globally."""

    motd_file: str | None = None
    pid_file: str | None = None
    port: int = 0
    address: str | None = None


@dataclasses.dataclass
class RsyncdConf:
    """A parsed rsyncd.conf.  warnings holds what rsync would log and skip
    (malformed lines)."""

    path: str
    globals: GlobalConf
    modules: list[ModuleConf]
    warnings: list[str] = dataclasses.field(default_factory=_new_list)

    def module(self, name: str) -> ModuleConf | None:
        """The module a client asks for: its name must match exactly."""
        for m in reversed(self.modules):
            if m.name == name:
                return m
        return None

    def wants_hostname(self, module: ModuleConf) -> bool:
        """Whether rsyncd knows the client's name when it checks the module's
        hosts: it looks the name up on connecting if the global "reverse
        lookup" is on (the default), else only for modules that turn it on."""
        return self.globals.reverse_lookup or module.reverse_lookup


class _Reader:
    """Characters of the file with the line count; a NUL ends it, as in rsync."""

    def __init__(self, text: str):
        nul = text.find("\0")
        self.text = text if nul < 0 else text[:nul]
        self.pos = 0
        self.line = 1

    def getc(self) -> str:
        if self.pos >= len(self.text):
            return ""
        c = self.text[self.pos]
        self.pos += 1
        if c == "\n":
            self.line += 1
        return c

    def skip_space(self) -> str:
        """The next character that is a newline or not white space."""
        while True:
            c = self.getc()
            if not c or c == "\n" or c not in _SPACE:
                return c

    def skip_line(self) -> str:
        while True:
            c = self.getc()
            if not c or c == "\n":
                return c


def _put(buf: list[str], i: int, c: str) -> None:
    if i < len(buf):
        buf[i] = c
    else:
        buf.append(c)


def _continuation(buf: list[str], i: int) -> int:
    """Where the backslash sits if buf[:i] ends in one (white space after it
    allowed), else -1."""
    i -= 1
    while i >= 0 and buf[i] in _SPACE:
        i -= 1
    return i if i >= 0 and buf[i] == "\\" else -1


class _Parser:
    def __init__(self, text: str, path: str):
        self.r = _Reader(text)
        self.path = path
        self.warnings: list[str] = []
        self.globals = {attr: default for attr, _, _, default in _PARAMS.values()}
        self.sections: dict[str, tuple[str, int, dict]] = {}
        self.current: dict | None = None
        self.current_name = ""

    def error(self, line: int, msg: str) -> ConfigError:
        return ConfigError("%s:%d: %s" % (self.path, line, msg))

    def warn(self, line: int, msg: str) -> None:
        self.warnings.append("%s:%d: %s" % (self.path, line, msg))

    def parse(self) -> None:
        r = self.r
        c = r.skip_space()
        while c:
            if c == "\n":
                c = r.skip_space()
            elif c in ";#":
                c = r.skip_line()
            elif c == "[":
                line = r.line
                self.section(self.section_name(line), line)
                c = r.skip_space()
            elif c == "\\":
                c = r.skip_space()
            elif c == "&":
                self.directive(r.line)
            else:
                line = r.line
                pair = self.name_value(c, line)
                if pair is not None:
                    self.parameter(pair[0], pair[1], line)
                c = r.skip_space()

    def directive(self, line: int) -> None:
        word = ["&"]
        while True:
            c = self.r.getc()
            if not c or c in _SPACE or c == "=":
                break
            word.append(c)
        raise self.error(line, '"%s" directives are not supported: put the settings of the '
                               'included files into this one' % "".join(word))

    def section_name(self, line: int) -> str:
        """[name]: white space runs become one space, the ends are trimmed,
        and the rest of the line after "]" is ignored."""
        r = self.r
        buf: list[str] = []
        i = end = 0
        c = r.skip_space()
        while c:
            if c == "]":
                name = "".join(buf[:end])
                if not name:
                    raise self.error(line, "empty module name []")
                r.skip_line()
                return name
            if c == "\n":
                i = _continuation(buf, i)
                if i < 0:
                    raise self.error(line, 'module header "[%s" lacks its "]"' % "".join(buf[:end]))
                end = i - 1 if i > 0 and buf[i - 1] == " " else i
                c = r.getc()
            elif c in _SPACE:
                _put(buf, end, " ")
                i = end + 1
                c = r.skip_space()
            else:
                _put(buf, i, c)
                i += 1
                end = i
                c = r.getc()
        raise self.error(line, 'module header "[%s" lacks its "]"' % "".join(buf[:end]))

    def name_value(self, c: str, line: int) -> tuple[str, str] | None:
        """`name = value`, with continuation lines.  White space runs in the
        name become one space; the value keeps its inner white space but
        loses carriage returns.  A line without "=" is skipped, as rsync
        skips it."""
        r = self.r
        buf: list[str] = []
        i = end = 0
        vstart = 0
        while not vstart:
            if c == "=":
                if end == 0:
                    raise self.error(line, 'a parameter name is missing before "="')
                _put(buf, end, "\0")
                end += 1
                i = vstart = end
                c = r.skip_space()
            elif c == "\n":
                i = _continuation(buf, i)
                if i < 0:
                    self.warn(line, 'ignoring line without "=": %s' % "".join(buf[:end]))
                    return None
                end = i - 1 if i > 0 and buf[i - 1] == " " else i
                c = r.getc()
            elif not c:
                self.warn(line, 'ignoring last line, it has no "=": %s' % "".join(buf[:i]))
                return None
            elif c in _SPACE:
                _put(buf, end, " ")
                i = end + 1
                c = r.skip_space()
            else:
                _put(buf, i, c)
                i += 1
                end = i
                c = r.getc()
        while c:
            if c == "\r":
                c = r.getc()
            elif c == "\n":
                i = _continuation(buf, i)
                if i < 0:
                    break
                end = i
                c = r.getc()
            else:
                _put(buf, i, c)
                i += 1
                if c not in _SPACE:
                    end = i
                c = r.getc()
        return "".join(buf[:vstart - 1]), "".join(buf[vstart:end])

    def section(self, name: str, line: int) -> None:
        if _key(name) == "GLOBAL":
            self.current = None
            return
        if "/" in name:
            raise self.error(line, 'module name "[%s]" must not contain "/"' % name)
        found = self.sections.get(_key(name))
        if found is None:
            found = (name, line, dict(self.globals))
            self.sections[_key(name)] = found
        self.current_name = found[0]
        self.current = found[2]

    def parameter(self, name: str, value: str, line: int) -> None:
        spec = None if name.startswith("-") else _BY_KEY.get(_key(name))
        if spec is None:
            what = "unsupported" if _key(name) in _STOCK_ONLY else "unknown"
            raise self.error(line, '%s parameter "%s"' % (what, name))
        label, attr, kind, global_only, _ = spec
        if global_only and self.current is not None:
            raise self.error(line, '"%s" is a global parameter; move it above the first module '
                                   '(it is in [%s])' % (label, self.current_name))
        target = self.globals if self.current is None else self.current
        target[attr] = self.convert(name, value, kind, line)

    def convert(self, name: str, value: str, kind: str, line: int):
        if kind in ("bool", "bool3"):
            word = _key(value)
            if word in _TRUE_WORDS:
                return True
            if word in _FALSE_WORDS:
                return False
            if kind == "bool3" and word in _UNSET_WORDS:
                return None
            raise self.error(line, '"%s" wants yes or no (true/false, 1/0%s), not "%s"'
                             % (name, ", unset" if kind == "bool3" else "", value))
        if kind == "int":
            if not re.fullmatch(r"[+-]?[0-9]+", value):
                raise self.error(line, '"%s" wants a whole number, not "%s"' % (name, value))
            return int(value)
        if kind == "path":
            while len(value) > 1 and value.endswith("/"):
                value = value[:-1]
        return value

    def result(self) -> RsyncdConf:
        g = self.globals
        gconf = GlobalConf(**_fields(g))
        modules = []
        for name, line, values in self.sections.values():
            for attr, kind, _, _ in _PARAMS.values():
                if kind in ("str", "path") and values[attr] is None:
                    values[attr] = g[attr]
            if not values["path"]:
                raise self.error(line, 'module [%s] has no "path"' % name)
            modules.append(ModuleConf(name=name, lineno=line, **_fields(values, module=True)))
        return RsyncdConf(self.path, gconf, modules, self.warnings)


def _fields(values: dict, module: bool = False) -> dict:
    """ModuleConf/GlobalConf keywords from the parameter values."""
    out = {attr: values[attr] for attr, _, global_only, _ in _PARAMS.values()
           if not (module and global_only) and attr not in _FILTER_ATTRS.values()}
    out["hosts_allow"] = host_patterns(values["hosts_allow"] or "")
    out["hosts_deny"] = host_patterns(values["hosts_deny"] or "")
    out["auth_users"] = conf_tokens(values["auth_users"] or "")
    out["refuse_options"] = [p for p in (values["refuse_options"] or "").split(" ") if p]
    out["comment"] = values["comment"] or ""
    chroot = values["use_chroot"]
    out["use_chroot"] = chroot is not False
    out["use_chroot_required"] = chroot is True or (chroot is None and "/./" in (values["path"] or ""))
    out["filter_rules"] = [(kind, values[attr]) for kind, attr in _FILTER_ATTRS.items() if values[attr]]
    return out


def host_patterns(value: str) -> list[str]:
    """The patterns of a "hosts allow"/"hosts deny" value (split at spaces,
    tabs and commas).  A value of separators only is kept whole: rsync
    counts it as a list that matches nothing."""
    pats = [p for p in re.split(r"[ ,\t]+", value) if p]
    return pats if pats or not value else [value]


def conf_tokens(value: str) -> list[str]:
    """A list value as rsync splits "auth users" and "gid": at commas and
    white space, or at commas only when the value starts with a comma (so
    an entry may hold spaces); entries are trimmed and empty ones dropped."""
    value = value.lstrip(_SPACE)
    if value.startswith(","):
        return [t.strip(_SPACE) for t in value[1:].split(",") if t.strip(_SPACE)]
    return [t for t in re.split(r"[ ,\t\r\n]+", value) if t]


def parse_rsyncd_conf(text: str, path: str = "rsyncd.conf") -> RsyncdConf:
    """rsyncd.conf as rsync reads it.  Parameters before the first [module]
    (or in a [global] section) are defaults for the modules that follow;
    string parameters a module leaves unset take the final global value, as
    rsync looks them up.  A module named twice is one module.  Unknown or
    unimplemented parameters, bad booleans and numbers, and a module without
    a path raise ConfigError naming the file and line."""
    p = _Parser(text, path)
    p.parse()
    return p.result()


def load_rsyncd_conf(path: str) -> RsyncdConf:
    """Reads and parses rsyncd.conf; like rsync, a symlink on the way to it
    must belong to root or to us."""
    try:
        data = _read_trusted(path)
    except OSError as e:
        raise ConfigError('unable to open config file "%s": %s' % (path, e.strerror or e)) from None
    return parse_rsyncd_conf(data.decode("utf-8", "surrogateescape"), path)


def _open_trusted(path: str) -> int:
    """Opens path for reading, following only symlinks owned by root or by
    our effective uid (rsync's guard against planted links)."""
    trusted = {0, os.geteuid()}
    todo = [p for p in path.split("/") if p]
    cur = "/" if path.startswith("/") else "."
    hops = 0
    while todo:
        part = todo.pop(0)
        nxt = os.path.join(cur, part)
        st = os.lstat(nxt)
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if st.st_uid not in trusted or hops > 40:
                raise OSError(errno.ELOOP, "refusing a symlink owned by uid %d" % st.st_uid
                              if hops <= 40 else "too many symlinks", nxt)
            target = os.readlink(nxt)
            todo[:0] = [p for p in target.split("/") if p]
            if target.startswith("/"):
                cur = "/"
            continue
        cur = nxt
    return os.open(cur, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))


def _read_trusted(path: str, check: Callable[[os.stat_result], None] | None = None) -> bytes:
    fd = _open_trusted(path)
    try:
        if check is not None:
            check(os.fstat(fd))
        chunks = []
        while True:
            b = os.read(fd, 1 << 16)
            if not b:
                return b"".join(chunks)
            chunks.append(b)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------
# hosts allow / hosts deny

UNDETERMINED = "UNDETERMINED"


def host_allowed(addr: str, hostname: str | None, allow: Iterable[str], deny: Iterable[str], *,
                 resolve: Callable[[str], list[str] | None] | None = None,
                 netgroup: Callable[[str, str], bool] | None = None) -> bool:
    """rsyncd's access check.  A host matching "hosts allow" gets in even if
    "hosts deny" matches too; with an allow list and no deny list everything
    else is refused; otherwise a host matching "hosts deny" is refused and
    any other gets in.

    addr is the client's address (an IPv4-mapped IPv6 address counts as
    IPv4, as rsyncd sees it).  hostname is its reverse-looked-up name,
    "UNKNOWN" when that lookup failed, or None when none was done; rsyncd
    then matches its placeholder "UNDETERMINED" (so "*" still matches).
    Patterns are addresses, addr/bits, addr/netmask, hostname wildcards
    (case-insensitive), plain hostnames (also looked up with resolve, which
    returns a name's IPv4 addresses or None; an unresolvable name in the
    deny list counts as a match) and @netgroups (checked with netgroup).
    """
    addr = _unmapped(addr)
    host = UNDETERMINED if hostname is None else hostname
    allow = list(allow)
    deny = list(deny)
    if any(allow):
        if _list_matches(allow, addr, host, False, resolve, netgroup):
            return True
        if not any(deny):
            return False
    if any(deny) and _list_matches(deny, addr, host, True, resolve, netgroup):
        return False
    return True


def _unmapped(addr: str) -> str:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return addr


def _list_matches(items, addr, host, deny, resolve, netgroup) -> bool:
    for item in items:
        for tok in re.split(r"[ ,\t]+", item.translate(_ASCII_LOWER)):
            if tok and (_host_matches(tok, addr, host, deny, resolve, netgroup)
                        or _addr_matches(tok, addr)):
                return True
    return False


def _host_matches(tok, addr, host, deny, resolve, netgroup) -> bool:
    if not host:
        return False
    if tok.startswith("@") and len(tok) > 1:
        return bool(netgroup and netgroup(tok[1:], host))
    if wildmatch(tok.encode("utf-8", "surrogateescape"),
                 host.translate(_ASCII_LOWER).encode("utf-8", "surrogateescape")):
        return True
    if resolve is None:
        return False
    if all(c in ".0123456789" for c in tok) or any(c in tok for c in ":/*?["):
        return False
    found = resolve(tok)
    if found is None:
        return deny
    return addr in found


def _numeric_addr(text: str) -> tuple[int, bytes, int] | None:
    """(family, address bytes, IPv6 scope) of a numeric address, parsed as
    the C library parses it (so 127.1 and 010.0.0.1 count)."""
    try:
        info = socket.getaddrinfo(text, None, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                                  socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, ValueError):
        return None
    family, _, _, _, sa = info[0]
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return family, socket.inet_pton(family, sa[0]), sa[3] if family == socket.AF_INET6 else 0


def _addr_matches(tok: str, addr: str) -> bool:
    if not addr:
        return False
    base, slash, mask = tok.partition("/")
    if not all(c in ".0123456789" for c in base) and ":" not in base:
        return False
    a = _numeric_addr(addr)
    t = _numeric_addr(base) if a else None
    if a is None or t is None or a[0] != t[0]:
        return False
    if t[2] and a[2] != t[2]:
        return False
    size = len(a[1])
    if not slash:
        bits = b"\xff" * size
    else:
        try:
            bits = socket.inet_pton(a[0], mask)
        except (OSError, ValueError):
            if not re.fullmatch(r"[ \t\n\v\f\r]*[+-]?[0-9]+", mask):
                return False
            n = int(mask)
            if n == 0:
                return True
            if n < 0 or n > size * 8:
                return False
            bits = ((1 << size * 8) - (1 << (size * 8 - n))).to_bytes(size, "big")
    return all((x ^ y) & m == 0 for x, y, m in zip(a[1], t[1], bits))


def forward_lookup(name: str) -> list[str] | None:
    """The IPv4 addresses of a hostname from "hosts allow"/"hosts deny"
    (rsync asks gethostbyname), or None when it does not resolve."""
    try:
        return socket.gethostbyname_ex(name)[2]
    except (OSError, UnicodeError):
        return None


@functools.cache
def _innetgr_func():
    try:
        f = ctypes.CDLL(None).innetgr
    except (OSError, AttributeError):
        return None
    f.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p]
    f.restype = ctypes.c_int
    return f


def innetgr(group: str, host: str) -> bool:
    """Whether host is in the NIS/NSS netgroup (False where the C library
    has no netgroups)."""
    f = _innetgr_func()
    return bool(f and f(group.encode(), host.encode(), None, None) == 1)
