"""What gokr-rsyncd needs to stand in for rsyncd: rsyncd.conf, "hosts allow"
and "hosts deny", "refuse options", and the daemon's challenge-response
authentication, each as rsync 3.5.0 does it.

Parsing and matching work on strings and bytes.  The few functions that
touch the system are thin and replaceable: load_rsyncd_conf and read_secrets
read files, forward_lookup asks the resolver, innetgr asks NSS, and
user_groups reads the group database (check_auth takes another in its place).
"""

from __future__ import annotations

import base64
import ctypes
import dataclasses
import errno
import functools
import grp
import hashlib
import hmac
import ipaddress
import os
import pwd
import re
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterable

import rsync_md4
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
    (malformed lines, refuse patterns that name no option)."""

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
            for pattern in modules[-1].refuse_options:
                if not _refuse_pattern_matches(pattern):
                    self.warn(line, 'no option matches the "refuse options" pattern "%s" of [%s]'
                              % (pattern, name))
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


# ----------------------------------------------------------------------------
# refuse options

# rsync's option table, in its order: long name, short letter, how it is
# parsed (N: flag, V: stores a value, S: string argument, I: integer
# argument, B: sets a bit), the variable it sets, and the value it stores or
# the action code it hands to the option loop.  Rows that set the same
# variable to the same value are one capability for refusing.
_OPTION_ROWS = """
help - N - HELP
version V N - V
verbose v N - v
no-verbose - V verbose 0
no-v - V verbose 0
info - S - INFO
debug - S - DEBUG
stderr - S - STDERR
msgs2stderr - V msgs2stderr 1
no-msgs2stderr - V msgs2stderr 0
quiet q N - q
motd - V output_motd 1
no-motd - V output_motd 0
stats - N do_stats 0
human-readable h N - h
no-human-readable - V human_readable 0
no-h - V human_readable 0
dry-run n N dry_run 0
archive a N - a
recursive r V recurse 2
no-recursive - V recurse 0
no-r - V recurse 0
inc-recursive - V allow_inc_recurse 1
no-inc-recursive - V allow_inc_recurse 0
i-r - V allow_inc_recurse 1
no-i-r - V allow_inc_recurse 0
dirs d V xfer_dirs 2
no-dirs - V xfer_dirs 0
no-d - V xfer_dirs 0
old-dirs - V xfer_dirs 4
old-d - V xfer_dirs 4
perms p V preserve_perms 1
no-perms - V preserve_perms 0
no-p - V preserve_perms 0
executability E N preserve_executability 0
acls A N - A
no-acls - V preserve_acls 0
no-A - V preserve_acls 0
xattrs X N - X
no-xattrs - V preserve_xattrs 0
no-X - V preserve_xattrs 0
times t V preserve_mtimes 1
no-times - V preserve_mtimes 0
no-t - V preserve_mtimes 0
atimes U N - U
no-atimes - V preserve_atimes 0
no-U - V preserve_atimes 0
open-noatime - V open_noatime 1
no-open-noatime - V open_noatime 0
crtimes N V preserve_crtimes 1
no-crtimes - V preserve_crtimes 0
no-N - V preserve_crtimes 0
omit-dir-times O V omit_dir_times 1
no-omit-dir-times - V omit_dir_times 0
no-O - V omit_dir_times 0
omit-link-times J V omit_link_times 1
no-omit-link-times - V omit_link_times 0
no-J - V omit_link_times 0
modify-window @ I modify_window MODIFY_WINDOW
super - V am_root 2
no-super - V am_root 0
fake-super - V am_root -1
owner o V preserve_uid 1
no-owner - V preserve_uid 0
no-o - V preserve_uid 0
group g V preserve_gid 1
no-group - V preserve_gid 0
no-g - V preserve_gid 0
- D N - D
no-D - N - NO_D
devices - V preserve_devices 1
no-devices - V preserve_devices 0
copy-devices - N copy_devices 0
write-devices - V write_devices 1
no-write-devices - V write_devices 0
specials - V preserve_specials 1
no-specials - V preserve_specials 0
drop-D - V drop_devices 1
no-drop-D - V drop_devices 0
confine-root - S confine_root 0
links l V preserve_links 1
no-links - V preserve_links 0
no-l - V preserve_links 0
copy-links L N copy_links 0
copy-unsafe-links - N copy_unsafe_links 0
safe-links - N safe_symlinks 0
insecure-links - V insecure_links 1
no-insecure-links - V insecure_links 0
munge-links - V munge_symlinks 1
no-munge-links - V munge_symlinks 0
copy-dirlinks k N copy_dirlinks 0
keep-dirlinks K N keep_dirlinks 0
hard-links H N - H
no-hard-links - V preserve_hard_links 0
no-H - V preserve_hard_links 0
relative R V relative_paths 1
no-relative - V relative_paths 0
no-R - V relative_paths 0
implied-dirs - V implied_dirs 1
no-implied-dirs - V implied_dirs 0
i-d - V implied_dirs 1
no-i-d - V implied_dirs 0
chmod - S - CHMOD
ignore-times I N ignore_times 0
size-only - N size_only 0
one-file-system x N - x
no-one-file-system - V one_file_system 0
no-x - V one_file_system 0
update u N update_only 0
existing - N ignore_non_existing 0
ignore-non-existing - N ignore_non_existing 0
ignore-existing - N ignore_existing 0
max-size - S max_size_arg MAX_SIZE
min-size - S min_size_arg MIN_SIZE
max-alloc - S max_alloc_arg 0
sparse S V sparse_files 1
no-sparse - V sparse_files 0
no-S - V sparse_files 0
preallocate - N preallocate_files 0
inplace - V inplace 1
no-inplace - V inplace 0
append - N - APPEND
append-verify - V append_mode 2
no-append - V append_mode 0
del - N delete_during 0
delete - N delete_mode 0
delete-before - N delete_before 0
delete-during - V delete_during 1
delete-delay - V delete_during 2
delete-after - N delete_after 0
delete-excluded - N delete_excluded 0
delete-missing-args - B missing_args 2
ignore-missing-args - B missing_args 1
remove-sent-files - V remove_source_files 2
remove-source-files - V remove_source_files 1
force - V force_delete 1
no-force - V force_delete 0
ignore-errors - V ignore_errors 1
no-ignore-errors - V ignore_errors 0
max-delete - I max_delete 0
- F N - F
filter f S - FILTER
exclude - S - EXCLUDE
include - S - INCLUDE
exclude-from - S - EXCLUDE_FROM
include-from - S - INCLUDE_FROM
cvs-exclude C N cvs_exclude 0
whole-file W V whole_file 1
no-whole-file - V whole_file 0
no-W - V whole_file 0
checksum c V always_checksum 1
no-checksum - V always_checksum 0
no-c - V always_checksum 0
checksum-choice - S checksum_choice 0
cc - S checksum_choice 0
block-size B S - BLOCK_SIZE
compare-dest - S - COMPARE_DEST
copy-dest - S - COPY_DEST
link-dest - S - LINK_DEST
fuzzy y N - y
no-fuzzy - V fuzzy_basis 0
no-y - V fuzzy_basis 0
compress z N - z
old-compress - N - OLD_COMPRESS
new-compress - N - NEW_COMPRESS
no-compress - N - NO_COMPRESS
no-z - N - NO_COMPRESS
compress-choice - S compress_choice 0
zc - S compress_choice 0
skip-compress - S skip_compress 0
compress-level - I do_compression_level 0
zl - I do_compression_level 0
compress-threads - I do_compression_threads 0
zt - I do_compression_threads 0
- P N - P
progress - V do_progress 1
no-progress - V do_progress 0
partial - V keep_partial 1
no-partial - V keep_partial 0
partial-dir - S partial_dir 0
delay-updates - V delay_updates 1
no-delay-updates - V delay_updates 0
prune-empty-dirs m V prune_empty_dirs 1
no-prune-empty-dirs - V prune_empty_dirs 0
no-m - V prune_empty_dirs 0
log-file - S logfile_name 0
log-file-format - S logfile_format 0
out-format - S stdout_format 0
log-format - S stdout_format 0
itemize-changes i N - i
no-itemize-changes - V itemize_changes 0
no-i - V itemize_changes 0
bwlimit - S bwlimit_arg BWLIMIT
no-bwlimit - V bwlimit 0
backup b V make_backups 1
no-backup - V make_backups 0
backup-dir - S backup_dir 0
suffix - S backup_suffix 0
list-only - V list_only 2
read-batch - S batch_name READ_BATCH
write-batch - S batch_name WRITE_BATCH
only-write-batch - S batch_name ONLY_WRITE_BATCH
files-from - S files_from 0
from0 0 V eol_nulls 1
no-from0 - V eol_nulls 0
old-args - N - OLD_ARGS
no-old-args - V old_style_args 0
secluded-args s V protect_args 1
no-secluded-args - V protect_args 0
protect-args - V protect_args 1
no-protect-args - V protect_args 0
no-s - V protect_args 0
trust-sender - V trust_sender 1
numeric-ids - V numeric_ids 1
no-numeric-ids - V numeric_ids 0
usermap - S - USERMAP
groupmap - S - GROUPMAP
chown - S - CHOWN
timeout - I io_timeout 0
no-timeout - V io_timeout 0
contimeout - I connect_timeout 0
no-contimeout - V connect_timeout 0
fsync - N do_fsync 0
stop-after - S - STOP_AFTER
time-limit - S - STOP_AFTER
stop-at - S - STOP_AT
rsh e S shell_cmd 0
rsync-path - S rsync_path 0
temp-dir T S tmpdir 0
iconv - S iconv_opt 0
no-iconv - N - NO_ICONV
ipv4 4 V default_af_hint 4
ipv6 6 V default_af_hint 6
8-bit-output 8 V allow_8bit_chars 1
no-8-bit-output - V allow_8bit_chars 0
no-8 - V allow_8bit_chars 0
mkpath - V mkpath_dest_arg 1
no-mkpath - V mkpath_dest_arg 0
qsort - N use_qsort 0
copy-as - S copy_as 0
address - S bind_address 0
port - I rsync_port 0
sockopts - S sockopts 0
password-file - S password_file 0
early-input - S early_input_file 0
blocking-io - V blocking_io 1
no-blocking-io - V blocking_io 0
outbuf - S outbuf_mode 0
remote-option M S - M
protocol - I protocol_version 0
checksum-seed - I checksum_seed 0
server - N - SERVER
sender - N - SENDER
config - S - DAEMON
daemon - N - DAEMON
dparam - S - DAEMON
detach - N - DAEMON
no-detach - N - DAEMON
"""


@dataclasses.dataclass(frozen=True)
class _Opt:
    long: str
    short: str
    kind: str
    var: str
    val: int | str

    def const(self) -> tuple[bool, int | str]:
        """(True, value) when the row only assigns a constant."""
        if self.var and (self.kind == "V" or (self.kind == "N" and self.val == 0)):
            return True, self.val if self.kind == "V" else 1
        return False, 0

    def same_capability(self, other: _Opt) -> bool:
        a, b = self.const(), other.const()
        if a[0] and b[0]:
            return self.var == other.var and a[1] == b[1]
        if self.kind != other.kind or self.val != other.val:
            return False
        return self.var == other.var if self.var else (not other.var and self.val != 0)

    def describe(self) -> str:
        if not self.long:
            return "-" + self.short
        return "--%s (-%s)" % (self.long, self.short) if self.short else "--" + self.long


def _rows() -> list[_Opt]:
    rows = []
    for line in _OPTION_ROWS.split("\n"):
        if line:
            lng, short, kind, var, val = line.split()
            rows.append(_Opt("" if lng == "-" else lng, "" if short == "-" else short, kind,
                             "" if var == "-" else var,
                             int(val) if re.fullmatch(r"-?[0-9]+", val) else val))
    return rows


_OPTS = _rows()
_LONG = {o.long: i for i, o in enumerate(_OPTS) if o.long}
_SHORT = {o.short: i for i, o in enumerate(_OPTS) if o.short}

# Options that "*" and other wildcards leave alone; naming them exactly still
# refuses them.
_NOT_WILD_SHORT = set("e0sn")
_NOT_WILD_LONG = {"iconv", "no-iconv", "checksum-seed", "copy-devices", "write-devices",
                  "log-format", "sender", "server"}

# Compression names stock rsync knows ("auto" is taken care of before).
_COMPRESS_NAMES = {"zstd", "lz4", "zlibx", "zlib", "none"}


def _mark(marks: list[str], negated: bool, pattern: str) -> bool:
    """Applies one refuse pattern to the marks ("a" accept, "r" refuse;
    "*" wildcards may change it, "=" only exact names).  An exact name also
    marks the rows that are the same capability.  Returns whether the
    pattern named any option."""
    is_wild = any(c in pattern for c in "*?[")
    if pattern in ("a", "archive"):
        pattern, is_wild = "[ardlptgoD]", True
    pat = pattern.encode("utf-8", "surrogateescape")
    verdict = "a" if negated else "r"
    exact = None
    found = False
    for i, o in enumerate(_OPTS):
        if (o.long and wildmatch(pat, o.long.encode())) or (o.short and wildmatch(pat, o.short.encode())):
            if marks[i][1] == "*":
                marks[i] = verdict + "*"
            elif not is_wild:
                marks[i] = verdict + "="
            found = True
            if not is_wild:
                exact = i
                break
    if exact is not None:
        for i, o in enumerate(_OPTS):
            if i != exact and o.same_capability(_OPTS[exact]):
                marks[i] = verdict + marks[i][1]
    return found


def _refuse_pattern_matches(pattern: str) -> bool:
    marks = ["a*"] * len(_OPTS)
    return _mark(marks, False, pattern[1:] if pattern.startswith("!") and len(pattern) > 1 else pattern)


@dataclasses.dataclass(frozen=True)
class _Refusals:
    rows: frozenset[int]
    archive_part: int | None
    named: dict[str, int]


@functools.lru_cache(maxsize=256)
def _refusals(patterns: tuple[str, ...]) -> _Refusals:
    marks = []
    for o in _OPTS:
        wild_ok = o.short not in _NOT_WILD_SHORT and o.long not in _NOT_WILD_LONG
        marks.append("a*" if wild_ok else "a=")
    _mark(marks, False, "copy-devices")
    _mark(marks, False, "write-devices")
    for item in patterns:
        for pattern in item.split(" "):
            if not pattern:
                continue
            negated = pattern.startswith("!") and len(pattern) > 1
            _mark(marks, negated, pattern[1:] if negated else pattern)
    # No "charset" support, so --iconv is always refused; log-file* and
    # insecure-links are refused by every rsyncd, and Linux builds of rsync
    # have no crtimes.
    for forced in ("iconv", "log-file*", "insecure-links", "crtimes"):
        _mark(marks, False, forced)
    rows = frozenset(i for i, m in enumerate(marks) if m[0] == "r")
    archive_part = None
    named = {}
    for i in sorted(rows):
        o = _OPTS[i]
        if o.short in ("r", "d", "l", "p", "t", "g", "o", "D"):
            archive_part = i
        elif o.short == "z":
            named["compress"] = i
        elif not o.short and o.long in ("delete", "delete-before", "delete-during", "partial",
                                        "progress", "inplace", "no-iconv"):
            named[o.long] = i
    return _Refusals(rows, archive_part, named)


def _c_long(text: str) -> int | None:
    """An integer as popt takes one (strtol with base 0, nothing after)."""
    if not text:
        return 0
    m = re.fullmatch(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    if m is None:
        return None
    digits = m.group(2)
    n = int(digits, 16) if digits[:2] in ("0x", "0X") else int(digits, 8) if digits[0] == "0" else int(digits)
    n = -n if m.group(1) == "-" else n
    return n if -(1 << 31) <= n < (1 << 31) else None


class _ArgState(dict):
    """rsync's option variables as the options set them; 0 until set."""

    def __missing__(self, key):
        return 0


def _refuse_msg(i: int) -> str:
    return "The server is configured to refuse " + _OPTS[i].describe()


def refused_option(patterns: list[str], argv: list[str]) -> str | None:
    """What rsyncd says when a module's "refuse options" forbid the server
    argv a client sent, e.g. "The server is configured to refuse --compress
    (-z)"; None when nothing is refused.

    Patterns are wildcards over long names and short letters; "!" accepts
    again what an earlier pattern refused; "a"/"archive" means the options
    -a implies.  "*" leaves alone what rsync never refuses by wildcard
    (--server, --sender, -e, -n, -s, -0, --log-format (what clients send
    for --out-format), --checksum-seed, --iconv, --no-iconv,
    --copy-devices, --write-devices; they can still be named).  Naming
    an option refuses its aliases (--del with --delete-during).  Refusing
    "delete" refuses every --delete-* and --remove-source-files on a sender;
    "partial" refuses --inplace and --append; "inplace" refuses --append;
    "compress" refuses -z, --compress-level and non-"none" --compress-choice.
    Like every rsyncd, --copy-devices and --write-devices are refused unless
    accepted with "!", and --log-file*, --insecure-links, --iconv and
    --crtimes always.  --delete-missing-args and --ignore-missing-args
    slip through their own refusal, as in rsync (whose parser only spoils
    their value then, so a refused --delete-missing-args no longer implies
    --delete either).  The argv is scanned as rsync's option parser does, so
    the option reported is the one rsync would report; an argv rsync cannot
    parse gets None here (the caller's own parser reports it).  Where stock
    rsync prints "--(null) (-D)" for -D, -F and -P we say "-D".
    """
    ref = _refusals(tuple(patterns))
    st = _ArgState(xfer_dirs=-1)
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        if a == "--":
            break
        if not a.startswith("-") or a == "-":
            continue
        if a.startswith("--"):
            name, eq, value = a[2:].partition("=")
            row = _LONG.get(name)
            if row is None:
                return None
            if _OPTS[row].kind in "SI":
                if not eq:
                    if i >= len(args):
                        return None
                    value = args[i]
                    i += 1
            elif eq:
                return None
            verdict = _take(ref, st, row, value)
            if verdict is not None:
                return verdict or None
            continue
        j = 1
        while j < len(a):
            row = _SHORT.get(a[j])
            j += 1
            if row is None:
                return None
            value = ""
            if _OPTS[row].kind in "SI":
                if j < len(a):
                    value, j = a[j + (a[j] == "="):], len(a)
                elif i < len(args):
                    value = args[i]
                    i += 1
                else:
                    return None
            elif a[j:j + 1] == "=":
                return None
            verdict = _take(ref, st, row, value)
            if verdict is not None:
                return verdict or None
    return _after_options(ref, st)


def _take(ref: _Refusals, st: _ArgState, row: int, value: str) -> str | None:
    """One option: a refusal message, "" when rsync stops with another
    error, None to go on."""
    o = _OPTS[row]
    if o.kind == "I":
        n = _c_long(value)
        if n is None:
            return ""
    if row in ref.rows:
        if o.kind != "B":
            return _refuse_msg(row)
        st[o.var] |= 1 << 16
        return None
    if o.var:
        if o.kind == "V":
            st[o.var] = o.val
        elif o.kind == "N":
            st[o.var] = 1
        elif o.kind == "B":
            st[o.var] |= o.val
        elif o.kind == "I":
            st[o.var] = n
        else:
            st[o.var] = value
        if o.var == "do_compression_level":
            st["level_given"] = 1
        return None
    action = o.val
    if action == "a":
        if ref.archive_part is not None:
            return _refuse_msg(ref.archive_part)
        st["recurse"] = st["recurse"] or 1
    elif action == "P":
        for name in ("partial", "progress"):
            if name in ref.named:
                return _refuse_msg(ref.named[name])
        st["keep_partial"] = 1
    elif action == "z":
        st["do_compression"] += 1
    elif action == "NO_COMPRESS":
        st["do_compression"] = 0
        st["compress_choice"] = None
    elif action in ("OLD_COMPRESS", "NEW_COMPRESS"):
        st["compress_choice"] = "zlib" if action == "OLD_COMPRESS" else "zlibx"
    elif action == "APPEND":
        st["append_mode"] += 1
    elif action == "SERVER":
        st["iconv_opt"] = None
    elif action == "SENDER":
        st["am_sender"] = 1
    elif action == "V":
        st["version"] = 1
    elif action in ("DAEMON", "HELP"):
        return ""
    elif action == "M" and not value.startswith("-"):
        return ""
    return None


def _after_options(ref: _Refusals, st: _ArgState) -> str | None:
    """The refusals rsync derives once all options are read."""
    named = ref.named
    if st["version"]:
        return None
    choice = st.get("compress_choice")
    if choice is None and st["do_compression"] > 1:
        choice = "zlibx"
    if choice is not None and choice.lower() != "auto":
        if choice.lower() not in _COMPRESS_NAMES:
            return None
        st["do_compression"] = int(choice.lower() != "none")
    if (st["do_compression"] or st["level_given"]) and "compress" in named:
        return _refuse_msg(named["compress"])
    if "no-iconv" in named and st.get("iconv_opt") is None:
        return _refuse_msg(named["no-iconv"])

    recurse, xfer_dirs = st["recurse"], st["xfer_dirs"]
    if st.get("files_from") is not None:
        if recurse == 1:
            recurse = 0
        if xfer_dirs < 0:
            xfer_dirs = 1
    if xfer_dirs >= 4:
        xfer_dirs = 1
    elif recurse:
        xfer_dirs = 1
    elif xfer_dirs < 0:
        xfer_dirs = 1 if st["list_only"] else 0
    before, during, after = st["delete_before"], st["delete_during"], st["delete_after"]
    if before + bool(during) + after > 1:
        return None
    delete_mode = st["delete_mode"]
    if before or during or after:
        delete_mode = 1
    elif delete_mode or st["delete_excluded"]:
        if "delete-before" in named and "delete-during" in named:
            return _refuse_msg(named["delete-before"])
        delete_mode = 1
    if not xfer_dirs and delete_mode:
        return None
    if "delete" in named and (delete_mode or st["missing_args"] in (2, 3)):
        return _refuse_msg(named["delete"])
    if st["remove_source_files"] and "delete" in named and st["am_sender"]:
        return _refuse_msg(named["delete"])

    inplace = st["inplace"]
    if st["append_mode"]:
        if st["whole_file"] > 0:
            return None
        if "inplace" in named:
            return _refuse_msg(named["inplace"])
        inplace = 1
    if st["write_devices"]:
        if "inplace" in named:
            return _refuse_msg(named["inplace"])
        inplace = 1
    partial_dir = st.get("partial_dir")
    if st["delay_updates"] and partial_dir is None:
        partial_dir = ".~tmp~"
    if inplace:
        if partial_dir is not None:
            return None
        if "partial" in named:
            return _refuse_msg(named["partial"])
    elif partial_dir is not None:
        if _clean_dir(partial_dir) in ("", ".") and "partial" in named:
            return _refuse_msg(named["partial"])
    return None


def _clean_dir(path: str) -> str:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts:
        return "/" if path.startswith("/") else "."
    return ("/" if path.startswith("/") else "") + "/".join(parts)


# ----------------------------------------------------------------------------
# Daemon authentication (server side)


class AuthError(Exception):
    """A refused login.  reason is rsync's words for it ("password
    mismatch", "no matching rule"...); user is who tried, if known.  The
    message is rsync's log line when the module, host and address were
    given to check_auth."""

    def __init__(self, message: str, reason: str = "", user: str | None = None):
        super().__init__(message)
        self.reason = reason or message
        self.user = user


class SecretsError(AuthError):
    """A secrets file that cannot be used; rsync then refuses every login."""


AUTH_DIGESTS = ("sha512", "sha256", "sha1", "md5", "md4")


def _digest(name: str, data: bytes) -> bytes:
    if name == "md4":
        return rsync_md4.md4(data).digest()
    if name == "md4_old":
        return rsync_md4.md4(b"\0\0\0\0" + data).digest()
    if name not in AUTH_DIGESTS:
        raise ValueError("unknown daemon-auth digest %r" % name)
    return hashlib.new(name, data).digest()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def auth_challenge(addr: str, digest: str = "md5") -> str:
    """A fresh challenge for "@RSYNCD: AUTHREQD <challenge>": a digest of
    random bytes (mixed with the address, time and pid, as rsync mixes
    them) in unpadded base64, as long as the negotiated digest's output."""
    now = time.time_ns()
    mix = addr.encode("utf-8", "replace")[:16].ljust(16, b"\0") + struct.pack(
        "<IIII", now // 10**9 & 0xFFFFFFFF, now // 1000 % 10**6, os.getpid() & 0xFFFFFFFF, 0)
    return _b64(_digest(digest, os.urandom(32) + mix))


def pick_auth_digest(client_digests: list[str] | None, protocol: int, *,
                     ours: Iterable[str] = AUTH_DIGESTS) -> str:
    """The strongest digest (sha512 sha256 sha1 md5 md4, as rsyncd ranks
    them) named both in the daemon's greeting (ours) and in the client's
    list (compared without case).  A client greeting without a list gets
    md5 from protocol 30 on, else "md4_old" (MD4 over 4 zero bytes,
    password and challenge).  AuthError when nothing is in common; rsyncd
    sends its message as @ERROR and exits."""
    if client_digests is None:
        return "md5" if protocol >= 30 else "md4_old"
    wanted = set(ours)
    ranked = [n for n in AUTH_DIGESTS if n in wanted]
    offered = {w.lower() for item in client_digests for w in item.split(" ") if w}
    for name in ranked:
        if name in offered:
            return name
    raise AuthError("your client does not support one of our daemon-auth checksums: %s"
                    % " ".join(ranked), "no common digest")


def expected_response(password: bytes, challenge: str, digest: str) -> str:
    """What a client with this password answers to the challenge:
    base64(digest(password + challenge)) without padding."""
    password = password.split(b"\0", 1)[0]
    return _b64(_digest(digest, password + challenge.encode("utf-8", "surrogateescape")))


def user_groups(user: str) -> list[str]:
    """The names of the groups of a local user (the primary group first),
    as rsyncd matches "@group" rules; none for an unknown user."""
    try:
        pw = pwd.getpwuid(pwd.getpwnam(user).pw_uid)
        gids = os.getgrouplist(pw.pw_name, pw.pw_gid)
    except (KeyError, OSError):
        return []
    if pw.pw_gid in gids:
        gids.remove(pw.pw_gid)
    names = []
    for gid in [pw.pw_gid] + gids:
        try:
            names.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            pass
    return names


def _access_of(opts: str) -> str:
    """ro, rw, deny or "" from what follows a rule's colon."""
    first = opts[:1].translate(_ASCII_LOWER)
    if first == "r":
        second = opts[1:2].translate(_ASCII_LOWER)
        return "ro" if second == "o" else "rw" if second == "w" else ""
    return "deny" if first == "d" else ""


def _secret_lines(secrets: bytes) -> Iterable[bytes]:
    """The secrets file's lines as rsync reads them: at most 1023 bytes at a
    time, each cut at its first CR or LF (leading ones skipped) and NUL."""
    pos = 0
    while pos < len(secrets):
        nl = secrets.find(b"\n", pos, pos + 1023)
        stop = nl + 1 if nl >= 0 else min(len(secrets), pos + 1023)
        chunk = secrets[pos:stop]
        pos = stop
        chunk = chunk.split(b"\0", 1)[0].lstrip(b"\r\n")
        yield re.split(rb"[\r\n]", chunk, maxsplit=1)[0]


def _check_secret(user: bytes, group: bytes | None, challenge: str, response: bytes,
                  secrets: bytes, digest: str) -> str | None:
    if user.startswith(b"#"):
        return "invalid username"
    names = {b"": user, b"@": group}
    err = "secret not found"
    for line in _secret_lines(secrets):
        if names[b""] is None and names[b"@"] is None:
            break
        if not line:
            continue
        kind = line[:1] if line[:1] == b"@" else b""
        name = names[kind]
        body = line[len(kind):]
        if name is None or not body.startswith(name + b":"):
            continue
        want = expected_response(body[len(name) + 1:], challenge, digest).encode()
        if hmac.compare_digest(want, response):
            return None
        err = "password mismatch"
        names[kind] = None
    return err


def check_auth(response_line: str, challenge: str, auth_users: list[str], secrets: bytes,
               digest: str, *, groups_of: Callable[[str], list[str]] = user_groups,
               module: str | None = None, host: str | None = None,
               addr: str | None = None) -> tuple[str, str]:
    """Checks a client's "user response" line against the module's "auth
    users" rules and the secrets file's contents.  The first rule naming
    the user (a wildcard) or one of the user's groups ("@group", via
    groups_of) decides: ":deny" refuses, ":ro"/":rw" set the access,
    which is returned with the user as (user, "ro"|"rw"|"").  The password
    may come from the user's line or, for an @group rule, from that
    group's "@group:password" line.  Raises AuthError with rsync's reason:
    invalid challenge response, no matching rule, denied by rule, invalid
    username, secret not found, password mismatch."""
    line = response_line.rstrip("\n").replace("\r", "")
    user, space, response = line.partition(" ")

    def fail(reason: str, who: str | None) -> AuthError:
        where = ""
        if module is not None:
            where = " on module %s from %s (%s)" % (module, host or UNDETERMINED, addr or "")
        if who is None:
            return AuthError("auth failed%s: %s" % (where, reason), reason)
        return AuthError("auth failed%s for %s: %s" % (where, who, reason), reason, who)

    if not space:
        raise fail("invalid challenge response", None)
    user_b = user.encode("utf-8", "surrogateescape")
    groups: list[str] | None = None
    chosen = None
    for entry in auth_users:
        name, colon, opts = entry.partition(":")
        access = _access_of(opts) if colon else ""
        if not name.startswith("@"):
            if wildmatch(name.encode("utf-8", "surrogateescape"), user_b):
                chosen = (access, None)
                break
            continue
        if groups is None:
            groups = groups_of(user) if user else []
        pat = name[1:].encode("utf-8", "surrogateescape")
        hit = next((g for g in groups if wildmatch(pat, g.encode("utf-8", "surrogateescape"))), None)
        if hit is not None:
            chosen = (access, hit)
            break
    if chosen is None:
        raise fail("no matching rule", user)
    access, group = chosen
    if access == "deny":
        raise fail("denied by rule", user)
    err = _check_secret(user_b, group.encode("utf-8", "surrogateescape") if group is not None else None,
                        challenge, response.encode("utf-8", "surrogateescape"), secrets, digest)
    if err is not None:
        raise fail(err, user)
    return user, access


def read_secrets(path: str | None, strict_modes: bool = True) -> bytes:
    """The contents of a module's "secrets file".  With "strict modes" (the
    default) a file others may read or write is refused, and so is one not
    owned by root when we run as root; a symlink on the way must belong to
    root or to us.  SecretsError carries rsync's message; its reason is
    what rsync logs for the login ("no secrets file", "ignoring secrets
    file")."""
    if not path:
        raise SecretsError("no secrets file", "no secrets file")

    def check(st: os.stat_result) -> None:
        if not strict_modes:
            return
        if st.st_mode & 0o006:
            raise SecretsError("secrets file must not be other-accessible (see strict modes option)",
                               "ignoring secrets file")
        if os.getuid() == 0 and st.st_uid != 0:
            raise SecretsError("secrets file must be owned by root when running as root "
                               "(see strict modes)", "ignoring secrets file")

    try:
        return _read_trusted(path, check)
    except OSError as e:
        raise SecretsError('no secrets file: cannot open "%s": %s' % (path, e.strerror or e),
                           "no secrets file") from None
