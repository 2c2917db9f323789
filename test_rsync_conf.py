"""rsync_conf: rsyncd.conf, hosts allow/deny, refuse options and daemon
authentication.  Tables pin the behaviour down; where stock rsync can be
asked (a stock rsyncd on loopback, the stock client against a small server
written here) it is asked, and our answers must equal its answers.

Tests that need stock rsync fail instead of skipping when CI is set."""

import base64
import concurrent.futures
import grp
import hashlib
import itertools
import os
import pwd
import re
import socket
import subprocess
import threading
import time

import pytest

import rsync_conf as rc
import rsync_md4
from conftest import IS_ROOT, need, stop

_serial = itertools.count()


def conf(text):
    return rc.parse_rsyncd_conf(text, "rsyncd.conf")


# ----------------------------------------------------------------------------
# A stock rsyncd with our rsyncd.conf


def free_port(address="127.0.0.1"):
    fam = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(fam) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def have_ipv6_loopback():
    try:
        free_port("::1")
        return True
    except OSError:
        return False


class Rsyncd:
    """rsync --daemon --no-detach on a loopback port.  body is the rest of
    rsyncd.conf: more global parameters, then modules."""

    def __init__(self, rsync_bin, tmp, body, address="127.0.0.1"):
        d = tmp / ("rsyncd%d" % next(_serial))
        d.mkdir()
        self.log = d / "log"
        self.conf = d / "rsyncd.conf"
        head = ["use chroot = no", "pid file = %s" % (d / "pid"), "log file = %s" % self.log]
        if IS_ROOT:
            head += ["uid = root", "gid = root"]
        self.text = "\n".join(head) + "\n" + body
        self.conf.write_text(self.text)
        fam = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.address = address
        for _ in range(5):
            self.port = free_port(address)
            self.proc = subprocess.Popen(
                [rsync_bin, "--daemon", "--no-detach", "--address=" + address,
                 "--port=%d" % self.port, "--config=%s" % self.conf],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._wait(fam):
                break
            stop(self.proc)
        else:
            raise RuntimeError("stock rsync daemon did not start")
        host = "[%s]" % address if ":" in address else address
        self.url = "rsync://%s:%d" % (host, self.port)

    def _wait(self, fam):
        for _ in range(200):
            if self.proc.poll() is not None:
                return False
            try:
                with socket.socket(fam) as s:
                    s.settimeout(1)
                    s.connect((self.address, self.port))
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self):
        stop(self.proc)


@pytest.fixture
def rsyncd(tmp_path, rsync_bin):
    started = []

    def start(body, address="127.0.0.1"):
        d = Rsyncd(rsync_bin, tmp_path, body, address)
        started.append(d)
        return d
    yield start
    for d in started:
        d.stop()


def client(rsync_bin, args, password=None, timeout=120):
    env = dict(os.environ)
    env.pop("RSYNC_PASSWORD", None)
    if password is not None:
        env["RSYNC_PASSWORD"] = password
    return subprocess.run([rsync_bin] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, env=env, timeout=timeout)


# ----------------------------------------------------------------------------
# Parsing

REALISTIC = r"""# /etc/rsyncd.conf for the mirror host
    ; comments start with # or ; after optional white space
motd file = /etc/rsyncd.motd
pid file = /run/rsyncd.pid
port = 8873
address = 192.0.2.10
log file = /var/log/rsyncd.log
lock file = /run/rsyncd.lock
max connections = 20
timeout = 600
  Reverse  Lookup = no
hosts deny = 192.0.2.66, \
             198.51.100.0/24
refuse options = checksum delete

[pub]
	path = /srv/pub/
	comment = Public mirror # everything here is public
	read only = yes
	exclude = *.tmp .~tmp~/
	filter = - /private/ \
	         + /*.iso

[incoming]
path = /srv/incoming
comment = Uploads; write only
read only = false
write only = true
list = no
hosts allow = 192.0.2.0/255.255.255.0 2001:db8::/32
hosts deny =
auth users = alice:rw, @uploaders:rw bob:deny
secrets file = /etc/rsyncd.secrets
uid = nobody
gid = nogroup
max connections = 2
refuse options = *

[ home  dirs ]
path = /home/./
use chroot = yes
numeric ids = no
munge symlinks = unset
include from = /etc/rsyncd.home-include
exclude from = /etc/rsyncd.home-exclude
"""


def test_realistic_conf():
    c = conf(REALISTIC)
    g = c.globals
    assert (g.motd_file, g.pid_file, g.port, g.address) == (
        "/etc/rsyncd.motd", "/run/rsyncd.pid", 8873, "192.0.2.10")
    assert (g.log_file, g.lock_file, g.max_connections, g.timeout) == (
        "/var/log/rsyncd.log", "/run/rsyncd.lock", 20, 600)
    assert g.reverse_lookup is False
    assert [m.name for m in c.modules] == ["pub", "incoming", "home dirs"]
    pub, inc, home = c.modules
    assert pub.path == "/srv/pub" and pub.lineno == 16
    assert pub.comment == "Public mirror # everything here is public"
    assert pub.read_only and not pub.write_only and pub.list
    assert pub.filter_rules == [("filter", "- /private/ \t         + /*.iso"),
                                ("exclude", "*.tmp .~tmp~/")]
    assert pub.hosts_allow == [] and pub.hosts_deny == ["192.0.2.66", "198.51.100.0/24"]
    assert pub.refuse_options == ["checksum", "delete"]
    assert (pub.max_connections, pub.timeout, pub.log_file) == (20, 600, "/var/log/rsyncd.log")
    assert pub.auth_users == [] and pub.secrets_file is None
    assert pub.use_chroot and not pub.use_chroot_required

    assert inc.comment == "Uploads; write only"
    assert not inc.read_only and inc.write_only and not inc.list
    assert inc.hosts_allow == ["192.0.2.0/255.255.255.0", "2001:db8::/32"]
    assert inc.hosts_deny == []
    assert inc.auth_users == ["alice:rw", "@uploaders:rw", "bob:deny"]
    assert (inc.secrets_file, inc.uid, inc.gid) == ("/etc/rsyncd.secrets", "nobody", "nogroup")
    assert inc.max_connections == 2 and inc.refuse_options == ["*"]

    assert home.path == "/home/." and home.lineno == 39
    assert home.use_chroot and home.use_chroot_required
    assert home.numeric_ids is False and home.munge_symlinks is None
    assert home.filter_rules == [("include from", "/etc/rsyncd.home-include"),
                                 ("exclude from", "/etc/rsyncd.home-exclude")]
    assert c.module("home dirs") is home and c.module("pub") is pub
    assert c.module("Pub") is None and c.module("homedirs") is None
    assert c.warnings == []


EVERY_GLOBAL = """motd file = /m
pid file = /p
port = 1873
address = ::1
"""

EVERY_LOCAL = {
    "path": ("/data/x//", "path", "/data/x"),
    "comment": ("the comment", "comment", "the comment"),
    "read only": ("no", "read_only", False),
    "write only": ("yes", "write_only", True),
    "list": ("false", "list", False),
    "hosts allow": ("10.0.0.1 10.0.0.2,10.0.0.3", "hosts_allow", ["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
    "hosts deny": ("*", "hosts_deny", ["*"]),
    "max connections": ("7", "max_connections", 7),
    "timeout": ("-1", "timeout", -1),
    "auth users": ("a b,c:ro", "auth_users", ["a", "b", "c:ro"]),
    "secrets file": ("/s", "secrets_file", "/s"),
    "strict modes": ("0", "strict_modes", False),
    "uid": ("u", "uid", "u"),
    "gid": ("g1, g2", "gid", "g1, g2"),
    "use chroot": ("no", "use_chroot", False),
    "refuse options": ("  a  b ", "refuse_options", ["a", "b"]),
    "log file": ("/l", "log_file", "/l"),
    "lock file": ("/k", "lock_file", "/k"),
    "reverse lookup": ("no", "reverse_lookup", False),
    "forward lookup": ("no", "forward_lookup", False),
    "numeric ids": ("yes", "numeric_ids", True),
    "munge symlinks": ("no", "munge_symlinks", False),
    "ignore errors": ("yes", "ignore_errors", True),
    "ignore nonreadable": ("TRUE", "ignore_nonreadable", True),
    "dont compress": ("*.gz *.zst", "dont_compress", "*.gz *.zst"),
    "transfer logging": ("1", "transfer_logging", True),
    "log format": ("%t %o %f", "log_format", "%t %o %f"),
}


def test_every_parameter_in_a_module():
    text = EVERY_GLOBAL + "[m]\n" + "".join(
        "%s = %s\n" % (name, value) for name, (value, _, _) in EVERY_LOCAL.items())
    text += "filter = - f\ninclude = i\nexclude = e\ninclude from = /if\nexclude from = /ef\n"
    c = conf(text)
    g, (m,) = c.globals, c.modules
    assert (g.motd_file, g.pid_file, g.port, g.address) == ("/m", "/p", 1873, "::1")
    for name, (_, attr, want) in EVERY_LOCAL.items():
        assert getattr(m, attr) == want, name
    assert m.filter_rules == [("filter", "- f"), ("include from", "/if"), ("include", "i"),
                              ("exclude from", "/ef"), ("exclude", "e")]
    assert not m.use_chroot_required


def test_every_local_parameter_is_a_global_default():
    text = "".join("%s = %s\n" % (name, value) for name, (value, _, _) in EVERY_LOCAL.items())
    c = conf(text + "exclude = e\n[m]\n[n]\npath = /n\ncomment =\n")
    m, n = c.modules
    for name, (_, attr, want) in EVERY_LOCAL.items():
        assert getattr(c.globals, attr) == want, name
        assert getattr(m, attr) == want, name
    assert n.path == "/n" and n.comment == ""
    assert m.filter_rules == n.filter_rules == [("exclude", "e")]


def test_defaults():
    g, (m,) = (lambda c: (c.globals, c.modules))(conf("[m]\npath = /\n"))
    assert m.path == "/" and m.comment == ""
    assert m.read_only and not m.write_only and m.list
    assert m.hosts_allow == m.hosts_deny == m.auth_users == m.refuse_options == m.filter_rules == []
    assert (m.max_connections, m.timeout, m.secrets_file, m.uid, m.gid) == (0, 0, None, None, None)
    assert m.strict_modes and m.use_chroot and not m.use_chroot_required
    assert m.numeric_ids is None and m.munge_symlinks is None
    assert m.reverse_lookup and m.forward_lookup
    assert not (m.ignore_errors or m.ignore_nonreadable or m.transfer_logging)
    assert m.lock_file == "/var/run/rsyncd.lock" and m.log_file is None
    assert m.log_format == "%o %h [%a] %m (%u) %f %l" and m.dont_compress is None
    assert (g.motd_file, g.pid_file, g.port, g.address) == (None, None, 0, None)


@pytest.mark.parametrize("line", [
    "read only = no", "READ ONLY = no", "readonly = no", "  Read\t  Only  = no", "R E A D ONLY=no",
    "read only = No", "read only = FALSE", "read only = 0", "read only = n o",
])
def test_names_ignore_case_and_white_space(line):
    assert conf("[m]\npath = /x\n%s\n" % line).modules[0].read_only is False


@pytest.mark.parametrize("value,want", [
    ("yes", True), ("YES", True), ("true", True), ("True", True), ("1", True), ("y es", True),
    ("no", False), ("NO", False), ("false", False), ("0", False),
])
def test_booleans(value, want):
    assert conf("list = %s\n[m]\npath=/\n" % value).modules[0].list is want


@pytest.mark.parametrize("value,attr,want", [
    ("unset", "use_chroot", True), ("-1", "numeric_ids", None), ("UNSET", "munge_symlinks", None),
    ("yes", "munge_symlinks", True), ("no", "numeric_ids", False),
])
def test_three_valued_booleans(value, attr, want):
    name = attr.replace("_", " ")
    assert getattr(conf("[m]\npath=/x\n%s = %s\n" % (name, value)).modules[0], attr) is want


def test_use_chroot_and_what_it_implies():
    c = conf("[plain]\npath=/a\n[yes]\npath=/a\nuse chroot=yes\n[no]\npath=/a\nuse chroot=no\n"
             "[dot]\npath=/a/./b\n[dotroot]\npath=/a/./\n[dotno]\npath=/a/./b\nuse chroot = no\n")
    got = {m.name: (m.use_chroot, m.use_chroot_required) for m in c.modules}
    assert got == {"plain": (True, False), "yes": (True, True), "no": (False, False),
                   "dot": (True, True), "dotroot": (True, False), "dotno": (False, False)}
    plain, dot, dotroot = c.module("plain"), c.module("dot"), c.module("dotroot")
    assert plain.munge_symlinks_for(True) is False and plain.munge_symlinks_for(False) is True
    assert dot.munge_symlinks_for(True) is True and dotroot.munge_symlinks_for(True) is False
    assert plain.numeric_ids_for(True) is True and plain.numeric_ids_for(False) is False
    m = conf("[m]\npath=/a\nnumeric ids = no\nmunge symlinks = yes\n").modules[0]
    assert m.numeric_ids_for(True) is False and m.munge_symlinks_for(True) is True
    m = conf("[m]\npath=/a\nnumeric ids = yes\n").modules[0]
    assert m.numeric_ids_for(False) is True


def test_params_c_lexing():
    text = (
        "comment = one \\\n   two\n"                # continuation keeps both sides' blanks
        "[a]\npath = /a\n"
        "[b]\npath = /b\ncomment = tail blanks   \t\n"
        "[c]\npath = /c\ncomment = x \\\n\n"          # continued onto an empty line
        "[d]\npath = /d\ncomment = a\rb\r\n"          # carriage returns vanish
        "[e]\npath = /e\ncomm\\\nent = joined name\n"
        "\\  [f] path = /ignored\n"                   # a stray backslash is skipped
        "path = /f\n"
        "[my \\\n   mod]\npath = /g\n"
        "[ h ]   # rest of a header line is ignored\npath=/h\n"
        "   # indented comment\n"
        "  ; another = 1\n"
        "[i]\npath=/i\ncomment = #not a comment; nor this\n"
        "[j]\npath = =/j=\ncomment == =\n"
        "[k]\npath = /k\ncomment = before NUL\0after\n[zzz]\npath=/z\n"
    )
    c = conf(text)
    got = {m.name: (m.path, m.comment) for m in c.modules}
    assert got == {
        "a": ("/a", "one    two"),
        "b": ("/b", "tail blanks"),
        "c": ("/c", "x "),
        "d": ("/d", "ab"),
        "e": ("/e", "joined name"),
        "f": ("/f", "one    two"),
        "my mod": ("/g", "one    two"),
        "h": ("/h", "one    two"),
        "i": ("/i", "#not a comment; nor this"),
        "j": ("=/j=", "= ="),
        "k": ("/k", "before NUL"),
    }


def test_global_section_and_reopened_modules():
    c = conf("read only = no\n"
             "[a]\npath = /a\n"
             "[global]\ncomment = late\nread only = yes\ntimeout = 5\n"
             "[b]\npath = /b\n"
             "[ A ]\ntimeout = 9\n")
    a, b = c.modules
    assert (a.name, a.comment, a.read_only, a.timeout) == ("a", "late", False, 9)
    assert (b.name, b.comment, b.read_only, b.timeout) == ("b", "late", True, 5)
    assert c.globals.comment == "late" and c.globals.timeout == 5


def test_when_rsyncd_knows_the_hostname():
    c = conf("[a]\npath=/a\n[b]\npath=/b\nreverse lookup = no\n")
    assert c.wants_hostname(c.module("a")) and c.wants_hostname(c.module("b"))
    c = conf("reverse lookup = no\n[a]\npath=/a\n[b]\npath=/b\nreverse lookup = yes\n")
    assert not c.wants_hostname(c.module("a")) and c.wants_hostname(c.module("b"))


def test_path_may_come_from_the_globals():
    c = conf("path = /srv/\n[a]\n[b]\npath = /b\n")
    assert [m.path for m in c.modules] == ["/srv", "/b"]


@pytest.mark.parametrize("text,line,msg", [
    ("[m]\npath = /x\nfoo bar = 1\n", 3, 'unknown parameter "foo bar"'),
    ("[m]\npath = /x\npre-xfer exec = /bin/true\n", 3, 'unsupported parameter "pre-xfer exec"'),
    ("\n\n[m]\npath = /x\nread_only = no\n", 5, 'unknown parameter "read_only"'),
    ("bind address = 127.0.0.1\n", 1, 'unknown parameter "bind address"'),
    ("charset = utf-8\n", 1, 'unsupported parameter "charset"'),
    ("-path = /x\n", 1, 'unknown parameter "-path"'),
    ("read only = maybe\n", 1, '"read only" wants yes or no'),
    ("use chroot = perhaps\n", 1, "unset"),
    ("\n\n[m]\npath = /x\nlist = \\\n  maybe\n", 5, '"list" wants yes or no'),
    ("timeout = 10s\n", 1, '"timeout" wants a whole number, not "10s"'),
    ("port = \n", 1, '"port" wants a whole number'),
    ("[m]\nmotd file = /x\npath=/x\n", 2, '"motd file" is a global parameter'),
    ("[m]\npath = /x\n[n]\ncomment = no path\n", 3, 'module [n] has no "path"'),
    ("[a/b]\npath=/x\n", 1, 'must not contain "/"'),
    ("\n[ ]\npath=/x\n", 2, "empty module name"),
    ("[m\npath=/x\n", 1, 'lacks its "]"'),
    ("[m", 1, 'lacks its "]"'),
    ("= x\n", 1, 'parameter name is missing before "="'),
    ("[m]\npath=/x\n&include /etc/rsyncd.d\n", 3, '"&include" directives are not supported'),
    ("&merge /etc/rsyncd.inc\n", 1, '"&merge" directives are not supported'),
])
def test_errors_name_the_line(text, line, msg):
    with pytest.raises(rc.ConfigError) as e:
        conf(text)
    assert str(e.value).startswith("rsyncd.conf:%d: " % line)
    assert msg in str(e.value)


def test_what_rsync_skips_becomes_a_warning():
    c = conf("just some words\n[m]\npath = /x\nrefuse options = compress nosuchoption !nope\n"
             "no equals at the end")
    assert c.modules[0].refuse_options == ["compress", "nosuchoption", "!nope"]
    assert c.warnings == [
        'rsyncd.conf:1: ignoring line without "=": just some words',
        'rsyncd.conf:5: ignoring last line, it has no "=": no equals at the end',
        'rsyncd.conf:2: no option matches the "refuse options" pattern "nosuchoption" of [m]',
        'rsyncd.conf:2: no option matches the "refuse options" pattern "!nope" of [m]',
    ]


def test_lists_as_rsync_splits_them():
    m = conf("[m]\npath=/x\nauth users = , joe:deny, @Some Group:deny, ,admin:rw \n"
             "hosts allow = ,\nhosts deny = a,,b\tc\n").modules[0]
    assert m.auth_users == ["joe:deny", "@Some Group:deny", "admin:rw"]
    assert m.hosts_allow == [","] and m.hosts_deny == ["a", "b", "c"]
    assert rc.conf_tokens(" a, b\tc\r\n") == ["a", "b", "c"]


def test_load_rsyncd_conf(tmp_path):
    p = tmp_path / "rsyncd.conf"
    p.write_bytes(b"[m]\npath = /x\ncomment = caf\xc3\xa9 \xff\n")
    c = rc.load_rsyncd_conf(str(p))
    assert c.path == str(p) and c.modules[0].comment == "caf\xe9 \udcff"
    with pytest.raises(rc.ConfigError, match="unable to open config file"):
        rc.load_rsyncd_conf(str(tmp_path / "missing.conf"))
    p.write_text("[m]\npath=/x\ntimeout = x\n")
    with pytest.raises(rc.ConfigError, match="^%s:3: " % re.escape(str(p))):
        rc.load_rsyncd_conf(str(p))


def test_load_refuses_a_symlink_owned_by_someone_else(tmp_path):
    need(IS_ROOT, "root (to plant another user's symlink)")
    real = tmp_path / "real.conf"
    real.write_text("[m]\npath = /x\n")
    link = tmp_path / "link.conf"
    link.symlink_to(real)
    assert rc.load_rsyncd_conf(str(link)).modules[0].path == "/x"
    os.lchown(link, 4321, 4321)
    with pytest.raises(rc.ConfigError, match="unable to open config file"):
        rc.load_rsyncd_conf(str(link))


LISTED = (
    "reverse lookup = no\n"
    "comment = global default \\\n  comment\n"
    "[plain]\npath = /tmp\n"
    "[ spaced   name ]\npath = /tmp\ncomment = with   inner   spaces  \n"
    "[hidden]\npath = /tmp\nlist = no\ncomment = not listed\n"
    "[global]\ncomment = late default\n"
    "[hash]\npath = /tmp\ncomment = # kept ; kept\n"
    "[cont]\npath = /tmp\ncomment = a \\\n  b \\\n\n"
    "[PLAIN]\ncomment = reopened\n"
    "[crlf]\r\npath = /tmp\r\ncomment = crlf\r\n"
    "\\  [bs]\npath = /tmp\n"
)


def test_stock_rsyncd_lists_the_modules_and_comments_we_parse(rsyncd, rsync_bin):
    d = rsyncd(LISTED)
    ours = rc.parse_rsyncd_conf(d.text, "rsyncd.conf")
    p = client(rsync_bin, [d.url + "/"])
    assert p.returncode == 0, p.stderr
    want = ["%-15s\t%s" % (m.name, m.comment) for m in ours.modules if m.list]
    assert p.stdout.decode().split("\n")[:-1] == want
    assert "crlf" in [m.name for m in ours.modules] and len(want) == 6


# ----------------------------------------------------------------------------
# hosts allow / hosts deny


def fake_dns(names):
    def resolve(name):
        assert not any(c in name for c in "*?[:/"), name
        return names.get(name)
    return resolve


DNS = fake_dns({"gw.example": ["10.1.2.3", "10.9.9.9"], "other.example": ["10.0.0.7"]})

HOST_CASES = [
    # addresses
    ("10.1.2.3", None, ["10.1.2.3"], [], True),
    ("10.1.2.4", None, ["10.1.2.3"], [], False),
    ("10.1.2.3", None, ["10.0.0.0/8"], [], True),
    ("11.1.2.3", None, ["10.0.0.0/8"], [], False),
    ("10.1.2.3", None, ["10.1.0.0/255.255.0.0"], [], True),
    ("10.2.2.3", None, ["10.1.0.0/255.255.0.0"], [], False),
    ("10.1.2.3", None, ["0.0.0.3/0.0.0.255"], [], True),
    ("10.1.2.3", None, ["1.2.3.4/0"], [], True),
    ("10.1.2.3", None, ["10.0.0.0/+8"], [], True),
    ("10.1.2.3", None, ["10.1.2.3/33"], [], False),
    ("10.1.2.3", None, ["10.1.2.3/-1"], [], False),
    ("10.1.2.3", None, ["10.1.2.3/abc"], [], False),
    ("10.1.2.3", None, ["10.1.2.3/"], [], False),
    ("10.1.2.3", None, ["10.1.2.3/255.255"], [], False),
    ("127.0.0.1", None, ["127.1"], [], True),
    ("8.0.0.1", None, ["010.0.0.1"], [], True),
    ("10.1.2.3", None, ["192.168.0.1, 10.1.2.0/24"], [], True),
    ("10.1.2.3", None, ["192.168.0.1,,\t10.1.2.3"], [], True),
    ("10.1.2.3", None, ["::/0"], [], False),
    # IPv6, scopes, IPv4-mapped
    ("2001:db8::1", None, ["2001:db8::/32"], [], True),
    ("2001:db9::1", None, ["2001:db8::/32"], [], False),
    ("2001:db8::1", None, ["2001:DB8::/ffff:ffff::"], [], True),
    ("2001:db8::1", None, ["::/0"], [], True),
    ("::1", None, ["::1"], [], True),
    ("::1", None, ["127.0.0.1"], [], False),
    ("::1", None, ["::1/129"], [], False),
    ("fe80::1%lo", None, ["fe80::1%lo"], [], True),
    ("fe80::1%lo", None, ["fe80::1"], [], True),
    ("fe80::1", None, ["fe80::1%lo"], [], False),
    ("fe80::1%lo", None, ["fe80::%lo/64"], [], True),
    ("::ffff:10.1.2.3", None, ["10.0.0.0/8"], [], True),
    ("::ffff:10.1.2.3", None, ["::ffff:10.1.2.3"], [], False),
    ("::ffff:10.1.2.3", None, [], ["10.1.2.3"], False),
    # hostnames, and the placeholder when none was looked up
    ("10.1.2.3", "host.example.com", ["*.example.com"], [], True),
    ("10.1.2.3", "HOST.Example.COM", ["*.EXAMPLE.com"], [], True),
    ("10.1.2.3", "host.example.org", ["*.example.com"], [], False),
    ("10.1.2.3", "a.b", ["?.b"], [], True),
    ("10.1.2.3", "a.b", ["[xa].b"], [], True),
    ("10.1.2.3", None, ["*.example.com"], [], False),
    ("10.1.2.3", None, ["*"], [], True),
    ("10.1.2.3", None, [], ["*"], False),
    ("10.1.2.3", None, ["undetermined"], [], True),
    ("10.1.2.3", "", ["*"], [], False),
    ("10.1.2.3", "UNKNOWN", ["unknown"], [], True),
    ("10.1.2.3", "10.1.2.3", ["10.1.2.*"], [], True),
    ("10.1.2.3", None, ["10.1.2.*"], [], False),
    # allow first, then deny
    ("10.1.2.3", None, ["10.1.2.3"], ["10.1.2.3"], True),
    ("10.1.2.3", None, ["10.0.0.1"], ["10.0.0.2"], True),
    ("10.1.2.3", None, ["10.0.0.1"], ["10.1.2.3"], False),
    ("10.1.2.3", None, ["10.0.0.1"], [], False),
    ("10.1.2.3", None, [], ["10.1.2.3"], False),
    ("10.1.2.3", None, [], ["10.0.0.1"], True),
    ("10.1.2.3", None, [], [], True),
    ("10.1.2.3", None, [""], [""], True),
    ("10.1.2.3", None, [","], [], False),
    ("10.1.2.3", None, ["10.0.0.0/8"], ["*"], True),
    ("11.1.2.3", None, ["10.0.0.0/8"], ["*"], False),
]


@pytest.mark.parametrize("addr,hostname,allow,deny,want", HOST_CASES)
def test_host_allowed(addr, hostname, allow, deny, want):
    assert rc.host_allowed(addr, hostname, allow, deny) is want


@pytest.mark.parametrize("addr,allow,deny,resolve,want", [
    ("10.1.2.3", ["gw.example"], [], DNS, True),
    ("10.9.9.9", ["GW.example"], [], DNS, True),
    ("10.1.2.4", ["gw.example"], [], DNS, False),
    ("10.1.2.3", ["gw.example"], [], None, False),
    ("10.1.2.3", ["gone.example"], [], DNS, False),
    ("10.1.2.3", [], ["gone.example"], DNS, False),
    ("10.1.2.3", [], ["gone.example"], None, True),
    ("10.1.2.3", [], ["other.example"], DNS, True),
    ("10.1.2.3", ["gw.*", "10.1.2.*", "1.2.3.4", "gw.example/8"], [], DNS, False),
    ("2001:db8::1", ["gw.example"], [], DNS, False),
])
def test_forward_lookups(addr, allow, deny, resolve, want):
    assert rc.host_allowed(addr, None, allow, deny, resolve=resolve) is want


def test_netgroups():
    groups = {("trusted", "h.example")}

    def netgroup(group, host):
        return (group, host) in groups
    assert rc.host_allowed("10.1.2.3", "h.example", ["@trusted"], [], netgroup=netgroup)
    assert not rc.host_allowed("10.1.2.3", "x.example", ["@trusted"], [], netgroup=netgroup)
    assert not rc.host_allowed("10.1.2.3", "h.example", ["@trusted"], [])
    assert not rc.host_allowed("10.1.2.3", "h.example", [], ["@trusted"], netgroup=netgroup)
    assert rc.host_allowed("10.1.2.3", "@", ["@"], [])
    assert not rc.host_allowed("10.1.2.3", "x", ["@"], [])
    assert not rc.innetgr("no-such-netgroup", "localhost")


def rsync_client_name(addr):
    """The name rsyncd finds for addr: reverse lookup, confirmed forward."""
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        name = socket.getnameinfo((addr, 0), socket.NI_NAMEREQD)[0]
        found = {ai[4][0] for ai in socket.getaddrinfo(name, None, fam)}
    except OSError:
        return "UNKNOWN"
    return name if addr in found else "UNKNOWN"


STOCK_HOST_CASES = [
    # (hosts allow, hosts deny, extra module parameters)
    ("127.0.0.1", "", ""), ("127.0.0.2", "", ""), ("127.0.0.0/8", "", ""),
    ("127.0.0.0/255.0.0.0", "", ""), ("0.0.0.1/0.0.0.255", "", ""), ("10.0.0.0/0", "", ""),
    ("127.0.0.1/33", "", ""), ("127.1", "", ""), ("10.0.0.1, 127.0.0.1", "", ""), (", ,", "", ""),
    ("10.0.0.0/8", "127.0.0.1", ""), ("127.0.0.1", "127.0.0.1", ""), ("", "127.0.0.1", ""),
    ("", "10.0.0.1", ""), ("10.0.0.1", "10.0.0.2", ""), ("10.0.0.1", "*", ""),
    ("::1", "", ""), ("::/0", "", ""), ("::1/128", "", ""), ("::0/ffff::", "", ""), ("", "::1", ""),
    ("*", "", ""), ("", "*", ""), ("undetermined", "", ""), ("unknown", "", ""),
    ("local*", "", ""), ("local*", "", "reverse lookup = yes"),
    ("LOCALHOST", "", "reverse lookup = yes"), ("unknown", "", "reverse lookup = yes"),
    ("*", "", "reverse lookup = yes"),
    ("localhost", "", ""), ("localhost", "", "forward lookup = no"),
    ("", "localhost", ""), ("", "no-such-host.invalid", ""), ("no-such-host.invalid", "", ""),
    ("", "no-such-host.invalid", "forward lookup = no"), ("@no-such-netgroup", "", ""),
    ("127.0.0.1", "", "list = no"), ("127.0.0.2", "", "list = no"),
]


def stock_host_verdicts(rsync_bin, d, modules):
    def ask(name):
        p = client(rsync_bin, ["%s/%s/" % (d.url, name)])
        err = p.stderr.decode(errors="replace")
        if p.returncode == 0:
            return True
        assert "@ERROR: access denied" in err or "@ERROR: Unknown module" in err, err
        return False
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return dict(zip(modules, pool.map(ask, modules)))


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_hosts_against_stock_rsyncd(rsyncd, rsync_bin, tmp_path, address):
    if address == "::1":
        need(have_ipv6_loopback(), "an IPv6 loopback")
    body = "reverse lookup = no\n"
    names = []
    for i, (allow, deny, extra) in enumerate(STOCK_HOST_CASES):
        names.append("m%d" % i)
        body += "[m%d]\npath = %s\nhosts allow = %s\nhosts deny = %s\n%s\n" % (
            i, tmp_path, allow, deny, extra)
    d = rsyncd(body, address)
    ours = rc.parse_rsyncd_conf(d.text, "rsyncd.conf")
    theirs = stock_host_verdicts(rsync_bin, d, names)
    looked_up = rsync_client_name(address)
    mine = {}
    for name in names:
        m = ours.module(name)
        mine[name] = m.allows_host(address, looked_up if ours.wants_hostname(m) else None)
    diff = {n: (STOCK_HOST_CASES[int(n[1:])], mine[n], theirs[n]) for n in names if mine[n] != theirs[n]}
    assert not diff
    assert any(theirs.values()) and not all(theirs.values())


# ----------------------------------------------------------------------------
# refuse options

REFUSE_TABLE = [
    # (patterns, the server options after --server [--sender], refused option or None)
    (["compress"], ["-logDtprze.iLsfxCIvu"], "--compress (-z)"),
    (["compress"], ["-logDtpre.iLsfxCIvu"], None),
    (["compress"], ["-e.", "--compress-level=1"], "--compress (-z)"),
    (["compress"], ["-e.", "--zl=0"], "--compress (-z)"),
    (["compress"], ["-e.", "--compress-choice=zlib"], "--compress (-z)"),
    (["compress"], ["-e.", "--zc=NONE"], None),
    (["compress"], ["-e.", "--zc=none", "--zl=1"], "--compress (-z)"),
    (["compress"], ["-e.", "--zc=bogus"], None),
    (["compress"], ["-e.", "--new-compress"], "--compress (-z)"),
    (["compress"], ["-e.", "--old-compress", "--zc=none"], None),
    (["compress"], ["-e.", "-zz", "--no-compress"], "--compress (-z)"),
    (["compress"], ["-e.", "--no-compress"], None),
    (["compress"], ["-e.", ".", "m/", "-z"], "--compress (-z)"),
    (["compress"], ["-e.", "--", ".", "-z"], None),
    (["compress"], ["-e.", "-", "-z"], "--compress (-z)"),
    (["compress"], ["-e.", "--compress=1"], None),
    (["compress"], ["-e.", "--compr"], None),
    (["compress"], ["-e.", "-z=1"], None),
    (["compress"], ["-e.", "--temp-dir", "-z"], None),
    (["compress"], ["-e.", "-T", "-z"], None),
    (["compress"], ["-e.", "-zT"], "--compress (-z)"),
    (["compress"], ["-e.", "-T=/tmp", "-z"], "--compress (-z)"),
    (["compress"], ["-e.", "--timeout=10abc", "-z"], None),
    (["compress"], ["-e.", "--timeout=0x10", "-z"], "--compress (-z)"),
    (["compress"], ["-e.", "-@", "-1", "-z"], "--compress (-z)"),
    (["compress"], ["-e.", "--daemon", "-z"], None),
    (["compress"], ["-e.", "-z", "--daemon"], "--compress (-z)"),
    (["compress-level"], ["-e.", "--compress-level=abc"], None),
    (["zl"], ["-ze."], None),
    (["zl"], ["-e.", "--compress-level=1"], "--compress-level"),
    (["!compress"], ["-ze."], None),
    (["* !compress"], ["-ze."], None),
    (["*", "!compress"], ["-vze."], "--verbose (-v)"),
    (["! compress"], ["-ze."], "--compress (-z)"),
    (["!"], ["-ze."], None),
    (["*"], ["-logDtpre.iLsfxCIvu"], "--links (-l)"),
    (["*"], ["-ne.iLsfxCIvu", "--log-format=%i", "--checksum-seed=1", "--from0", "-s"], None),
    (["*"], ["-e.", "--copy-devices"], "--copy-devices"),
    (["* !copy-devices"], ["-e.", "--copy-devices"], None),
    (["* !copy-devices"], ["-e.", "--write-devices"], "--write-devices"),
    (["!write-devices inplace"], ["-e.", "--write-devices"], "--inplace"),
    (["!write-devices"], ["-e.", "--write-devices"], None),
    ([], ["-e.", "--log-file=/tmp/x"], "--log-file"),
    (["!log-file*"], ["-e.", "--log-file-format=%n"], "--log-file-format"),
    ([], ["-e.", "--insecure-links"], "--insecure-links"),
    ([], ["-e.", "--iconv=utf8"], "--iconv"),
    ([], ["-e.", "-N"], "--crtimes (-N)"),
    ([], ["-e.", "--bogus", "-N"], None),
    (["e"], ["-e."], "--rsh (-e)"),
    (["n"], ["-ne."], "--dry-run (-n)"),
    (["no-iconv"], ["-e."], "--no-iconv"),
    (["no-iconv"], ["-e.", "--iconv=x"], "--iconv"),
    (["delete"], ["-re.", "--delete"], "--delete"),
    (["delete"], ["-re.", "--delete-after"], "--delete"),
    (["delete"], ["-re.", "--delete-excluded"], "--delete"),
    (["delete"], ["-re.", "--delete-missing-args"], "--delete"),
    (["delete"], ["-re.", "--ignore-missing-args"], None),
    (["delete"], ["--sender", "-re.", "--remove-source-files"], "--delete"),
    (["delete"], ["-re.", "--remove-source-files"], None),
    (["delete"], ["-e.", "--delete-excluded"], None),
    (["delete"], ["-re.", "--delete-during", "--delete-after"], None),
    (["delete*"], ["-re.", "--del"], "--delete"),
    (["delete*"], ["-re.", "--delete-delay"], "--delete-delay"),
    (["del"], ["-re.", "--delete-during"], "--delete-during"),
    (["del"], ["-re.", "--delete-delay"], None),
    (["delete-before delete-during"], ["-re.", "--delete"], "--delete-before"),
    (["delete-before"], ["-re.", "--delete"], None),
    (["partial"], ["-e.", "--inplace"], "--partial"),
    (["partial"], ["-e.", "--append"], "--partial"),
    (["partial"], ["-e.", "-P"], "--partial"),
    (["progress"], ["-e.", "-P"], "--progress"),
    (["partial"], ["-e.", "--partial-dir=."], "--partial"),
    (["partial"], ["-e.", "--partial-dir="], "--partial"),
    (["partial"], ["-e.", "--partial-dir=./"], "--partial"),
    (["partial"], ["-e.", "--partial-dir=.p"], None),
    (["partial"], ["-e.", "--delay-updates"], None),
    (["inplace"], ["-e.", "--append"], "--inplace"),
    (["inplace"], ["-e.", "--append-verify"], "--inplace"),
    (["a"], ["-e.", "-a"], "--archive (-a)"),
    (["archive"], ["-ve."], None),
    (["a"], ["-re."], "--recursive (-r)"),
    (["r"], ["-e.", "-a"], "--recursive (-r)"),
    (["r t"], ["-e.", "-a"], "--times (-t)"),
    (["r"], ["-e.", "--no-r"], None),
    (["no-r"], ["-e.", "--no-recursive"], "--no-recursive"),
    (["dirs"], ["-e.", "--old-dirs"], None),
    (["dirs"], ["-de."], "--dirs (-d)"),
    (["times"], ["-e.", "--no-times"], None),
    (["D"], ["-rDe."], "-D"),
    (["P"], ["-e.", "-P"], "-P"),
    (["log-format"], ["-e.", "--out-format=%n"], "--out-format"),
    (["existing"], ["-e.", "--ignore-non-existing"], "--ignore-non-existing"),
    (["stop-after"], ["-e.", "--time-limit=5"], "--time-limit"),
    (["daemon"], ["-e.", "--no-detach"], "--no-detach"),
    (["[pt]"], ["-logDtpre."], "--times (-t)"),
    (["b?ckup*"], ["-e.", "--backup-dir=x"], "--backup-dir"),
    (["remote-option"], ["-e.", "-M", "x"], "--remote-option (-M)"),
    (["version"], ["-e.", "-M", "x"], None),
]


@pytest.mark.parametrize("patterns,opts,want", REFUSE_TABLE)
def test_refused_option(patterns, opts, want):
    argv = ["--server"] + opts + [".", "m/"]
    got = rc.refused_option(patterns, argv)
    assert got == (None if want is None else "The server is configured to refuse " + want)


class FakeDaemon:
    """A listening socket that speaks rsync's daemon greeting to one stock
    client, then runs `then(conn, reader, client_greeting, module)`."""

    def __init__(self, greeting, then):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.sock.settimeout(60)
        self.port = self.sock.getsockname()[1]
        self.greeting = greeting
        self.then = then
        self.result = None
        self.error = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            conn, _ = self.sock.accept()
            with conn:
                conn.settimeout(60)
                f = conn.makefile("rb")
                conn.sendall(self.greeting.encode())
                client_greeting = f.readline().decode().rstrip("\n")
                module = f.readline().decode().rstrip("\n")
                self.result = self.then(conn, f, client_greeting, module)
        except Exception as e:  # handed to the test thread
            self.error = e
        finally:
            self.sock.close()

    def join(self):
        self.thread.join(60)
        if self.error is not None:
            raise self.error
        return self.result


def read_server_args(conn, f, client_greeting, module):
    conn.sendall(b"@RSYNCD: OK\n")
    args = []
    buf = b""
    while True:
        chunk = f.read1(65536)
        if not chunk:
            break
        buf += chunk
        while b"\0" in buf:
            word, buf = buf.split(b"\0", 1)
            if not word:
                return args
            args.append(word.decode())
    return args


def captured_argv(rsync_bin, tmp_path, opts, push):
    """The server argv a stock client sends to a daemon for these options."""
    fake = FakeDaemon("@RSYNCD: 32.0 sha512 sha256 sha1 md5 md4\n", read_server_args)
    url = "rsync://127.0.0.1:%d/m/" % fake.port
    src = tmp_path / "capture-src"
    src.mkdir(exist_ok=True)
    args = opts.split() + ([str(src) + "/", url] if push else [url, str(tmp_path / "capture-dst")])
    client(rsync_bin, args, timeout=60)
    return fake.join()


CLIENT_OPTIONS = [
    "-a", "-az", "-avz", "-r --delete", "-a --delete-after", "-r --delete-excluded",
    "-r --partial", "-r --inplace", "-r --append", "-rP", "-r --remove-source-files",
    "-r --zc=zlib", "-r --compress-level=1", "-rH --numeric-ids", "-r --no-i-r -c",
    "-r --delete-missing-args", "-r --bwlimit=100", "-r --timeout=30", "-r -T tmpd", "-rn",
    "-r --delay-updates", "-r --partial-dir=.p", "-r --existing", "-r --backup --suffix=.b",
    "-r --checksum-choice=md5", "-ri --out-format=%n", "-rt --modify-window=2", "-r -x",
]

PATTERN_SETS = [
    "compress", "delete", "partial", "inplace", "a", "*", "* !a !compress !e",
    "delete-* !delete-after", "D", "r t", "dry-run", "log-format", "timeout", "z",
    "checksum*", "b?ckup*", "[pt]", "no-i-r", "remove-*", "modify-window", "existing", "",
]


def test_captured_argv_looks_like_rsyncs(rsync_bin, tmp_path):
    assert captured_argv(rsync_bin, tmp_path, "-az", False) == [
        "--server", "--sender", "-logDtprze.iLsfxCIvu", ".", "m/"]
    assert captured_argv(rsync_bin, tmp_path, "-r --delete", True) == [
        "--server", "-re.iLsfxCIvu", "--delete", ".", "m/"]


def test_refuse_options_against_stock_rsyncd(rsyncd, rsync_bin, tmp_path):
    """The argv a stock client sends for each option set (pulled and
    pushed), offered to a stock rsyncd under every pattern set: it refuses
    what we refuse.  The argv goes in raw over protocol 29, because from 30
    on rsyncd negotiates compression before it reports a refusal, and a
    refused compression option can make that fail first."""
    runs = [(opts, push) for opts in CLIENT_OPTIONS for push in (False, True)]

    def capture(n):
        where = tmp_path / ("cap%d" % n)
        where.mkdir()
        return captured_argv(rsync_bin, where, *runs[n])
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        argvs = list(pool.map(capture, range(len(runs))))
    d = rsyncd("".join("[m%d]\npath = %s\nread only = no\nrefuse options = %s\n" % (i, tmp_path, pats)
                       for i, pats in enumerate(PATTERN_SETS)))
    ours = rc.parse_rsyncd_conf(d.text, "rsyncd.conf")
    jobs = [(i, n) for i in range(len(PATTERN_SETS)) for n in range(len(runs))]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        theirs = list(pool.map(lambda job: stock_verdict_raw(d.port, "m%d" % job[0], argvs[job[1]]), jobs))
    diff = []
    refused = 0
    for (i, n), want in zip(jobs, theirs):
        got = rc.refused_option(ours.module("m%d" % i).refuse_options, argvs[n])
        got = got and got.replace("The server is configured to refuse ", "")
        refused += got is not None
        if got != want:
            diff.append((PATTERN_SETS[i], runs[n], argvs[n], got, want))
    assert not diff, "\n".join(map(repr, diff))
    assert 100 < refused < len(jobs) - 100


@pytest.mark.parametrize("patterns,opts,push,want", [
    ("compress", "-az", False, "--compress (-z)"),
    ("*", "-a", False, "--links (-l)"),
    ("* !a", "-rv", True, "--verbose (-v)"),
    ("delete", "-r --delete-after", True, "--delete"),
    ("partial", "-r --inplace", True, "--partial"),
    ("D", "-a", False, "-D"),
    ("dry-run", "-rn", False, "--dry-run (-n)"),
    ("delete", "-r --delete", False, None),
    ("", "-a", True, None),
])
def test_refusals_reach_the_stock_client(rsyncd, rsync_bin, tmp_path, patterns, opts, push, want):
    """End to end: stock client, stock rsyncd, and our verdict on the argv
    that client sends."""
    (tmp_path / "mod").mkdir()
    (tmp_path / "mod" / "file").write_text("x\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("y\n")
    d = rsyncd("[m]\npath = %s\nread only = no\nrefuse options = %s\n" % (tmp_path / "mod", patterns))
    url = d.url + "/m/"
    args = opts.split() + ([str(tmp_path / "src") + "/", url] if push else [url, str(tmp_path / "dst")])
    p = client(rsync_bin, args)
    m = re.search(r"The server is configured to refuse (.*)", p.stderr.decode(errors="replace"))
    theirs = m and re.sub(r"^--\(null\) \((-.)\)$", r"\1", m.group(1))
    assert theirs == want and (p.returncode == 0) is (want is None), p.stderr
    argv = captured_argv(rsync_bin, tmp_path, opts, push)
    ours = rc.refused_option(rc.parse_rsyncd_conf(d.text).module("m").refuse_options, argv)
    assert ours == (want and "The server is configured to refuse " + want)


def stock_verdict_raw(port, module, argv):
    """Sends argv to a stock rsyncd as a protocol-29 client would and
    returns the option it refuses (or None)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"@RSYNCD: 29\n" + module.encode() + b"\n")
        line = f.readline()
        assert line.startswith(b"@RSYNCD: OK"), line
        s.sendall(b"".join(a.encode() + b"\n" for a in argv) + b"\n")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            m = re.search(rb"The server is configured to refuse ([^\n]*)\n", data)
            chunk = None if m else f.read1(65536)
            if not chunk:
                break
            data += chunk
    return m and re.sub(r"^--\(null\) \((-.)\)$", r"\1", m.group(1).decode())


def test_refuse_table_against_stock_rsyncd(rsyncd, rsync_bin, tmp_path):
    """The hand-written argv of REFUSE_TABLE, sent raw to a stock rsyncd:
    it refuses what the table says."""
    cases = [c for c in REFUSE_TABLE if "--zc=bogus" not in c[1]]
    pattern_sets = sorted({" ".join(p) for p, _, _ in cases})
    body = "".join("[m%d]\npath = %s\nread only = no\nrefuse options = %s\n" % (i, tmp_path, p)
                   for i, p in enumerate(pattern_sets))
    d = rsyncd(body)

    def ask(case):
        patterns, opts, _ = case
        module = "m%d" % pattern_sets.index(" ".join(patterns))
        return stock_verdict_raw(d.port, module, ["--server"] + opts + [".", "m/"])
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        theirs = list(pool.map(ask, cases))
    diff = [(c, t) for c, t in zip(cases, theirs) if c[2] != t]
    assert not diff


# ----------------------------------------------------------------------------
# Daemon authentication

SECRETS = b"joe:s3cret\n"


def test_pick_auth_digest():
    full = ["sha512", "sha256", "sha1", "md5", "md4"]
    assert rc.pick_auth_digest(full, 32) == "sha512"
    assert rc.pick_auth_digest(["md4", "md5", "sha1"], 32) == "sha1"
    assert rc.pick_auth_digest(["MD5", "xxh3"], 31) == "md5"
    assert rc.pick_auth_digest(["md5 md4"], 31) == "md5"
    assert rc.pick_auth_digest(full, 32, ours=["md5"]) == "md5"
    assert rc.pick_auth_digest(None, 30) == "md5"
    assert rc.pick_auth_digest(None, 29) == "md4_old"
    with pytest.raises(rc.AuthError) as e:
        rc.pick_auth_digest(["xxh3", "none"], 32)
    assert str(e.value) == ("your client does not support one of our daemon-auth checksums: "
                            "sha512 sha256 sha1 md5 md4")
    with pytest.raises(rc.AuthError):
        rc.pick_auth_digest([], 32)


@pytest.mark.parametrize("digest,size", [("sha512", 86), ("sha256", 43), ("sha1", 27), ("md5", 22),
                                         ("md4", 22), ("md4_old", 22)])
def test_challenges_are_fresh_unpadded_base64(digest, size):
    seen = {rc.auth_challenge("192.0.2.1", digest) for _ in range(50)}
    assert len(seen) == 50
    assert all(re.fullmatch(r"[A-Za-z0-9+/]{%d}" % size, c) for c in seen)
    assert len(rc.auth_challenge("::1")) == 22


def test_expected_response_is_the_digest_of_password_and_challenge():
    for name in ("sha512", "sha256", "sha1", "md5"):
        want = base64.b64encode(hashlib.new(name, b"s3cretx").digest()).decode().rstrip("=")
        assert rc.expected_response(b"s3cret", "x", name) == want
    assert rc.expected_response(b"s3cret", "x", "md4") == base64.b64encode(
        rsync_md4.md4(b"s3cretx").digest()).decode().rstrip("=")
    assert rc.expected_response(b"s3cret", "x", "md4_old") == base64.b64encode(
        rsync_md4.md4(b"\0\0\0\0s3cretx").digest()).decode().rstrip("=")
    assert rc.expected_response(b"s3cret\0junk", "x", "md5") == rc.expected_response(b"s3cret", "x", "md5")


def answer(user, password, challenge, digest):
    return "%s %s" % (user, rc.expected_response(password, challenge, digest))


GROUPS = {"ann": ["ann", "staff"], "bob": ["bob", "guest", "staff"], "joe": ["joe"]}


def groups_of(user):
    return GROUPS.get(user, [])


@pytest.mark.parametrize("rules,secrets,user,password,want", [
    (["joe"], b"joe:pw\n", "joe", b"pw", ("joe", "")),
    (["joe"], b"joe:pw\n", "joe", b"bad", "password mismatch"),
    (["joe"], b"joe:pw\n", "ann", b"pw", "no matching rule"),
    (["joe:ro"], b"joe:pw\n", "joe", b"pw", ("joe", "ro")),
    (["joe:RW"], b"joe:pw\n", "joe", b"pw", ("joe", "rw")),
    (["joe:rx"], b"joe:pw\n", "joe", b"pw", ("joe", "")),
    (["joe:Deny"], b"joe:pw\n", "joe", b"pw", "denied by rule"),
    (["j?e:ro", "joe:deny"], b"joe:pw\n", "joe", b"pw", ("joe", "ro")),
    (["*"], b"# comment\n\njoe:pw\n", "joe", b"pw", ("joe", "")),
    (["*"], b"joe:pw\n", "#joe", b"pw", "invalid username"),
    (["*"], b"#joe:pw\n", "#joe", b"pw", "invalid username"),
    (["*"], b"jo:pw\njoe2:pw\n", "joe", b"pw", "secret not found"),
    (["*"], b"joe:pw\r\n", "joe", b"pw", ("joe", "")),
    (["*"], b"\r\njoe:pw\rjunk\n", "joe", b"pw", ("joe", "")),
    (["*"], b"joe:first\njoe:pw\n", "joe", b"pw", "password mismatch"),
    (["*"], b"joe:pw", "joe", b"pw", ("joe", "")),
    (["*"], b"joe:" + b"p" * 1019 + b"\n", "joe", b"p" * 1019, ("joe", "")),
    (["*"], b"joe:" + b"p" * 1030 + b"\n", "joe", b"p" * 1030, "password mismatch"),
    (["*"], b"joe:" + b"p" * 1030 + b"\n", "joe", b"p" * 1019, ("joe", "")),
    (["@staff:rw"], b"@staff:grouppw\n", "ann", b"grouppw", ("ann", "rw")),
    (["@staff:rw"], b"ann:annpw\n@staff:grouppw\n", "ann", b"annpw", ("ann", "rw")),
    (["@staff:rw"], b"@staff:grouppw\n", "joe", b"grouppw", "no matching rule"),
    (["@guest:deny", "@staff:ro"], b"@staff:grouppw\n", "bob", b"grouppw", "denied by rule"),
    (["@guest:deny", "@staff:ro"], b"@staff:grouppw\n", "ann", b"grouppw", ("ann", "ro")),
    (["@st*"], b"@staff:grouppw\n", "ann", b"grouppw", ("ann", "")),
    (["@staff"], b"@guest:grouppw\n", "bob", b"grouppw", "secret not found"),
    (["@staff"], b"@staff:x\nbob:pw\n", "bob", b"pw", ("bob", "")),
    (["@staff"], b"@staff:x\n@staff:pw\n", "bob", b"pw", "password mismatch"),
    (["joe"], b"@joe:pw\n", "joe", b"pw", "secret not found"),
    ([], b"joe:pw\n", "joe", b"pw", "no matching rule"),
])
def test_check_auth(rules, secrets, user, password, want):
    challenge = rc.auth_challenge("192.0.2.1", "sha256")
    line = answer(user, password, challenge, "sha256")
    if isinstance(want, tuple):
        assert rc.check_auth(line, challenge, rules, secrets, "sha256", groups_of=groups_of) == want
        return
    with pytest.raises(rc.AuthError) as e:
        rc.check_auth(line, challenge, rules, secrets, "sha256", groups_of=groups_of)
    assert e.value.reason == want and e.value.user == user
    assert str(e.value) == "auth failed for %s: %s" % (user, want)


def test_check_auth_messages():
    ch = "abc"
    with pytest.raises(rc.AuthError) as e:
        rc.check_auth("nospace\r\n", ch, ["*"], SECRETS, "md5", module="m", host="h.example",
                      addr="192.0.2.1")
    assert str(e.value) == "auth failed on module m from h.example (192.0.2.1): invalid challenge response"
    assert e.value.user is None
    with pytest.raises(rc.AuthError) as e:
        rc.check_auth(answer("joe", b"wrong", ch, "md5"), ch, ["*"], SECRETS, "md5", module="m",
                      addr="192.0.2.1")
    assert str(e.value) == "auth failed on module m from UNDETERMINED (192.0.2.1) for joe: password mismatch"
    good = answer("joe", b"s3cret", ch, "md5")
    assert rc.check_auth(good[:-2] + "\r" + good[-2:] + "\r\n", ch, ["*"], SECRETS, "md5") == ("joe", "")
    with pytest.raises(rc.AuthError, match="password mismatch"):
        rc.check_auth(answer("joe", b"s3cret", ch, "sha1"), ch, ["*"], SECRETS, "md5")


def test_user_groups_reads_the_group_database():
    primary = grp.getgrgid(pwd.getpwnam("root").pw_gid).gr_name
    assert rc.user_groups("root")[0] == primary
    assert rc.user_groups("no-such-user-here") == []


def test_read_secrets(tmp_path):
    p = tmp_path / "secrets"
    p.write_bytes(SECRETS)
    os.chmod(p, 0o600)
    assert rc.read_secrets(str(p)) == SECRETS
    os.chmod(p, 0o640)
    assert rc.read_secrets(str(p)) == SECRETS
    for mode in (0o644, 0o602, 0o606):
        os.chmod(p, mode)
        with pytest.raises(rc.SecretsError) as e:
            rc.read_secrets(str(p))
        assert str(e.value) == "secrets file must not be other-accessible (see strict modes option)"
        assert e.value.reason == "ignoring secrets file"
        assert rc.read_secrets(str(p), strict_modes=False) == SECRETS
    os.chmod(p, 0o601)
    assert rc.read_secrets(str(p)) == SECRETS
    for missing in (None, "", str(tmp_path / "nope")):
        with pytest.raises(rc.SecretsError) as e:
            rc.read_secrets(missing)
        assert e.value.reason == "no secrets file"


def test_read_secrets_as_root_wants_roots_file(tmp_path):
    need(IS_ROOT, "root (to hand the file to another user)")
    p = tmp_path / "secrets"
    p.write_bytes(SECRETS)
    os.chmod(p, 0o600)
    os.chown(p, 4321, 4321)
    with pytest.raises(rc.SecretsError) as e:
        rc.read_secrets(str(p))
    assert str(e.value) == "secrets file must be owned by root when running as root (see strict modes)"
    assert rc.read_secrets(str(p), strict_modes=False) == SECRETS
    os.chown(p, 0, 0)
    link = tmp_path / "link"
    link.symlink_to(p)
    assert rc.read_secrets(str(link)) == SECRETS
    os.lchown(link, 4321, 4321)
    with pytest.raises(rc.SecretsError, match="no secrets file"):
        rc.read_secrets(str(link))


def auth_server(server_greeting, ours, protocol, auth_users=("joe",), secrets=SECRETS):
    """What a daemon does after the module name: pick the digest, send a
    challenge, check the answer."""
    def then(conn, f, client_greeting, module):
        version, sep, listed = client_greeting[len("@RSYNCD: "):].partition(" ")
        client_list = listed.split(" ") if sep else None
        if ours is None:
            client_list = None
        digest = rc.pick_auth_digest(client_list, protocol, ours=ours or rc.AUTH_DIGESTS)
        challenge = rc.auth_challenge("127.0.0.1", digest)
        conn.sendall(b"@RSYNCD: AUTHREQD " + challenge.encode() + b"\n")
        response = f.readline().decode().rstrip("\n")
        try:
            verdict = rc.check_auth(response, challenge, list(auth_users), secrets, digest,
                                    module=module, addr="127.0.0.1")
        except rc.AuthError as e:
            verdict = e
        conn.sendall(b"@ERROR: auth checked\n")
        return dict(client_greeting=client_greeting, module=module, digest=digest,
                    challenge=challenge, response=response, verdict=verdict)
    return FakeDaemon(server_greeting, then)


@pytest.mark.parametrize("offered", ["sha512", "sha256", "sha1", "md5", "md4",
                                     "sha512 sha256 sha1 md5 md4", "md4 md5"])
@pytest.mark.parametrize("password", ["s3cret", "wrong"])
def test_auth_with_the_stock_client(rsync_bin, offered, password):
    ours = offered.split()
    srv = auth_server("@RSYNCD: 32.0 %s\n" % offered, ours, 32)
    p = client(rsync_bin, ["rsync://joe@127.0.0.1:%d/m/" % srv.port], password=password, timeout=60)
    got = srv.join()
    assert p.returncode != 0 and b"auth checked" in p.stderr
    assert got["module"] == "m"
    assert got["client_greeting"] == "@RSYNCD: 32.0 sha512 sha256 sha1 md5 md4"
    assert got["digest"] == ("md5" if offered == "md4 md5" else ours[0])
    assert got["response"] == answer("joe", password.encode(), got["challenge"], got["digest"])
    if password == "s3cret":
        assert got["verdict"] == ("joe", "")
    else:
        assert isinstance(got["verdict"], rc.AuthError)
        assert str(got["verdict"]) == ("auth failed on module m from UNDETERMINED (127.0.0.1) for joe: "
                                       "password mismatch")


@pytest.mark.parametrize("greeting,args,protocol,digest", [
    ("@RSYNCD: 29\n", ["--protocol=29"], 29, "md4_old"),
    ("@RSYNCD: 30.0\n", [], 30, "md5"),
    ("@RSYNCD: 31.0\n", [], 31, "md5"),
])
@pytest.mark.parametrize("password", ["s3cret", "wrong"])
def test_auth_with_a_stock_client_and_no_digest_list(rsync_bin, greeting, args, protocol, digest, password):
    srv = auth_server(greeting, None, protocol)
    p = client(rsync_bin, args + ["rsync://joe@127.0.0.1:%d/m/" % srv.port], password=password, timeout=60)
    got = srv.join()
    assert p.returncode != 0
    assert got["digest"] == digest
    assert got["response"] == answer("joe", password.encode(), got["challenge"], digest)
    assert (got["verdict"] == ("joe", "")) is (password == "s3cret")


STOCK_AUTH_MODULES = [
    # (auth users, secrets file contents, strict modes)
    ("joe", b"joe:pw\n", True),
    ("joe:deny bob", b"joe:pw\nbob:bpw\n", True),
    ("*", b"joe:pw\njoe:pw2\n", True),
    ("*", b"joe:pw\r\n#ann:pw\n", True),
    ("j?e:ro", b"\njoe:pw\n", True),
    ("@root:ro", b"@root:grouppw\nroot:userpw\n", True),
    ("@ro*", b"root:userpw\n", True),
    ("@nosuchgroup", b"root:userpw\n", True),
    (", ann, joe", b"joe:pw\n", True),
    ("joe", b"joe:pw\n", "0644"),
    ("joe", b"joe:pw\n", "0644 off"),
]

STOCK_AUTH_LOGINS = [("joe", "pw"), ("joe", "pw2"), ("joe", "nope"), ("bob", "bpw"), ("ann", "pw"),
                     ("root", "grouppw"), ("root", "userpw"), ("#ann", "pw")]


def test_auth_rules_and_secrets_against_stock_rsyncd(rsyncd, rsync_bin, tmp_path):
    """A stock rsyncd and check_auth accept the same logins for the same
    "auth users" and secrets files."""
    body = "reverse lookup = no\n"
    for i, (users, secrets, strict) in enumerate(STOCK_AUTH_MODULES):
        path = tmp_path / ("secrets%d" % i)
        path.write_bytes(secrets)
        os.chmod(path, 0o644 if strict in ("0644", "0644 off") else 0o600)
        body += "[m%d]\npath = %s\nauth users = %s\nsecrets file = %s\nstrict modes = %s\n" % (
            i, tmp_path, users, path, "no" if strict == "0644 off" else "yes")
    d = rsyncd(body)
    ours = rc.parse_rsyncd_conf(d.text, "rsyncd.conf")
    jobs = [(i, user, pw) for i in range(len(STOCK_AUTH_MODULES)) for user, pw in STOCK_AUTH_LOGINS]

    def stock(job):
        i, user, pw = job
        p = client(rsync_bin, ["%s/m%d/" % (d.url.replace("rsync://", "rsync://%s@" % user), i)], password=pw)
        assert p.returncode in (0, 5), p.stderr
        return p.returncode == 0

    def mine(job):
        i, user, pw = job
        m = ours.module("m%d" % i)
        challenge = rc.auth_challenge("127.0.0.1", "sha512")
        try:
            secrets = rc.read_secrets(m.secrets_file, m.strict_modes)
            rc.check_auth(answer(user, pw.encode(), challenge, "sha512"), challenge, m.auth_users,
                          secrets, "sha512")
        except rc.AuthError:
            return False
        return True
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        theirs = dict(zip(jobs, pool.map(stock, jobs)))
    diff = [(STOCK_AUTH_MODULES[j[0]][:2], j[1:], mine(j), t) for j, t in theirs.items() if mine(j) != t]
    assert not diff
    assert 5 < sum(theirs.values()) < len(jobs) - 5

