"""gokr-rsync: an rsync client with rsync's command line and output.

Downloads from rsync daemons (`rsync://HOST[:PORT]/MODULE/PATH`,
`HOST::MODULE/PATH`), from `rsync --server` over a remote shell
(`HOST:PATH`, `-e`/`--rsh`, `--rsync-path`), and from a daemon reached over
a remote shell (`-e ssh rsync://HOST/MODULE`). `gokr-rsync rsync://HOST/`
lists the modules.
"""

import base64
import collections
import hashlib
import os
import shlex
import socket
import stat
import sys
import time

import rsync
import rsync_flist
import rsync_receiver

PROG = "gokr-rsync"

# Short letter -> long name; long name -> (attribute, kind[, value]).
SHORT = {
    "a": "archive", "r": "recursive", "l": "links", "p": "perms", "t": "times", "o": "owner",
    "g": "group", "D": "D", "H": "hard-links", "v": "verbose", "q": "quiet", "n": "dry-run",
    "c": "checksum", "I": "ignore-times", "W": "whole-file", "x": "one-file-system",
    "e": "rsh", "h": "human-readable", "i": "itemize-changes", "P": "P", "u": "update",
    "d": "dirs", "E": "executability", "O": "omit-dir-times", "J": "omit-link-times",
    "S": "sparse", "C": "cvs-exclude", "F": "F", "B": "block-size", "R": "relative",
    "z": "compress", "L": "copy-links", "k": "copy-dirlinks", "K": "keep-dirlinks",
    "m": "prune-empty-dirs", "V": "version", "f": "filter", "A": "acls", "X": "xattrs",
    "T": "temp-dir", "y": "fuzzy", "b": "backup", "s": "secluded-args", "8": "8-bit-output",
    "0": "from0", "M": "remote-option", "4": "ipv4", "6": "ipv6", "N": "crtimes", "U": "atimes",
}

LONG = {
    "archive": ("archive", "flag"), "recursive": ("recurse", "flag"), "links": ("links", "flag"),
    "perms": ("perms", "flag"), "times": ("times", "flag"), "owner": ("owner", "flag"),
    "group": ("group", "flag"), "D": ("D", "flag"), "devices": ("devices", "flag"),
    "specials": ("specials", "flag"), "hard-links": ("hard_links", "flag"),
    "numeric-ids": ("numeric_ids", "flag"), "verbose": ("verbose", "count"),
    "quiet": ("quiet", "flag"), "dry-run": ("dry_run", "flag"), "checksum": ("checksum", "flag"),
    "ignore-times": ("ignore_times", "flag"), "whole-file": ("whole_file", "flag"),
    "one-file-system": ("one_file_system", "count"), "delete": ("delete", "flag"),
    "del": ("delete_mode", "const", "during"), "delete-before": ("delete_mode", "const", "before"),
    "delete-during": ("delete_mode", "const", "during"),
    "delete-delay": ("delete_mode", "const", "delay"),
    "delete-after": ("delete_mode", "const", "after"), "delete-excluded": ("delete_excluded", "flag"),
    "force": ("force", "flag"), "exclude": ("filter", "rule", "- "), "include": ("filter", "rule", "+ "),
    "filter": ("filter", "rule", ""), "exclude-from": ("filter", "from", "- "),
    "include-from": ("filter", "from", "+ "), "partial": ("partial", "flag"),
    "inplace": ("inplace", "flag"),
    "timeout": ("timeout", "int"), "contimeout": ("contimeout", "int"), "port": ("port", "int"),
    "protocol": ("protocol", "int"), "checksum-choice": ("checksum_choice", "value"),
    "cc": ("checksum_choice", "value"), "password-file": ("password_file", "value"),
    "progress": ("progress", "flag"), "stats": ("stats", "flag"),
    "human-readable": ("human_readable", "count"), "version": ("version", "flag"),
    "help": ("help", "flag"), "rsh": ("rsh", "value"), "rsync-path": ("rsync_path", "value"),
    "itemize-changes": ("itemize", "count"), "P": ("P", "flag"), "update": ("update", "flag"),
    "dirs": ("dirs", "flag"), "executability": ("executability", "flag"),
    "omit-dir-times": ("omit_dir_times", "flag"), "omit-link-times": ("omit_link_times", "flag"),
    "size-only": ("size_only", "flag"), "existing": ("existing", "flag"),
    "ignore-existing": ("ignore_existing", "flag"), "max-size": ("max_size", "size"),
    "min-size": ("min_size", "size"), "modify-window": ("modify_window", "int"),
    "block-size": ("block_size", "size"), "cvs-exclude": ("cvs_exclude", "flag"),
    "F": ("filter", "F"), "list-only": ("list_only", "flag"), "bwlimit": ("bwlimit", "value"),
    "no-whole-file": ("whole_file", "const", False), "ipv4": ("family", "const", socket.AF_INET),
    "ipv6": ("family", "const", socket.AF_INET6), "safe-links": ("safe_links", "flag"),
    "checksum-seed": ("checksum_seed", "int"), "8-bit-output": ("eight_bit", "flag"),
    "sparse": ("sparse", "flag"), "ignore-errors": ("ignore_errors", "flag"),
    "out-format": ("out_format", "value"), "log-format": ("out_format", "value"),
    "no-motd": ("no_motd", "flag"), "max-delete": ("max_delete", "int"),
    "compress": ("compress", "count"), "compress-choice": ("compress_choice", "value"),
    "zc": ("compress_choice", "value"), "compress-level": ("compress_level", "int"),
    "zl": ("compress_level", "int"), "skip-compress": ("skip_compress", "value"),
    "new-compress": ("compress_choice", "const", "zlibx"), "old-compress": ("compress_choice", "const", "zlib"),
}

NEGATABLE = {"recursive", "links", "perms", "times", "owner", "group", "devices", "specials",
             "hard-links", "numeric-ids", "checksum", "whole-file", "one-file-system", "partial",
             "inplace", "progress", "human-readable", "verbose", "dirs", "omit-dir-times",
             "omit-link-times", "executability", "D", "motd", "relative", "implied-dirs",
             "delete", "cvs-exclude", "update", "sparse", "force", "W", "r", "l", "p", "t", "o",
             "g", "v", "x", "i", "h", "itemize-changes"}

# Options rsync has that this client does not implement: refused by name.
UNSUPPORTED = {"relative", "partial-dir", "copy-links", "copy-dirlinks", "keep-dirlinks", "prune-empty-dirs",
               "acls", "xattrs", "temp-dir", "fuzzy", "backup", "backup-dir", "suffix",
               "secluded-args", "protect-args", "from0", "files-from", "remote-option",
               "crtimes", "atimes", "link-dest", "copy-dest", "compare-dest", "chmod", "chown",
               "usermap", "groupmap", "append", "append-verify", "remove-source-files",
               "copy-unsafe-links", "delay-updates", "mkpath", "fake-super", "super",
               "write-batch", "read-batch", "only-write-batch", "iconv", "address",
               "sockopts", "copy-devices", "write-devices", "preallocate", "fsync",
               "delete-missing-args", "ignore-missing-args", "daemon", "config", "info", "debug",
               "log-file", "log-file-format", "outbuf", "stop-after", "stop-at", "early-input",
               "old-args", "trust-sender", "max-alloc", "open-noatime", "no-implied-dirs",
               "munge-links"}


class Usage(Exception):
    pass


class ClientOptions(rsync.Options):
    def __init__(self):
        super().__init__()
        self.archive = False
        self.D = False
        self.P = False
        self.F = 0
        self.filter_rules = []
        self.progress = False
        self.stats = False
        self.human_readable = 1
        self.version = False
        self.help = False
        self.rsh = None
        self.rsync_path = "rsync"
        self.port = 0
        self.contimeout = 0
        self.password_file = None
        self.family = 0
        self.eight_bit = False
        self.out_format = None
        self.no_motd = False
        self.protocol = rsync.PROTOCOL_VERSION
        self.explicit = set()


def parse_args(argv):
    """rsync's command line: bundled short options, --long[=value], --no-X."""
    o = ClientOptions()
    args = []
    i = 0
    human_set = False

    def takes_value(name):
        spec = LONG.get(name)
        return spec is not None and spec[1] in ("value", "int", "size", "rule", "from")

    def apply(name, value, negate=False):
        nonlocal human_set
        if name in UNSUPPORTED:
            raise Usage("--%s: this option is not supported by %s" % (name, PROG))
        spec = LONG.get(name)
        if spec is None:
            raise Usage("--%s: unknown option" % name)
        attr, kind = spec[0], spec[1]
        o.explicit.add(attr)
        if negate:
            if kind in ("flag", "count"):
                setattr(o, attr, 0 if kind == "count" else False)
                if name == "D":
                    o.devices = o.specials = False
                if name == "human-readable":
                    human_set = True
                return
            raise Usage("--no-%s: unknown option" % name)
        if kind == "flag":
            setattr(o, attr, True)
        elif kind == "count":
            if name == "human-readable" and not human_set:
                o.human_readable = 1
                human_set = True
            setattr(o, attr, getattr(o, attr) + 1)
        elif kind == "const":
            setattr(o, attr, spec[2])
            if attr == "delete_mode":
                o.delete = True
        elif kind == "value":
            setattr(o, attr, value)
        elif kind == "int":
            try:
                setattr(o, attr, int(value))
            except ValueError:
                raise Usage("--%s: invalid numeric value '%s'" % (name, value)) from None
        elif kind == "size":
            setattr(o, attr, rsync.parse_size(value, name=name))
        elif kind == "rule":
            o.filter_rules.append(("rule", spec[2], value))
        elif kind == "F":
            o.filter_rules.append(("rule", None, "-F"))
        elif kind == "from":
            o.filter_rules.append(("from", spec[2], value))

    while i < len(argv):
        a = argv[i]
        i += 1
        if a == "--":
            args.extend(argv[i:])
            break
        if a.startswith("--") and len(a) > 2:
            name, eq, value = a[2:].partition("=")
            negate = False
            if name.startswith("no-") and name[3:] in LONG and name[3:] in NEGATABLE:
                name, negate = name[3:], True
            elif name.startswith("no-") and name[3:] in SHORT and name[3:] in NEGATABLE:
                name, negate = SHORT[name[3:]], True
            if not negate and name in LONG and takes_value(name) and not eq:
                if i >= len(argv):
                    raise Usage("--%s: missing argument" % name)
                value = argv[i]
                i += 1
            elif eq and not takes_value(name) and not negate:
                raise Usage("--%s: option does not take an argument" % name)
            apply(name, value, negate)
            continue
        if a.startswith("-") and len(a) > 1:
            j = 1
            while j < len(a):
                c = a[j]
                j += 1
                name = SHORT.get(c)
                if name is None:
                    raise Usage("-%s: unknown option" % c)
                if takes_value(name):
                    value = a[j:]
                    if not value:
                        if i >= len(argv):
                            raise Usage("-%s: missing argument" % c)
                        value = argv[i]
                        i += 1
                    apply(name, value)
                    break
                apply(name, None)
            continue
        args.append(a)
    if o.archive:
        for attr in ("recurse", "links", "perms", "times", "owner", "group", "devices", "specials"):
            if not (attr in o.explicit and getattr(o, attr) is False):
                setattr(o, attr, True)
    if o.D:
        o.devices = o.specials = True
    if o.P:
        o.partial = o.progress = True
    if o.delete_excluded or o.delete_mode:
        o.delete = True
    if o.bwlimit:
        o.bwlimit = rsync.parse_size(str(o.bwlimit), "K", "bwlimit", 512, unlimited_0=True)
    if o.compress_choice or o.compress_level is not None:
        o.compress = o.compress or (1 if (o.compress_choice or "").lower() != "none" else 0)
    if o.compress > 1 and not o.compress_choice:
        o.compress_choice = "zlibx"
    if o.itemize and not o.verbose:
        o.verbose_itemize = True
    if o.quiet:
        o.verbose = 0
    return o, args


# ----------------------------------------------------------------------------
# Output, as rsync formats it.


def human_num(n, level):
    """do_big_num: digits with commas (level 1), or K/M/G units (2: 1000, 3: 1024)."""
    if level > 1:
        mult = 1000 if level == 2 else 1024
        if abs(n) >= mult:
            d = abs(n) / mult
            for unit in "KMGTP":
                if d < mult or unit == "P":
                    break
                d /= mult
            return "%.2f%s" % (-d if n < 0 else d, unit)
    if level == 0:
        return str(n)
    return "{:,}".format(n)


def human_dnum(d, level, digits=2):
    text = "%.*f" % (digits, d)
    if not level or -1000.0 < d < 1000.0:
        return text
    whole, _, fract = text.partition(".")
    if level > 1:
        return human_num(int(d), level)
    return "{:,}".format(int(whole)) + "." + fract


def escape_name(b, eight_bit=False):
    """rsync's filtered output: unprintable bytes become \\#ooo."""
    out = []
    text = b.decode("utf-8", "surrogateescape")
    for ch in text:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:
            # A byte that is not UTF-8: with -8 it goes out as it is.
            out.append(ch if eight_bit else "\\#%03o" % (o - 0xDC00))
        elif (o < 32 and ch != "\t") or o == 127 or (not eight_bit and 0x80 <= o < 0xA0):
            for byte in ch.encode("utf-8"):
                out.append("\\#%03o" % byte)
        else:
            out.append(ch)
    return "".join(out)


def itemize_string(e, iflags, opts, sender=False):
    """The %i code of rsync's log formats: YXcstpoguax."""
    if e is None:
        return "*deleting  "
    c = [" "] * 11
    if iflags & rsync.ITEM_LOCAL_CHANGE:
        c[0] = "h" if iflags & rsync.ITEM_XNAME_FOLLOWS else "c"
    elif not iflags & rsync.ITEM_TRANSFER:
        c[0] = "."
    else:
        c[0] = "<" if sender else ">"
    if e.is_link():
        c[1] = "L"
        c[3] = "."
        c[4] = "." if not iflags & rsync.ITEM_REPORT_TIME else "t" if opts.times else "T"
    else:
        c[1] = "d" if e.is_dir() else "S" if rsync_flist._is_special(e.mode) else \
            "D" if rsync_flist._is_device(e.mode) else "f"
        c[3] = "s" if iflags & rsync.ITEM_REPORT_SIZE else "."
        c[4] = "." if not iflags & rsync.ITEM_REPORT_TIME else "t" if opts.times else "T"
    c[2] = "c" if iflags & rsync.ITEM_REPORT_CHANGE else "."
    c[5] = "p" if iflags & rsync.ITEM_REPORT_PERMS else "."
    c[6] = "o" if iflags & rsync.ITEM_REPORT_OWNER else "."
    c[7] = "g" if iflags & rsync.ITEM_REPORT_GROUP else "."
    c[8] = "u" if iflags & rsync.ITEM_REPORT_ATIME else "."
    c[9] = "a" if iflags & rsync.ITEM_REPORT_ACL else "."
    c[10] = "x" if iflags & rsync.ITEM_REPORT_XATTR else "."
    if iflags & (rsync.ITEM_IS_NEW | rsync.ITEM_MISSING_DATA):
        c[2:] = ["?" if iflags & rsync.ITEM_MISSING_DATA else "+"] * 9
    elif c[0] in ".hc" and all(x == "." for x in c[2:]):
        c[2:] = [" "] * 9
    return "".join(c)


class Output:
    """What the user sees: file lines (-v/-i), progress, errors, summary."""

    def __init__(self, opts, stdout=None, stderr=None):
        self.opts = opts
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.needs_newline = False
        self.got_xfer_error = False
        self.exit_reported = False  # the peer's "rsync error:" line came through
        self.progress_start = None
        self.xfr = 0
        self.nfiles = 0
        self.current = None
        self.sending = False

    def write(self, text, err=False):
        f = self.stderr if err else self.stdout
        try:
            if self.needs_newline:
                self.needs_newline = False
                self.write("\n")
            try:
                f.write(text)
            except UnicodeEncodeError:
                f.flush()
                f.buffer.write(text.encode("utf-8", "surrogateescape"))
            f.flush()
        except BrokenPipeError:
            # Whoever read our output has gone (| head): the transfer goes
            # on, as rsync's does, and what it would print is dropped.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, f.fileno())
            os.close(devnull)

    def info(self, text):
        if not self.opts.quiet:
            self.write(text if text.endswith("\n") else text + "\n")

    def error(self, text):
        self.write(text if text.endswith("\n") else text + "\n", err=True)

    def remote(self, tag, payload):
        """MSG_INFO/ERROR/... from the server, printed as rsync prints them."""
        text = payload.decode("utf-8", "backslashreplace")
        if tag in (rsync.MSG_ERROR, rsync.MSG_ERROR_XFER, rsync.MSG_ERROR_SOCKET, rsync.MSG_ERROR_UTF8,
                   rsync.MSG_WARNING):
            if tag == rsync.MSG_ERROR_XFER:
                self.got_xfer_error = True
            if text.startswith("rsync error:"):
                self.exit_reported = True
            self.write(text, err=True)
        elif tag in (rsync.MSG_INFO, rsync.MSG_CLIENT):
            if not self.opts.quiet:
                self.write(text)
        elif tag == rsync.MSG_LOG:
            pass

    def name_line(self, e, iflags, extra, receiver):
        opts = self.opts
        name = receiver.target(e) if receiver is not None and receiver.local_name is not None else e.name
        shown = escape_name(name, opts.eight_bit)
        if e.is_dir() and not shown.endswith("/"):
            shown += "/"
        if e.is_link() and opts.links:
            shown += " -> " + escape_name(e.link or b"", opts.eight_bit)
        elif extra is not None and iflags & rsync.ITEM_XNAME_FOLLOWS:
            shown += " => " + escape_name(extra, opts.eight_bit)
        if opts.out_format:
            return self.format_line(opts.out_format, e, iflags, shown)
        if opts.itemize:
            return "%s %s" % (itemize_string(e, iflags, opts, sender=self.sending), shown)
        return shown

    def format_line(self, fmt, e, iflags, shown):
        res = []
        i = 0
        while i < len(fmt):
            ch = fmt[i]
            if ch == "%" and i + 1 < len(fmt):
                code = fmt[i + 1]
                i += 2
                if code == "n":
                    res.append(shown.split(" -> ")[0].split(" => ")[0])
                elif code == "L":
                    rest = shown[len(shown.split(" -> ")[0].split(" => ")[0]):]
                    res.append(rest)
                elif code == "i":
                    res.append(itemize_string(e, iflags, self.opts))
                elif code == "l":
                    res.append(str(e.size if e else 0))
                elif code == "f":
                    name = shown.split(" -> ")[0].split(" => ")[0]
                    res.append(name.rstrip("/") or name)
                elif code == "o":
                    res.append("del." if e is None else "send" if self.sending else "recv")
                elif code == "t":
                    res.append(time.strftime("%Y/%m/%d %H:%M:%S"))
                elif code == "M" and e is not None:
                    res.append(time.strftime("%Y/%m/%d-%H:%M:%S", time.localtime(e.mtime)))
                elif code == "B" and e is not None:
                    res.append(stat.filemode(e.mode)[1:])
                elif code == "U" and e is not None:
                    res.append(str(e.uid))
                elif code == "G" and e is not None:
                    res.append(str(e.gid))
                elif code == "p":
                    res.append(str(os.getpid()))
                elif code == "%":
                    res.append("%")
                else:
                    res.append("%" + code)
                continue
            res.append(ch)
            i += 1
        return "".join(res)

    def event(self, receiver, kind, e, iflags, extra):
        opts = self.opts
        if kind in ("error", "warning"):
            if extra:
                self.error(extra)
            return
        if kind == "skip":
            if opts.verbose >= iflags:
                self.info(extra)
            return
        if kind == "list":
            self.info(self.list_line(e))
            return
        if kind == "delete":
            if opts.verbose or opts.itemize:
                name = escape_name(extra, opts.eight_bit)
                self.info(("*deleting   " if opts.itemize else "deleting ") + name)
            return
        if not (opts.verbose or opts.itemize or opts.out_format):
            if kind == "xfer" and opts.progress:
                self.progress_done(e)
            return
        if kind == "item":
            self.info(self.name_line(e, iflags, extra, receiver))
        elif kind == "xfer":
            if opts.progress:
                self.progress_done(e)
            else:
                self.info(self.name_line(e, iflags, extra, receiver))

    def list_line(self, e):
        """list_file_entry: mode, size, mtime and name, as `ls -l` would."""
        opts = self.opts
        return rsync_receiver.list_line(e, human_num(e.size, opts.human_readable),
                                        14 if opts.human_readable else 11,
                                        lambda b: escape_name(b, opts.eight_bit), opts.links)

    def deleted(self, payload):
        """MSG_DELETED from a receiving server: a name, NUL-ended for a directory."""
        if not (self.opts.verbose or self.opts.itemize):
            return
        name = payload[:-1] + b"/" if payload.endswith(b"\0") else payload
        self.event(None, "delete", None, 0, name)

    def progress(self, e, offset):
        if not self.opts.progress or self.opts.quiet:
            return
        now = time.monotonic()
        if self.current is not e:
            self.current = e
            self.progress_start = now
            self.last_show = 0
            if self.opts.verbose or True:
                self.write(escape_name(e.name, self.opts.eight_bit) + "\n")
        if now - self.last_show < 0.25:
            return
        self.last_show = now
        elapsed = max(now - self.progress_start, 0.001)
        rate = offset / elapsed / 1024.0
        remain = (e.size - offset) / (rate * 1024) if rate else 0
        self._progress_line(offset, e.size, rate, remain, "  ")
        self.needs_newline = True

    def _progress_line(self, ofs, size, rate, remain, eol):
        units = "kB/s"
        if rate > 1024 * 1024:
            rate /= 1024.0 * 1024.0
            units = "GB/s"
        elif rate > 1024:
            rate /= 1024.0
            units = "MB/s"
        rem = "%4u:%02u:%02u" % (remain // 3600, (remain // 60) % 60, remain % 60)
        pct = 100 if ofs == size else int(100.0 * ofs / size) if size else 100
        self.write("\r%15s %3d%% %7.2f%s %s%s" % (human_num(ofs, self.opts.human_readable),
                                                  pct, rate, units, rem, eol))

    def progress_done(self, e):
        if self.opts.quiet:
            return
        self.xfr += 1
        now = time.monotonic()
        if self.current is not e:
            self.current = e
            self.progress_start = now
            self.write(escape_name(e.name, self.opts.eight_bit) + "\n")
        elapsed = max(now - self.progress_start, 0.001)
        rate = e.size / elapsed / 1024.0
        remaining = self.nfiles - e.ndx - 1
        self.needs_newline = False
        self._progress_line(e.size, e.size, rate, elapsed,
                            " (xfr#%d, to-chk=%d/%d)\n" % (self.xfr, remaining, self.nfiles))
        self.current = None


# ----------------------------------------------------------------------------
# Where the files come from.


class Source:
    """A parsed source argument."""

    def __init__(self, kind, host=None, user=None, port=0, module=None, path="", raw=""):
        self.kind = kind  # "daemon", "shell", "local"
        self.host = host
        self.user = user
        self.port = port
        self.module = module
        self.path = path
        self.raw = raw


def parse_source(arg):
    """rsync://[USER@]HOST[:PORT]/MODULE/PATH, [USER@]HOST::MODULE/PATH,
    [USER@]HOST:PATH, or a local path."""
    if arg.startswith("rsync://"):
        rest = arg[8:]
        hostpart, slash, path = rest.partition("/")
        user, at, host = hostpart.rpartition("@")
        port = 0
        if host.startswith("["):
            h, _, p = host[1:].partition("]")
            host = h
            if p.startswith(":") and p[1:]:
                port = int(p[1:])
        elif ":" in host:
            host, _, p = host.partition(":")
            port = int(p) if p else 0
        module, _, sub = path.partition("/")
        return Source("daemon", host, user or None, port, module, sub if slash else "", arg)
    head, sep, path = arg.partition("::")
    if sep and "/" not in head:
        user, at, host = head.rpartition("@")
        module, _, sub = path.partition("/")
        return Source("daemon", host, user or None, 0, module, sub, arg)
    if ":" in arg and not arg.startswith("/") and "/" not in arg.split(":", 1)[0]:
        head, _, path = arg.partition(":")
        if head.startswith("["):
            head = head[1:].rstrip("]")
        user, at, host = head.rpartition("@")
        return Source("shell", host, user or None, 0, None, path, arg)
    return Source("local", path=arg, raw=arg)


def server_args(opts, sender_side=True):
    """server_options: the argv the remote side gets (it sends, we receive)."""
    args = ["--server"]
    if sender_side:
        args.append("--sender")
    letters = ""
    if opts.verbose:
        letters += "v" * min(opts.verbose, 4)
    if opts.update:
        letters += "u"
    if opts.dry_run:
        letters += "n"
    if opts.links:
        letters += "l"
    if opts.dirs and not opts.recurse:
        letters += "d"
    if opts.whole_file:
        letters += "W"
    if opts.hard_links:
        letters += "H"
    if opts.owner:
        letters += "o"
    if opts.group:
        letters += "g"
    if opts.devices:
        letters += "D"
    if opts.times:
        letters += "t"
    if opts.perms:
        letters += "p"
    elif opts.executability:
        letters += "E"
    if opts.recurse:
        letters += "r"
    if opts.checksum:
        letters += "c"
    if opts.cvs_exclude:
        letters += "C"
    if opts.ignore_times:
        letters += "I"
    if opts.one_file_system:
        letters += "x" * min(opts.one_file_system, 2)
    if opts.sparse:
        letters += "S"
    choice = (opts.compress_choice or "").lower()
    if opts.compress and choice in ("", "zlib"):
        letters += "z"
    if opts.protocol >= 30:
        letters += "e.LfxCIvu"
    if letters:
        args.append("-" + letters)
    if opts.devices and not opts.specials:
        args.append("--no-specials")
    elif opts.specials and not opts.devices:
        args.append("--specials")
    if opts.compress:
        if choice == "zlibx":
            args.append("--new-compress")
        elif choice == "zlib":
            args.append("--old-compress")
        elif choice:
            args.append("--compress-choice=" + choice)
        if opts.compress_level is not None:
            args.append("--compress-level=%d" % opts.compress_level)
        if sender_side and opts.skip_compress is not None:
            args.append("--skip-compress=" + opts.skip_compress)
    if opts.block_size:
        args.append("-B%d" % opts.block_size)
    if opts.timeout:
        args.append("--timeout=%d" % opts.timeout)
    if opts.checksum_choice:
        args.append("--checksum-choice=" + opts.checksum_choice)
    if opts.checksum_seed:
        args.append("--checksum-seed=%d" % opts.checksum_seed)
    if opts.numeric_ids:
        args.append("--numeric-ids")
    if opts.inplace:
        args.append("--inplace")
    if opts.ignore_errors:
        args.append("--ignore-errors")
    if opts.safe_links:
        args.append("--safe-links")
    if opts.bwlimit:
        args.append("--bwlimit=%d" % max(1, opts.bwlimit // 1024))
    if not sender_side:
        if opts.itemize:
            args.append("--log-format=%i%I" if opts.itemize > 1 else "--log-format=%i")
        elif opts.out_format:
            args.append("--log-format=%o" if "%o" in opts.out_format else
                        "--log-format=X" if not opts.verbose else "--log-format=%i")
        if opts.max_delete is not None:
            args.append("--max-delete=%d" % opts.max_delete if opts.max_delete > 0 else "--max-delete=-1")
        if opts.min_size is not None:
            args.append("--min-size=%d" % opts.min_size)
        if opts.max_size is not None:
            args.append("--max-size=%d" % opts.max_size)
        mode = opts.delete_mode
        if mode == "before":
            args.append("--delete-before")
        elif mode == "delay":
            args.append("--delete-delay")
        elif mode == "during":
            args.append("--delete-during")
        elif mode == "after":
            args.append("--delete-after")
        elif opts.delete and not opts.delete_excluded:
            args.append("--delete")
        if opts.delete_excluded:
            args.append("--delete-excluded")
        if opts.force:
            args.append("--force")
        if opts.size_only:
            args.append("--size-only")
        if opts.stats:
            args.append("--stats")
        if opts.ignore_existing:
            args.append("--ignore-existing")
        if opts.existing:
            args.append("--existing")
        if opts.partial:
            args.append("--partial")
        if opts.modify_window:
            args.append("--modify-window=%d" % opts.modify_window)
    if getattr(opts, "send_list_only", False):
        args.append("--list-only")
    return args


# ----------------------------------------------------------------------------
# Connections.


class Connection:
    """A transport to the server plus what the daemon handshake learned."""

    def __init__(self, transport, proc=None, remote_protocol=None, raw=None):
        self.transport = transport
        self.proc = proc
        self.remote_protocol = remote_protocol
        self.raw = raw

    def close(self):
        self.transport.close()
        if self.proc is not None:
            import subprocess
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def spawn_shell(opts, host, user, command):
    """Runs COMMAND on HOST through the remote shell (-e, default ssh)."""
    rsh = opts.rsh or os.environ.get("RSYNC_RSH") or "ssh"
    argv = shlex.split(rsh)
    if user:
        argv += ["-l", user]
    argv += [host] + command
    import subprocess
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    except OSError as e:
        raise rsync.RsyncError("Failed to exec %s: %s" % (argv[0], e.strerror), 14) from None
    t = rsync.PipeTransport(proc.stdout.fileno(), proc.stdin.fileno(), opts.timeout or None)
    return t, proc


def connect_prog(prog, host, opts):
    """RSYNC_CONNECT_PROG: a command (with %H for the host) whose stdin and
    stdout are a socket to us, spoken to as if it were the daemon."""
    if "%" in prog:
        if not host or host[0] in "-+~%" or any(not (c.isalnum() or c in "._:-%+~") for c in host):
            raise rsync.RsyncError("unsafe host characters for RSYNC_CONNECT_PROG", rsync.RERR_SOCKETIO)
        prog = prog.replace("%%", "\0").replace("%H", shlex.quote(host)).replace("\0", "%")
    ours, theirs = socket.socketpair()
    import subprocess
    try:
        proc = subprocess.Popen(["sh", "-c", prog], stdin=theirs, stdout=theirs)
    finally:
        theirs.close()
    return rsync.SocketTransport(ours, opts.timeout or None), proc


def connect_daemon(opts, src, out):
    """TCP to the daemon (or its remote-shell form), the greeting, module
    choice, motd, authentication. Returns (Connection, protocol) or
    (None, code) when the daemon listed modules or refused."""
    if opts.rsh and src.kind == "daemon" and "rsh_for_daemon" in opts.explicit_modes:
        t, proc = spawn_shell(opts, src.host, src.user, shlex.split(opts.rsync_path) + ["--server", "--daemon", "."])
    elif os.environ.get("RSYNC_CONNECT_PROG"):
        t, proc = connect_prog(os.environ["RSYNC_CONNECT_PROG"], src.host, opts)
    else:
        port = src.port or opts.port or 873
        try:
            infos = socket.getaddrinfo(src.host, port, opts.family or socket.AF_UNSPEC, socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise rsync.RsyncError("getaddrinfo: %s %d: %s" % (src.host, port, e.strerror),
                                   rsync.RERR_SOCKETIO) from None
        sock = None
        err = None
        for fam, typ, proto, _, addr in infos:
            s = socket.socket(fam, typ, proto)
            s.settimeout(opts.contimeout or None)
            try:
                s.connect(addr)
                sock = s
                break
            except socket.timeout:
                s.close()
                raise rsync.RsyncError("failed to connect to %s (%s): Connection timed out"
                                       % (src.host, addr[0]), rsync.RERR_CONTIMEOUT) from None
            except OSError as e:
                s.close()
                err = e
        if sock is None:
            raise rsync.RsyncError("failed to connect to %s (%s): %s (%d)" % (
                src.host, infos[0][4][0] if infos else "?", err.strerror if err else "?",
                err.errno if err else 0), rsync.RERR_SOCKETIO)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = rsync.SocketTransport(sock, opts.timeout or None)
        proc = None
    raw = rsync.RawIn(t)
    ours = min(opts.protocol or rsync.PROTOCOL_VERSION, rsync.PROTOCOL_VERSION)
    t.sendv([b"@RSYNCD: %d.0 %s\n" % (ours, " ".join(auth_digests()).encode())])
    line = raw.read_line(1024).rstrip(b"\r").decode("utf-8", "replace")
    if not line.startswith("@RSYNCD: "):
        raise rsync.RsyncError('server sent "%s" rather than greeting' % line, rsync.RERR_STARTCLIENT)
    word = line[9:].split(" ")
    ver, _, sub = word[0].partition(".")
    try:
        remote = int(ver)
        remote_sub = int(sub) if sub else 0
    except ValueError:
        raise rsync.RsyncError('server sent "%s" rather than greeting' % line, rsync.RERR_STARTCLIENT) from None
    if remote >= 30 and not sub:
        raise rsync.RsyncError("the server omitted the subprotocol value: %s" % line, rsync.RERR_STARTCLIENT)
    digests = word[1:]
    protocol = min(ours, remote)
    if ours == remote and remote_sub:
        protocol -= 1
    module = src.module or ""
    t.sendv([module.encode() + b"\n"])
    listing = not module
    while True:
        line = raw.read_line(4096).rstrip(b"\r").decode("utf-8", "replace")
        if line.startswith("@RSYNCD: AUTHREQD "):
            challenge = line[18:]
            t.sendv([auth_response(opts, src, challenge, digests, protocol).encode() + b"\n"])
            continue
        if line == "@RSYNCD: OK":
            break
        if line == "@RSYNCD: EXIT":
            return Connection(t, proc), 0
        if line.startswith("@ERROR"):
            out.error(line if line.startswith("@ERROR:") else line)
            t.close()
            return None, rsync.RERR_STARTCLIENT
        if listing or not opts.no_motd:
            out.info(line)
    return Connection(t, proc, protocol, raw), protocol


def auth_response(opts, src, challenge, digests, protocol):
    """`user base64(digest(password + challenge))` without padding, with the
    strongest digest both sides know (md4 over a zero seed below 30)."""
    user = src.user or os.environ.get("USER") or os.environ.get("LOGNAME") or "nobody"
    if opts.password_file:
        try:
            with open(opts.password_file, "rb") as f:
                password = f.readline().rstrip(b"\r\n")
        except OSError as e:
            raise rsync.RsyncError("could not open password file %s: %s" % (opts.password_file, e.strerror),
                                   rsync.RERR_SYNTAX) from None
    elif "RSYNC_PASSWORD" in os.environ:
        password = os.environ["RSYNC_PASSWORD"].encode()
    else:
        import getpass
        password = getpass.getpass("Password: ").encode()
    for name in auth_digests():
        if name in digests:
            break
    else:
        if digests:
            raise rsync.RsyncError("no daemon-auth digest in common with the server (it offers: %s)"
                                   % " ".join(digests), rsync.RERR_UNSUPPORTED)
        name = "md5" if protocol >= 30 else "md4_old"
    data = password + challenge.encode()
    if name == "md4_old":
        import rsync_md4
        h = rsync_md4.md4(b"\0\0\0\0" + data)
    elif name == "md4":
        import rsync_md4
        h = rsync_md4.md4(data)
    else:
        h = hashlib.new(name, data)
    return "%s %s" % (user, base64.b64encode(h.digest()).decode().rstrip("="))


AUTH_DIGESTS = ("sha512", "sha256", "sha1", "md5", "md4")


def auth_digests():
    """The daemon-auth digests we offer, strongest first; RSYNC_AUTH_DIGESTS
    (a space-separated subset) narrows them, e.g. to talk to old daemons."""
    env = os.environ.get("RSYNC_AUTH_DIGESTS")
    if env:
        names = [n for n in env.split() if n in AUTH_DIGESTS]
        if names:
            return names
    return list(AUTH_DIGESTS)


def send_daemon_args(conn, protocol, args):
    sep = b"\0" if protocol >= 30 else b"\n"
    conn.transport.sendv([sep.join(os.fsencode(a) for a in args) + sep + sep])


# ----------------------------------------------------------------------------
# The download.


class Pull:
    """One download from a connected server into `dest`."""

    def __init__(self, opts, out, conn, protocol, sources, dest, filters):
        self.opts = opts
        self.out = out
        self.conn = conn
        self.protocol = protocol
        self.sources = sources
        self.dest = dest
        self.filters = filters
        self.local_errors = 0
        self.remote_stats = None

    def run(self):
        opts, out = self.opts, self.out
        start = time.time()
        t = self.conn.transport
        sess = rsync.Session(t, opts, am_server=False, am_sender=False, raw=self.conn.raw,
                             on_text=out.remote)
        self.sess = sess
        if self.conn.remote_protocol is None:
            sess.exchange_versions(self.protocol)
        else:
            sess.set_protocol(self.protocol)
        sess.setup_protocol()
        sess.start_mux_in()
        if sess.protocol >= 30:
            sess.start_mux_out()
        rsync.send_filter_rules(sess, self.wire_rules(sess.protocol))
        sess.out.flush()
        if opts.verbose and not opts.quiet and (opts.recurse or opts.dirs):
            out.write("receiving file list ... ")
            out.needs_newline = True
        check = self.check_requested
        if self.filters is None and self._requested_names() is True:
            check = None  # every name may come: nothing to check per entry
        prefetch = None
        if opts.times and not (opts.checksum or opts.ignore_times or opts.hard_links or opts.dry_run
                               or opts.list_only):
            try:
                prefetch = rsync_receiver.StatPrefetch(os.open(os.fsencode(self.dest) or b".", rsync.O_DIR))
            except OSError:
                prefetch = None
        try:
            entries, unsorted, users, groups = rsync_receiver.recv_file_list(sess, check, prefetch)
        except BaseException:
            if prefetch is not None:
                prefetch.close()
            raise
        if opts.verbose and not opts.quiet and (opts.recurse or opts.dirs):
            out.needs_newline = False
            out.write("done\n")
        count_files(sess.stats, entries)
        out.nfiles = len(entries)
        if not entries:
            if prefetch is not None:
                prefetch.close()
            return self.finish(start, None)

        def created(path):
            if opts.verbose or opts.itemize or opts.out_format:
                out.info("created directory %s" % os.fsdecode(path))
        cwd = os.open(".", rsync.O_DIR)
        try:
            if opts.list_only:
                # The generator lists each entry and asks for none: the
                # destination, if one was named, is left untouched.
                destfd, local_name, cwd = cwd, None, None
            else:
                destfd, local_name = rsync_receiver.open_destination(cwd, self.dest, entries, False, created)
        except BaseException:
            if prefetch is not None:
                prefetch.close()
            raise
        finally:
            if cwd is not None:
                os.close(cwd)
        prefetched = None
        if prefetch is not None:
            if local_name is None and prefetch.matches(destfd):
                prefetched = prefetch.stats
            prefetch.close()
        receiver = rsync_receiver.Receiver(sess, entries, unsorted, destfd, local_name, self.filters,
                                  out=lambda kind, e, iflags, extra: out.event(receiver, kind, e, iflags, extra),
                                  progress=out.progress if opts.progress else None)
        receiver.map_ids(users, groups)
        receiver.prefetched = prefetched
        try:
            receiver.run(after_files=lambda: self.read_stats(sess))
        finally:
            receiver.tree.close()
            os.close(destfd)
        self.receiver = receiver
        return self.finish(start, receiver)

    def wire_rules(self, protocol):
        if self.filters is None:
            return []
        rules = self.filters.encode(client_is_sender=False, cvs_exclude=self.opts.cvs_exclude,
                                    protocol=protocol)
        if self.opts.cvs_exclude:
            self.filters.add_cvs_exclude(server=False, sender=False)
        return rules

    _requested = None

    def _requested_names(self):
        """True when a source asks for a directory's contents (any name may
        come), else the requested base names and their "name/" prefixes."""
        bases = set()
        for s in self.sources:
            path = os.fsencode(s.path)
            if not path.strip(b"/") or path.endswith(b"/") or path == b"." or path.endswith(b"/."):
                return True
            bases.add(path.rsplit(b"/", 1)[-1])
        return bases, tuple(b + b"/" for b in bases)

    def check_requested(self, e):
        """The server may only send what we asked for (CVE-2022-29154): names
        below a requested directory, or the requested file itself, and
        nothing our own filters exclude."""
        requested = self._requested
        if requested is None:
            requested = self._requested = self._requested_names()
        if requested is not True and not (e.name in requested[0] or e.name.startswith(requested[1])):
            raise rsync.ProtocolError("ERROR: rejecting unrequested file-list name: %s" % rsync._show(e.name),
                                      rsync.RERR_PROTOCOL)
        if self.filters is not None and e.name != b"." and \
                self.filters.excluded(e.name, e.is_dir(), sender_side=True):
            raise rsync.ProtocolError("ERROR: rejecting excluded file-list name: %s" % rsync._show(e.name),
                                      rsync.RERR_PROTOCOL)

    def read_stats(self, sess):
        inp = sess.inp
        written = inp.varlong30(3)
        read = inp.varlong30(3)
        total = inp.varlong30(3)
        if sess.protocol >= 29:
            sess.stats.flist_buildtime = inp.varlong30(3)
            sess.stats.flist_xfertime = inp.varlong30(3)
        self.remote_stats = (written, read, total)

    def finish(self, start, receiver):
        return summary(self.opts, self.out, self.sess, start,
                       receiver.created if receiver else {},
                       receiver.del_stats if receiver else [0] * 5,
                       receiver.io_error if receiver else 0)


def itemized(prefix, counts):
    """output_itemized_counts: "N (reg: a, dir: b, ...)" without the zeros."""
    labels = ("reg", "dir", "link", "dev", "special")
    total = counts[0]
    text = "%s: %s" % (prefix, human_num(total, 1))
    if total:
        counts = [total - sum(counts[1:])] + list(counts[1:])
        parts = ["%s: %s" % (l, human_num(c, 1)) for l, c in zip(labels, counts) if c]
        text += " (" + ", ".join(parts) + ")"
    return text


def summary(opts, out, sess, start, created, del_stats, local_io_error):
    """--stats, the closing two lines, and the exit code of the transfer."""
    st = sess.stats
    total_read = sess.raw.total
    total_written = sess.out.total
    end = time.time()
    h = opts.human_readable
    if opts.stats:
        out.info("")
        out.info(itemized("Number of files", [st.num_files, st.num_dirs, st.num_symlinks,
                                              st.num_devices, st.num_specials]))
        if sess.protocol >= 29:
            out.info(itemized("Number of created files",
                              [st.created_files, created.get("dir", 0), created.get("link", 0),
                               created.get("dev", 0), created.get("special", 0)]))
        if sess.protocol >= 31:
            d = del_stats
            out.info(itemized("Number of deleted files", [sum(d), d[1], d[2], d[3], d[4]]))
        out.info("Number of regular files transferred: %s" % human_num(st.xferred_files, 1))
        out.info("Total file size: %s bytes" % human_num(st.total_size, h))
        out.info("Total transferred file size: %s bytes" % human_num(st.total_transferred_size, h))
        out.info("Literal data: %s bytes" % human_num(st.literal_data, h))
        out.info("Matched data: %s bytes" % human_num(st.matched_data, h))
        out.info("File list size: %s" % human_num(st.flist_size, h))
        if st.flist_buildtime:
            out.info("File list generation time: %s seconds" % human_dnum(st.flist_buildtime / 1000, 1, 3))
            out.info("File list transfer time: %s seconds" % human_dnum(st.flist_xfertime / 1000, 1, 3))
        out.info("Total bytes sent: %s" % human_num(total_written, h))
        out.info("Total bytes received: %s" % human_num(total_read, h))
    if opts.verbose or opts.stats:
        out.info("")
        rate = (total_written + total_read) / (0.5 + (int(end) - int(start)))
        out.info("sent %s bytes  received %s bytes  %s bytes/sec" % (
            human_num(total_written, h), human_num(total_read, h), human_dnum(rate, h)))
        speedup = st.total_size / (total_written + total_read) if total_written + total_read else 0
        out.info("total size is %s  speedup is %s%s" % (
            human_num(st.total_size, h), human_dnum(speedup, 1), " (DRY RUN)" if opts.dry_run else ""))
    io_error = sess.remote_io_error | local_io_error | sess.io_error
    if io_error & rsync.IOERR_GENERAL or out.got_xfer_error:
        return rsync.RERR_PARTIAL
    if io_error & rsync.IOERR_VANISHED:
        return rsync.RERR_VANISHED
    if io_error & rsync.IOERR_DEL_LIMIT:
        return rsync.RERR_DEL_LIMIT
    return 0


class Push:
    """One upload: we send, the server (daemon or remote shell) receives."""

    def __init__(self, opts, out, conn, protocol, sources, filters):
        self.opts = opts
        self.out = out
        self.conn = conn
        self.protocol = protocol
        self.sources = sources
        self.filters = filters

    def run(self):
        import rsync_sender
        import rsync_filter
        opts, out = self.opts, self.out
        start = time.time()
        sess = rsync.Session(self.conn.transport, opts, am_server=False, am_sender=True,
                             raw=self.conn.raw, on_text=out.remote)
        self.sess = sess
        sess.on_deleted = out.deleted
        out.sending = not getattr(self, "local", False)
        if self.conn.remote_protocol is None:
            sess.exchange_versions(self.protocol)
        else:
            sess.set_protocol(self.protocol)
        sess.setup_protocol()
        if sess.protocol >= 30:
            sess.start_mux_out()
        sess.start_mux_in()
        if rsync_filter.filter_list_on_wire(client_is_sender=True, protocol=sess.protocol,
                                            delete_mode=bool(opts.delete),
                                            delete_excluded=opts.delete_excluded,
                                            prune_empty_dirs=False):
            rules = self.filters.encode(client_is_sender=True, cvs_exclude=opts.cvs_exclude,
                                        protocol=sess.protocol) if self.filters is not None else []
            rsync.send_filter_rules(sess, rules)
        if self.filters is not None and opts.cvs_exclude:
            self.filters.add_cvs_exclude(server=False, sender=True)
        t0 = time.monotonic()
        cwd = os.open(".", rsync.O_DIR)
        try:
            builder, entries = build_file_list(opts, out, cwd, self.sources, self.filters, sess.protocol,
                                               sess.checksums.file_checksum if opts.checksum else None)
        except BaseException:
            os.close(cwd)
            raise
        try:
            count_files(sess.stats, entries)
            sess.stats.flist_size = 0
            out.nfiles = len(entries)
            created = {}

            def event(kind, e, iflags, extra):
                if iflags & rsync.ITEM_IS_NEW and kind == "item":
                    k = rsync_receiver._kind(e)
                    created[k] = created.get(k, 0) + 1
                if kind == "item":
                    significant = iflags & ~(rsync.ITEM_BASIS_TYPE_FOLLOWS | rsync.ITEM_XNAME_FOLLOWS
                                             | rsync.ITEM_LOCAL_CHANGE)
                    local = iflags & rsync.ITEM_LOCAL_CHANGE and significant
                    if not (opts.itemize or local or extra or (e.is_dir() and significant)):
                        return
                out.event(None, kind, e, iflags, extra)
            sender = rsync_sender.Sender(sess, entries, builder.warn, out=event)
            sender.send_file_list(builder.io_error, int((time.monotonic() - t0) * 1000))
            sess.stats.total_size = sum(e.size for e in entries if e.is_reg() or e.is_link())
            if entries:
                sender.send_files()
                rsync_sender.read_final_goodbye(sess, len(entries))
        finally:
            builder.close()
            os.close(cwd)
        return summary(opts, out, sess, start, created, sess.del_stats, builder.io_error)


def count_files(st, entries):
    kinds = collections.Counter()
    total = 0
    for e in entries:
        fmt = stat.S_IFMT(e.mode)
        kinds[fmt] += 1
        if fmt == stat.S_IFREG or fmt == stat.S_IFLNK:
            total += e.size
    st.num_files = len(entries)
    st.num_dirs = kinds[stat.S_IFDIR]
    st.num_symlinks = kinds[stat.S_IFLNK]
    st.num_devices = kinds[stat.S_IFCHR] + kinds[stat.S_IFBLK]
    st.num_specials = kinds[stat.S_IFIFO] + kinds[stat.S_IFSOCK]
    st.total_size = total


def build_filters(opts, dest):
    """The client's filter rules, in command-line order."""
    if not opts.filter_rules and not opts.cvs_exclude:
        return None
    import rsync_filter

    def read_file(name):
        try:
            with open(name, "rb") as f:
                return f.read()
        except OSError:
            return None
    fl = rsync_filter.FilterList(delete_excluded=opts.delete_excluded, read_file=read_file,
                                 root=os.fsencode(os.path.abspath(dest)) if dest else b"")
    try:
        for kind, prefix, value in opts.filter_rules:
            if kind == "rule":
                if value == "-F":
                    fl.add_F()
                elif prefix == "- ":
                    fl.add_exclude(value)
                elif prefix == "+ ":
                    fl.add_include(value)
                else:
                    fl.add(value)
            else:
                try:
                    data = sys.stdin.buffer.read() if value == "-" else open(value, "rb").read()
                except OSError as e:
                    raise rsync.RsyncError("failed to open %s file %s: %s" % (
                        "exclude" if prefix == "- " else "include", value, e.strerror),
                        rsync.RERR_FILEIO) from None
                fl.add_from(data, include=prefix == "+ ", name=value)
    except rsync_filter.FilterError as e:
        raise Usage(str(e)) from None
    return fl


HELP = """gokr-rsync %s, an rsync client (protocol version %d)

Usage: gokr-rsync [OPTION]... rsync://[USER@]HOST[:PORT]/SRC [DEST]
  or   gokr-rsync [OPTION]... [USER@]HOST::SRC [DEST]
  or   gokr-rsync [OPTION]... [USER@]HOST:SRC [DEST]

Options
 -v, --verbose               increase verbosity
 -q, --quiet                 suppress non-error messages
 -c, --checksum              skip based on checksum, not mod-time & size
 -a, --archive               archive mode is -rlptgoD
 -r, --recursive             recurse into directories
 -d, --dirs                  transfer directories without recursing
 -l, --links                 copy symlinks as symlinks
 -p, --perms                 preserve permissions
 -E, --executability         preserve executability
 -t, --times                 preserve modification times
 -o, --owner                 preserve owner (super-user only)
 -g, --group                 preserve group
 -D                          same as --devices --specials
     --devices               preserve device files (super-user only)
     --specials              preserve special files
 -H, --hard-links            preserve hard links
     --numeric-ids           don't map uid/gid values by user/group name
 -n, --dry-run               perform a trial run with no changes made
 -I, --ignore-times          don't skip files that match size and time
     --size-only             skip files that match in size
 -u, --update                skip files that are newer on the receiver
 -W, --whole-file            copy files whole (w/o delta-xfer algorithm)
     --no-whole-file         always use the delta-xfer algorithm
 -x, --one-file-system       don't cross filesystem boundaries
     --delete                delete extraneous files from dest dirs
     --delete-before/-during/-delay/-after, --delete-excluded, --force
     --exclude=PATTERN       exclude files matching PATTERN
     --include=PATTERN       don't exclude files matching PATTERN
 -f, --filter=RULE           add a file-filtering RULE
 -F                          same as --filter='dir-merge /.rsync-filter'
     --exclude-from=FILE     read exclude patterns from FILE
     --include-from=FILE     read include patterns from FILE
 -C, --cvs-exclude           auto-ignore files in the same way CVS does
     --partial               keep partially transferred files
     --inplace               update destination files in-place
 -P                          same as --partial --progress
     --progress              show progress during transfer
 -i, --itemize-changes       output a change-summary for all updates
     --out-format=FORMAT     output updates using the specified FORMAT
     --stats                 give some file-transfer stats
 -z, --compress              compress file data during the transfer
     --zc, --compress-choice=STR  choose the compression (zstd lz4 zlibx zlib)
     --zl, --compress-level=NUM   explicitly set the compression level
     --skip-compress=LIST    skip compressing files with suffix in LIST
 -h, --human-readable        output numbers in a human-readable format
 -e, --rsh=COMMAND           specify the remote shell to use
     --rsync-path=PROGRAM    specify the rsync to run on the remote machine
     --port=PORT             specify double-colon alternate port number
     --timeout=SECONDS       set I/O timeout in seconds
     --contimeout=SECONDS    set daemon connection timeout in seconds
     --protocol=NUM          force an older protocol version to be used
     --checksum-choice=STR   choose the checksum algorithm (aka --cc)
 -B, --block-size=SIZE       force a fixed checksum block-size
     --password-file=FILE    read daemon-access password from FILE
 -4, --ipv4 / -6, --ipv6     prefer IPv4 / IPv6
     --version               print the version and exit
     --help                  show this help
"""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    out = None
    try:
        opts, args = parse_args(argv)
        out = Output(opts)
        if opts.help or (argv == ["-h"]):
            sys.stdout.write(HELP % (rsync.VERSION, rsync.PROTOCOL_VERSION))
            return 0
        if opts.version:
            sys.stdout.write("%s version %s  protocol version %d\n" % (PROG, rsync.VERSION, rsync.PROTOCOL_VERSION))
            return 0
        if not args:
            sys.stderr.write(HELP % (rsync.VERSION, rsync.PROTOCOL_VERSION))
            return rsync.RERR_SYNTAX
        if opts.protocol and not (rsync.MIN_PROTOCOL_VERSION <= opts.protocol <= rsync.PROTOCOL_VERSION):
            raise Usage("--protocol must be between %d and %d" % (rsync.MIN_PROTOCOL_VERSION,
                                                                 rsync.PROTOCOL_VERSION))
        code = run(opts, args, out)
        if code and not out.exit_reported:
            # log_exit: every failing run ends with the line scripts look for.
            sys.stderr.write("rsync error: %s (code %d) at %s [client=%s]\n" % (
                rsync.RERR_NAMES.get(code, "unexplained error"), code, PROG, rsync.VERSION))
        return code
    except Usage as e:
        sys.stderr.write("%s: %s\n" % (PROG, e))
        sys.stderr.write("rsync error: syntax or usage error (code 1) at %s [client=%s]\n" % (PROG, rsync.VERSION))
        return rsync.RERR_SYNTAX
    except rsync.RsyncError as e:
        if str(e):
            sys.stderr.write("%s: %s\n" % (PROG, e) if not str(e).startswith(("ERROR", "rsync")) else "%s\n" % e)
        sys.stderr.write("rsync error: %s (code %d) at %s [Receiver=%s]\n" % (
            rsync.RERR_NAMES.get(e.code, "unexplained error"), e.code, PROG, rsync.VERSION))
        return e.code
    except KeyboardInterrupt:
        sys.stderr.write("\nrsync error: received SIGINT, SIGTERM, or SIGHUP (code 20) at %s\n" % PROG)
        return rsync.RERR_SIGNAL
    except Exception:
        import traceback
        traceback.print_exc()
        sys.stderr.write("rsync error: internal error in %s %s (code %d)\n" % (PROG, rsync.VERSION,
                                                                                rsync.RERR_STREAMIO))
        return rsync.RERR_STREAMIO


def run(opts, args, out):
    srcs = [parse_source(a) for a in args]
    if len(srcs) == 1 and srcs[0].kind == "daemon" and not srcs[0].module:
        return list_modules(opts, srcs[0], out)
    if len(srcs) == 1 or opts.list_only:
        # Without a destination, or with --list-only, the sources are listed
        # and nothing is written; only an explicit --list-only is sent on.
        opts.send_list_only = bool(opts.list_only)
        opts.list_only = True
        if not opts.recurse and "dirs" not in opts.explicit:
            opts.dirs = True
        if len(srcs) == 1:
            srcs.append(Source("local", None, None, None, None))
    *sources, dest = srcs
    remote_src = [s for s in sources if s.kind != "local"]
    if remote_src and dest.kind != "local":
        raise Usage("The source and destination cannot both be remote.")
    if remote_src:
        if len(remote_src) != len(sources):
            raise Usage("all sources must be remote, or all local")
        first = sources[0]
        for s in sources[1:]:
            if s.kind != first.kind or s.host != first.host or s.module != first.module:
                raise Usage("all sources must come from the same host and module")
        return transfer(opts, out, first, sources, dest.path, pushing=False)
    if dest.kind == "local":
        if opts.list_only:
            return list_local(opts, out, sources)
        return local_copy(opts, out, sources, dest.path)
    return transfer(opts, out, dest, sources, None, pushing=True)


def transfer(opts, out, remote, sources, dest, pushing):
    """Connects to `remote` (daemon, daemon over a remote shell, or a remote
    shell running the server) and pulls `sources` into dest, or pushes them."""
    filters = build_filters(opts, dest if not pushing else None)
    opts.explicit_modes = {"rsh_for_daemon"} if opts.rsh and remote.kind == "daemon" else set()
    if pushing:
        paths = [remote.path]
    else:
        paths = [s.path for s in sources]
    if remote.kind == "daemon":
        conn, protocol = connect_daemon(opts, remote, out)
        if conn is None:
            return protocol
        opts.protocol = protocol
        args = server_args(opts, sender_side=not pushing) + ["."] + \
            ["%s/%s" % (remote.module, p) if p else remote.module for p in paths]
        send_daemon_args(conn, protocol, args)
    else:
        cmd = shlex.split(opts.rsync_path) + server_args(opts, sender_side=not pushing) + ["."] + \
            [p or "." for p in paths]
        t, proc = spawn_shell(opts, remote.host, remote.user, cmd)
        conn = Connection(t, proc)
        protocol = opts.protocol or rsync.PROTOCOL_VERSION
    if pushing:
        job = Push(opts, out, conn, protocol, sources, filters)
    else:
        job = Pull(opts, out, conn, protocol, sources, dest, filters)
    try:
        code = job.run()
    except rsync.RemoteExit as e:
        code = e.code
    except rsync.ConnectionClosed:
        out.error("rsync: connection unexpectedly closed (%d bytes received so far) [%s]"
                  % (job.sess.raw.total if hasattr(job, "sess") else 0, "sender" if pushing else "Receiver"))
        code = rsync.RERR_STREAMIO
        if conn.proc is not None:
            conn.transport.close()
            rc = conn.proc.wait()
            if rc in (124, 125, 126, 127):
                code = rc
        return code
    finally:
        conn.close()
    if conn.proc is not None and conn.proc.returncode and not code:
        code = conn.proc.returncode if conn.proc.returncode < 128 else rsync.RERR_STREAMIO
    return code


def local_copy(opts, out, sources, dest):
    """A local copy runs both roles in this process: we send, and a server
    thread receives, over a socket pair, as rsync forks a local server."""
    import threading
    a, b = socket.socketpair()
    argv = server_args(opts, sender_side=False) + [".", dest]
    result = {}

    def serve():
        t = rsync.SocketTransport(b)
        try:
            result["code"] = rsync.run_server(t, argv, ".", confined=False)
        finally:
            t.close()
    th = threading.Thread(target=serve, name="local-receiver", daemon=True)
    th.start()
    conn = Connection(rsync.SocketTransport(a))
    filters = build_filters(opts, None)
    job = Push(opts, out, conn, opts.protocol or rsync.PROTOCOL_VERSION, sources, filters)
    job.local = True
    try:
        code = job.run()
    except rsync.RemoteExit as e:
        code = e.code
    finally:
        conn.close()
        th.join(30)
    return max(code, result.get("code", 0))


def build_file_list(opts, out, cwd, sources, filters, protocol, file_checksum):
    """The sender's file list of local SOURCES (below directory fd CWD), with
    the -v 'building file list ... done' around it; messages go to `out`.
    Returns (builder, entries); the caller closes the builder."""
    import rsync_sender

    def warn(tag, text):
        if tag == rsync.MSG_INFO:
            if opts.verbose:
                out.info(text)
        else:
            if tag == rsync.MSG_ERROR_XFER:
                out.got_xfer_error = True
            out.error(text)
    if opts.verbose and not opts.quiet:
        out.write("building file list ... ")
        out.needs_newline = True
    builder = rsync_sender.FileListBuilder(opts, protocol, cwd, False, filters, warn, file_checksum)
    try:
        for s in sources:
            builder.add_arg(s.path)
        entries = builder.finish()
    except BaseException:
        builder.close()
        raise
    if opts.verbose and not opts.quiet:
        out.needs_newline = False
        out.write("done\n")
    return builder, entries


def list_local(opts, out, sources):
    """--list-only of local sources: the file list a sender would send,
    printed in its sorted order; nothing is written."""
    cwd = os.open(".", rsync.O_DIR)
    try:
        builder, entries = build_file_list(opts, out, cwd, sources, build_filters(opts, None),
                                           rsync.PROTOCOL_VERSION, None)
        builder.close()
    finally:
        os.close(cwd)
    rsync_flist.sort_file_list(entries, rsync.PROTOCOL_VERSION)
    for e in entries:
        out.event(None, "list", e, 0, None)
    if opts.verbose:
        # Nothing went over a connection.
        total = sum(e.size for e in entries if e.is_reg() or e.is_link())
        out.info("\nsent 0 bytes  received 0 bytes  0.00 bytes/sec")
        out.info("total size is %s  speedup is 0.00" % human_num(total, opts.human_readable))
    return rsync.RERR_PARTIAL if builder.io_error else 0


def list_modules(opts, src, out):
    conn, code = connect_daemon(opts, src, out)
    if conn is not None:
        conn.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
