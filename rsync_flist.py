"""The file list (flist.c): the entries both ends keep, their order
(f_name_cmp), and their wire form.

send_file_entry writes each entry against the previous one, leaving out
what repeats (the XMIT_SAME_* flags) and the name's shared prefix;
recv_file_entry undoes that. The receiving side parses entries out of the
bytes its input has at hand, so that one decoder serves a stream and a
test's bytes alike, and checks every field against the protocol's limits:
names with ".." or a leading "/", sizes, modes and lengths out of range are
refused with a ProtocolError, never trusted.

The common entries (from protocol 30: regular files, directories and
symlinks, without hard links or names of users and groups) are encoded and
decoded in C when the optional library built from contrib/ sits next to
rsync_delta.py (see contrib/rsync_flist.c); the Python here does the rest,
and everything when the library is missing, with the same bytes and
entries."""

import ctypes
import os
import stat
import struct

from rsync import (
    MAX_PATH,
    ProtocolError,
    RERR_MALLOC,
    RERR_PROTOCOL,
    RERR_UNSUPPORTED,
    XMIT_EXTENDED_FLAGS,
    XMIT_GROUP_NAME_FOLLOWS,
    XMIT_HLINKED,
    XMIT_HLINK_FIRST,
    XMIT_IO_ERROR_ENDLIST,
    XMIT_LONG_NAME,
    XMIT_MOD_NSEC,
    XMIT_NO_CONTENT_DIR,
    XMIT_RDEV_MINOR_8_pre30,
    XMIT_SAME_DEV_pre30,
    XMIT_SAME_GID,
    XMIT_SAME_MODE,
    XMIT_SAME_NAME,
    XMIT_SAME_RDEV_MAJOR,
    XMIT_SAME_RDEV_pre28,
    XMIT_SAME_TIME,
    XMIT_SAME_UID,
    XMIT_TOP_DIR,
    XMIT_USER_NAME_FOLLOWS,
    enc_longint,
    enc_varint,
    enc_varlong,
    _I32,
    _I64,
    _INT_BYTE_EXTRA,
    _U32,
    _group_name,
    _show,
    _user_name,
)

FLAG_TOP_DIR = 1 << 0
FLAG_CONTENT_DIR = 1 << 2
FLAG_IMPLIED_DIR = 1 << 9
FLAG_MOUNT_DIR = 1 << 5
FLAG_HLINK_FIRST = 1 << 12
FLAG_HLINKED = 1 << 13
FLAG_DUPLICATE = 1 << 4
FLAG_DIR_CREATED = 1 << 20


def _is_device(mode):
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def _is_special(mode):
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class FileEntry:
    """One file-list entry. `name` is the wire name (relative, bytes);
    `src` (sender only) is its path below the sending root."""

    __slots__ = ("name", "mode", "size", "mtime", "nsec", "uid", "gid", "user", "group",
                 "rdev_major", "rdev_minor", "link", "flags", "hl_first", "hl_dev", "hl_ino",
                 "sum", "src", "ndx", "sent")

    def __init__(self, name, mode=0, size=0, mtime=0, nsec=0, uid=0, gid=0):
        self.name = name
        self.mode = mode
        self.size = size
        self.mtime = mtime
        self.nsec = nsec
        self.uid = uid
        self.gid = gid
        self.user = None
        self.group = None
        self.rdev_major = 0
        self.rdev_minor = 0
        self.link = None
        self.flags = 0
        self.hl_first = -1
        self.hl_dev = -1
        self.hl_ino = 0
        self.sum = None
        self.src = None
        self.ndx = -1
        self.sent = False

    def is_dir(self):
        return stat.S_ISDIR(self.mode)

    def is_reg(self):
        return stat.S_ISREG(self.mode)

    def is_link(self):
        return stat.S_ISLNK(self.mode)

    def __repr__(self):
        return "FileEntry(%r, mode=%o, size=%d)" % (self.name, self.mode, self.size)


def sort_key(name, is_dir, protocol):
    """A key that orders entries as f_name_cmp does.

    From protocol 29, at every level the non-directories of a directory sort
    before its subdirectories, a directory compares as its name plus "/", and
    a directory comes right before its contents; "." comes first of all.
    Earlier protocols compare the plain path bytes."""
    if protocol < 29:
        return name
    if name == b".":
        return b"\0"
    if b"/" not in name:
        return b"\1" + name + b"/\0" if is_dir else b"\0" + name
    parts = name.split(b"/")
    key = [b"\1" + p + b"/" for p in parts[:-1]]
    if is_dir:
        key.append(b"\1" + parts[-1] + b"/\0")
    else:
        key.append(b"\0" + parts[-1])
    return b"".join(key)


def sort_file_list(entries, protocol):
    """Sorts in place as both sides of rsync do before using indexes: by
    sort_key, with each directory's part of the key made once."""
    if protocol < 29:
        entries.sort(key=lambda e: e.name)
    else:
        prefixes = {b"": b""}

        def key(e):
            name = e.name
            if name == b".":
                return b"\0"
            parent, _, leaf = name.rpartition(b"/")
            pre = prefixes.get(parent)
            if pre is None:
                pre = prefixes[parent] = b"".join([b"\1" + p + b"/" for p in parent.split(b"/")])
            return pre + (b"\1" + leaf + b"/\0" if e.mode & 0o170000 == stat.S_IFDIR else b"\0" + leaf)
        entries.sort(key=key)
    for i, e in enumerate(entries):
        e.ndx = i


class _FlistState:
    """What both ends of the file list remember of the previous entry (the
    static variables of send_file_entry and recv_file_entry), against which
    the XMIT_SAME_* flags say a field repeats."""

    def __init__(self, opts, protocol, xfer_flags_as_varint, csum_len):
        self.opts = opts
        self.protocol = protocol
        self.varint_flags = xfer_flags_as_varint
        self.csum_len = csum_len
        self.modtime = 0
        self.mode = 0
        self.rdev_major = 0
        self.rdev = (0, 0)
        self.uid = 0
        self.gid = 0
        self.dev = -1
        self.lastname = b""


def _wire_id(ident):
    """A uid or gid as rsync sends it: as a signed 32-bit int, so the ids
    from 2**31 up (user namespaces, nobody on some systems) go negative."""
    return ident - (1 << 32) if ident >= 1 << 31 else ident


def _common_prefix(a, b, limit):
    """The length of the longest common prefix of a and b, at most limit."""
    n = min(len(a), len(b), limit)
    x = int.from_bytes(a[:n], "big") ^ int.from_bytes(b[:n], "big")
    return n - 1 - (x.bit_length() - 1) // 8 if x else n


class FlistEncoder(_FlistState):
    """send_file_entry: writes entries with the SAME_* compression state."""

    FLUSH_AT = 1 << 16

    def __init__(self, out, opts, protocol, xfer_flags_as_varint, csum_len):
        super().__init__(opts, protocol, xfer_flags_as_varint, csum_len)
        self.out = out
        self.users = {}
        self.groups = {}
        self.hlinks = {}
        self.total_size = 0
        self.buf = bytearray()
        self.c_encoder = _CEncoder(self) if _fl_encode is not None and protocol >= 30 else None

    def flush(self):
        """Hands the entries encoded so far to the output (end() does)."""
        if self.buf:
            self.out.write(self.buf)
            self.buf = bytearray()

    def send_all(self, entries):
        """send() of every entry in turn, runs of common ones in C."""
        c = self.c_encoder
        ndx, n = 0, len(entries)
        while ndx < n:
            if c is not None:
                done = c.encode(self, entries, ndx)
                if done:
                    ndx += done
                    if len(self.buf) >= self.FLUSH_AT:
                        self.flush()
                    continue
            self.send(entries[ndx], ndx)
            ndx += 1

    def send(self, e, ndx):
        """One entry, into the encoder's buffer."""
        p, opts = self.protocol, self.opts
        mode = e.mode
        xflags = 0
        if stat.S_ISDIR(mode):
            if p >= 30:
                if e.flags & FLAG_CONTENT_DIR:
                    xflags = e.flags & FLAG_TOP_DIR
                elif e.flags & FLAG_IMPLIED_DIR:
                    xflags = XMIT_TOP_DIR | XMIT_NO_CONTENT_DIR
                else:
                    xflags = XMIT_NO_CONTENT_DIR
            else:
                xflags = e.flags & FLAG_TOP_DIR
        if mode == self.mode:
            xflags |= XMIT_SAME_MODE
        else:
            self.mode = mode
        rdev = None
        if opts.devices and _is_device(mode):
            rdev = (e.rdev_major, e.rdev_minor)
            if p < 28:
                if rdev == self.rdev:
                    xflags |= XMIT_SAME_RDEV_pre28
                else:
                    self.rdev = rdev
            else:
                self.rdev = rdev
                if e.rdev_major == self.rdev_major:
                    xflags |= XMIT_SAME_RDEV_MAJOR
                else:
                    self.rdev_major = e.rdev_major
                if p < 30 and e.rdev_minor <= 0xFF:
                    xflags |= XMIT_RDEV_MINOR_8_pre30
        elif opts.specials and _is_special(mode) and p < 31:
            if p < 28:
                xflags |= XMIT_SAME_RDEV_pre28
            else:
                rdev = (self.rdev_major, 0)
                self.rdev = rdev
                xflags |= XMIT_SAME_RDEV_MAJOR
                if p < 30:
                    xflags |= XMIT_RDEV_MINOR_8_pre30
        elif p < 28:
            self.rdev = (0, 0)
        first = bool(self.lastname)
        names = not opts.numeric_ids and not getattr(opts, "daemon_numeric_ids", False)
        if not opts.owner or (e.uid == self.uid and first):
            xflags |= XMIT_SAME_UID
        else:
            self.uid = e.uid
            if names and e.uid not in self.users:
                self.users[e.uid] = e.user
        if not opts.group or (e.gid == self.gid and first):
            xflags |= XMIT_SAME_GID
        else:
            self.gid = e.gid
            if names and e.gid not in self.groups:
                self.groups[e.gid] = e.group
        if e.mtime == self.modtime:
            xflags |= XMIT_SAME_TIME
        else:
            self.modtime = e.mtime
        if e.nsec and p >= 31:
            xflags |= XMIT_MOD_NSEC
        first_hlink = -1
        if e.hl_dev != -1:
            if p >= 30:
                key = (e.hl_dev, e.hl_ino)
                first_hlink = self.hlinks.get(key, -1)
                if first_hlink < 0:
                    self.hlinks[key] = ndx
                    xflags |= XMIT_HLINK_FIRST
            else:
                if e.hl_dev == self.dev:
                    if p >= 28:
                        xflags |= XMIT_SAME_DEV_pre30
                else:
                    self.dev = e.hl_dev
            xflags |= XMIT_HLINKED
        name = e.name
        l1 = _common_prefix(name, self.lastname, 255)
        l2 = len(name) - l1
        if l1:
            xflags |= XMIT_SAME_NAME
        if l2 > 255:
            xflags |= XMIT_LONG_NAME
        buf = self.buf
        if self.varint_flags:
            buf += enc_varint(xflags or XMIT_EXTENDED_FLAGS)
        elif p >= 28:
            if not xflags and not stat.S_ISDIR(mode):
                xflags |= XMIT_TOP_DIR
            if (xflags & 0xFF00) or not xflags:
                xflags |= XMIT_EXTENDED_FLAGS
                buf += struct.pack("<H", xflags & 0xFFFF)
            else:
                buf.append(xflags)
        else:
            if not (xflags & 0xFF):
                xflags |= XMIT_LONG_NAME if stat.S_ISDIR(mode) else XMIT_TOP_DIR
            buf.append(xflags & 0xFF)
        if xflags & XMIT_SAME_NAME:
            buf.append(l1)
        if xflags & XMIT_LONG_NAME:
            buf += enc_varint(l2) if p >= 30 else struct.pack("<i", l2)
        else:
            buf.append(l2)
        buf += name[l1:]
        self.lastname = name
        if first_hlink >= 0:
            buf += enc_varint(first_hlink)
            if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
                self.total_size += e.size
            if len(buf) >= self.FLUSH_AT:
                self.flush()
            return
        buf += enc_varlong(e.size, 3) if p >= 30 else enc_longint(e.size)
        if not xflags & XMIT_SAME_TIME:
            buf += enc_varlong(e.mtime, 4) if p >= 30 else struct.pack("<I", e.mtime & 0xFFFFFFFF)
        if xflags & XMIT_MOD_NSEC:
            buf += enc_varint(e.nsec)
        if not xflags & XMIT_SAME_MODE:
            buf += struct.pack("<I", mode & 0xFFFFFFFF)
        if opts.owner and not xflags & XMIT_SAME_UID:
            buf += enc_varint(_wire_id(e.uid)) if p >= 30 else struct.pack("<i", _wire_id(e.uid))
        if opts.group and not xflags & XMIT_SAME_GID:
            buf += enc_varint(_wire_id(e.gid)) if p >= 30 else struct.pack("<i", _wire_id(e.gid))
        if rdev is not None:
            if p < 28:
                if not xflags & XMIT_SAME_RDEV_pre28:
                    buf += struct.pack("<I", os.makedev(*rdev) & 0xFFFFFFFF)
            else:
                if not xflags & XMIT_SAME_RDEV_MAJOR:
                    buf += enc_varint(rdev[0]) if p >= 30 else struct.pack("<i", rdev[0])
                if p >= 30:
                    buf += enc_varint(rdev[1])
                elif xflags & XMIT_RDEV_MINOR_8_pre30:
                    buf.append(rdev[1])
                else:
                    buf += struct.pack("<i", rdev[1])
        if opts.links and stat.S_ISLNK(mode):
            target = e.link or b""
            buf += enc_varint(len(target)) if p >= 30 else struct.pack("<i", len(target))
            buf += target
        if e.hl_dev != -1 and p < 30:
            if not xflags & XMIT_SAME_DEV_pre30:
                buf += enc_longint(e.hl_dev + 1)
            buf += enc_longint(e.hl_ino)
        if opts.checksum and (stat.S_ISREG(mode) or p < 28):
            buf += (e.sum if stat.S_ISREG(mode) and e.sum else b"\0" * self.csum_len)
        if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
            self.total_size += e.size
        if len(buf) >= self.FLUSH_AT:
            self.flush()

    def end(self, io_error, safe_flist):
        """write_end_of_flist, then the id lists and (below 30) the io_error."""
        self.flush()
        o = self.out
        if self.varint_flags:
            o.varint(0)
            o.varint(io_error)
        elif io_error and safe_flist:
            o.shortint(XMIT_EXTENDED_FLAGS | XMIT_IO_ERROR_ENDLIST)
            o.varint(io_error)
        else:
            o.byte(0)

    def send_id_lists(self, id0_names):
        """send_id_lists: (id, name) pairs for each id first seen, 0 ends."""
        o, opts = self.out, self.opts
        for wanted, ids, lookup in ((opts.owner, self.users, _user_name),
                                    (opts.group, self.groups, _group_name)):
            if not wanted:
                continue
            for i, name in ids.items():
                if i and name:
                    o.varint30(_wire_id(i))
                    o.byte(len(name))
                    o.write(name)
            o.varint30(0)
            if id0_names:
                name = (lookup(0) or b"") if not getattr(opts, "daemon_numeric_ids", False) else b""
                o.byte(len(name))
                o.write(name)


MAX_WIRE_NSEC = 999999999
_WIRE_TYPES = frozenset((stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK,
                         stat.S_IFIFO, stat.S_IFSOCK))


def check_name(name, relative=False):
    """clean_fname with CFN_REFUSE_DOT_DOT_DIRS, as a receiver checks every
    name it is sent: no `..` component, no absolute name, no NUL."""
    if b"\0" in name:
        raise ProtocolError("file name contains a NUL byte: %r" % name, RERR_PROTOCOL)
    if name[:1] == b"/" and not relative:
        raise ProtocolError("ABORTING due to unsafe pathname from sender: %s" % _show(name),
                            RERR_UNSUPPORTED)
    if b".." not in name:
        return
    for part in name.split(b"/"):
        if part == b"..":
            raise ProtocolError("ABORTING due to invalid path from sender: %s" % _show(name),
                                RERR_UNSUPPORTED)



class _Short(Exception):
    """The bytes at hand end inside the item being parsed."""


_SHORT = (_Short, IndexError, struct.error)


def varint_at(data, pos):
    """read_varint over data[pos:]: (value, position after it)."""
    ch = data[pos]
    extra = _INT_BYTE_EXTRA[ch >> 2]
    if not extra:
        return ch, pos + 1
    if extra >= 5:
        raise ProtocolError("Overflow in read_varint()")
    end = pos + 1 + extra
    if end > len(data):
        raise _Short
    v = int.from_bytes(data[pos + 1:end], "little")
    if extra < 4:
        return v | (ch & ((1 << (8 - extra)) - 1)) << (8 * extra), end
    return (v - (1 << 32) if v >> 31 else v), end


def varlong_at(data, pos, min_bytes):
    """read_varlong over data[pos:]: (value, position after it)."""
    end = pos + min_bytes
    if end > len(data):
        raise _Short
    first = data[pos]
    extra = _INT_BYTE_EXTRA[first >> 2]
    if min_bytes + extra > 9:
        raise ProtocolError("Overflow in read_varlong()")
    if extra:
        stop = end + extra
        if stop > len(data):
            raise _Short
        low = min_bytes - 1 + extra
        v = int.from_bytes(data[pos + 1:stop], "little")
        if low < 8:
            v |= (first & ((1 << (8 - extra)) - 1)) << (8 * low)
        end = stop
    else:
        v = int.from_bytes(data[pos + 1:end], "little") | first << (8 * (min_bytes - 1))
    return (v - (1 << 64) if v >> 63 else v), end


def longint_at(data, pos):
    """read_longint: int32, or -1 followed by an int64."""
    v = _I32.unpack_from(data, pos)[0]
    if v != -1:
        return v, pos + 4
    return _I64.unpack_from(data, pos + 4)[0], pos + 12




def _bytes_at(data, pos, n):
    end = pos + n
    if end > len(data):
        raise _Short
    return data[pos:end], end


class _CParams(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int32) for name in
                ("protocol", "varint_flags", "owner", "group", "links", "checksum", "relative", "csum_len")]


class _CState(ctypes.Structure):
    _fields_ = [("modtime", ctypes.c_int64), ("mode", ctypes.c_uint32), ("uid", ctypes.c_uint32),
                ("gid", ctypes.c_uint32), ("lastname_len", ctypes.c_int32),
                ("lastname", ctypes.c_char * MAX_PATH)]


_CRECORD = struct.Struct("<qq10I")
_CENTRY = struct.Struct("<qq11I4x")
_C_HAS_SUM = 1 << 31
_CSTAT = struct.Struct("<qqIIIi")
_C_ABI_VERSION = 3
_C_TYPES = frozenset((stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK))


def _c_flist():
    """(fl_decode, fl_encode, fl_lstat) of the C library, declared, or
    Nones."""
    none = None, None, None
    try:
        import rsync_delta
    except ImportError:
        return none
    lib = rsync_delta._lib
    try:
        if lib is None or lib.fl_abi_version() != _C_ABI_VERSION:
            return none
        for fn in (lib.fl_record_size, lib.fl_entry_size, lib.fl_stat_size, lib.fl_state_size):
            fn.restype = ctypes.c_size_t
        if (lib.fl_record_size(), lib.fl_entry_size(), lib.fl_stat_size(), lib.fl_state_size()) != \
                (_CRECORD.size, _CENTRY.size, _CSTAT.size, ctypes.sizeof(_CState)):
            return none
    except AttributeError:
        return none
    vp, i64p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64)
    params, state = ctypes.POINTER(_CParams), ctypes.POINTER(_CState)
    lib.fl_decode.restype = lib.fl_encode.restype = ctypes.c_int32
    lib.fl_decode.argtypes = [ctypes.c_char_p, ctypes.c_int64, i64p, params, state, vp, ctypes.c_int32, vp,
                              ctypes.c_int64, i64p]
    lib.fl_encode.argtypes = [params, state, vp, ctypes.c_int32, ctypes.c_char_p, vp, ctypes.c_int64, i64p]
    lib.fl_lstat.restype = None
    lib.fl_lstat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int32, vp]
    return lib.fl_decode, lib.fl_encode, lib.fl_lstat


_fl_decode, _fl_encode, _fl_lstat = _c_flist()


class CLstat:
    """lstat of runs of names in one directory in one call of the C
    library (fl_lstat): for each, (st_mode, st_size, st_mtime_ns, st_uid,
    st_gid) or the errno."""

    MAX = 4096

    def __init__(self):
        self.out = ctypes.create_string_buffer(self.MAX * _CSTAT.size)

    def __call__(self, dirfd, leaves):
        """[(errno, (mode, size, mtime_ns, uid, gid))] for leaves (at most MAX)."""
        n = len(leaves)
        _fl_lstat(dirfd, b"\0".join(leaves) + b"\0", n, self.out)
        return [(err, (mode, size, mtime_ns, uid, gid)) for size, mtime_ns, mode, uid, gid, err
                in _CSTAT.iter_unpack(ctypes.string_at(self.out, n * _CSTAT.size))]


def _c_params(side):
    opts = side.opts
    return _CParams(side.protocol, bool(side.varint_flags), bool(opts.owner), bool(opts.group),
                    bool(opts.links), bool(opts.checksum), bool(opts.relative), side.csum_len)


def _c_state_in(st, side):
    st.modtime, st.mode, st.uid, st.gid = side.modtime, side.mode, side.uid, side.gid
    st.lastname_len = len(side.lastname)
    st.lastname = side.lastname


def _c_state_out(st, side):
    side.lastname = st.lastname[:st.lastname_len]
    side.modtime, side.mode, side.uid, side.gid = st.modtime, st.mode, st.uid, st.gid


class _CEncoder:
    """The C encoder's buffers and state for one FlistEncoder."""

    ENTRIES = 1024
    STRINGS = 1 << 18

    def __init__(self, enc):
        self.params = _c_params(enc)
        self.state = _CState()
        self.records = bytearray(self.ENTRIES * _CENTRY.size)
        self.records_c = (ctypes.c_char * len(self.records)).from_buffer(self.records)
        self.out_len = ctypes.c_int64()
        self.out = None

    def encode(self, enc, entries, start):
        """Encodes entries[start:] into enc.buf for as long as they are
        common ones (at most ENTRIES at a time): how many."""
        opts = enc.opts
        csum_len = enc.csum_len
        sums = opts.checksum
        names = (opts.owner or opts.group) and not opts.numeric_ids and \
            not getattr(opts, "daemon_numeric_ids", False)
        users, groups = enc.users, enc.groups
        records, pack = self.records, _CENTRY.pack_into
        parts = []
        off = total = count = 0
        stop = min(len(entries), start + self.ENTRIES)
        for k in range(start, stop):
            e = entries[k]
            mode = e.mode
            fmt = mode & 0o170000
            if fmt not in _C_TYPES or e.hl_dev != -1 or off > self.STRINGS:
                break
            name = e.name
            link = (e.link or b"") if fmt == stat.S_IFLNK else b""
            csum = e.sum if sums and fmt == stat.S_IFREG and e.sum else b""
            n, ln = len(name), len(link)
            if (csum and len(csum) != csum_len) or n >= MAX_PATH or ln >= MAX_PATH:
                break
            pack(records, count * _CENTRY.size, e.size, e.mtime, mode, e.nsec, e.uid, e.gid, e.flags,
                 off, n, off + n, ln, off + n + ln, len(csum))
            parts += (name, link, csum)
            off += n + ln + len(csum)
            if fmt != stat.S_IFDIR:
                total += e.size
            if names:
                if opts.owner and e.uid not in users:
                    users[e.uid] = e.user
                if opts.group and e.gid not in groups:
                    groups[e.gid] = e.group
            count += 1
        if not count:
            return 0
        cap = off + count * (64 + csum_len) + 3 * MAX_PATH + 64 + csum_len
        if self.out is None or len(self.out) < cap:
            self.out = ctypes.create_string_buffer(max(cap, 1 << 17))
        st = self.state
        _c_state_in(st, enc)
        self.out_len.value = 0
        done = _fl_encode(self.params, st, self.records_c, count, b"".join(parts), self.out, len(self.out),
                          self.out_len)
        if done != count:
            raise RuntimeError("the C file-list encoder took %d of %d entries" % (done, count))
        _c_state_out(st, enc)
        enc.buf += ctypes.string_at(self.out, self.out_len.value)
        enc.total_size += total
        return count


class _CDecoder:
    """The C decoder's buffers and state for one FlistDecoder."""

    RECORDS = 4096
    STRINGS = 1 << 20

    def __init__(self, dec):
        self.params = _c_params(dec)
        self.state = _CState()
        self.records = ctypes.create_string_buffer(self.RECORDS * _CRECORD.size)
        self.strings = ctypes.create_string_buffer(self.STRINGS)
        self.pos = ctypes.c_int64()
        self.used = ctypes.c_int64()
        # Entries the C decoder could not take in a row: after the n-th,
        # Python parses 2**n - 1 more (at most 63) before C tries again.
        self.misses = 0
        self.idle = 0

    def decode(self, dec, data, pos, check):
        """Entries from data[pos:] as far as the C decoder takes them,
        appended to dec.entries (each shown to `check`): the position
        after them."""
        room = min(self.RECORDS, dec.MAX_ENTRIES - len(dec.entries))
        if room <= 0:
            return pos
        st = self.state
        _c_state_in(st, dec)
        self.pos.value = pos
        self.used.value = 0
        n = _fl_decode(data, len(data), self.pos, self.params, st, self.records, room, self.strings,
                       self.STRINGS, self.used)
        if not n:
            return pos
        strings = ctypes.string_at(self.strings, self.used.value)
        csum_len = dec.csum_len
        entries = dec.entries
        append = entries.append
        for size, mtime, mode, nsec, uid, gid, name_at, name_len, link_at, link_len, sum_at, flags \
                in _CRECORD.iter_unpack(ctypes.string_at(self.records, n * _CRECORD.size)):
            e = FileEntry(strings[name_at:name_at + name_len], mode, size, mtime, nsec, uid, gid)
            if link_len:
                e.link = strings[link_at:link_at + link_len]
            if flags & _C_HAS_SUM:
                e.sum = strings[sum_at:sum_at + csum_len]
                flags &= ~_C_HAS_SUM
            e.flags = flags
            append(e)
            if check is not None:
                check(e)
        _c_state_out(st, dec)
        return self.pos.value


class FlistDecoder(_FlistState):
    """recv_file_entry: reads entries, undoing the SAME_* compression and
    checking every field against the protocol's limits.

    Entries are parsed straight out of the bytes the input has buffered
    (`In.peek`); one that runs past them is parsed again once more bytes
    are there, so parsing never waits in the middle of an entry and a
    parse that comes up short changes nothing."""

    MAX_ENTRIES = 50_000_000
    MAX_ENTRY_BYTES = 3 * MAX_PATH

    def __init__(self, inp, opts, protocol, xfer_flags_as_varint, csum_len, id0_names=False):
        super().__init__(opts, protocol, xfer_flags_as_varint, csum_len)
        self.inp = inp
        self.id0_names = id0_names
        self.entries = []
        self.io_error = 0
        self.ended = False
        self.c_decoder = _CDecoder(self) if _fl_decode is not None and protocol >= 30 else None

    def recv_entries(self, check=None, between=None):
        """Every entry up to the end of the list; `check(entry)` sees each,
        and `between(entries)` is called each time the bytes at hand are
        used up, before waiting for more."""
        inp, parse, batch = self.inp, self.parse, self.c_decoder
        while not self.ended:
            if between is not None:
                between(self.entries)
            data = inp.peek()
            pos = 0
            while True:
                if batch is not None:
                    if batch.idle:
                        batch.idle -= 1
                    else:
                        start = pos
                        pos = batch.decode(self, data, pos, check)
                        if pos == start:
                            batch.idle = (1 << min(batch.misses, 6)) - 1
                            batch.misses += 1
                        else:
                            batch.misses = 0
                try:
                    e, pos_after = parse(data, pos)
                except _SHORT:
                    inp.skip(pos)
                    e = self._recv_spanning()
                    if e is not None and check is not None:
                        check(e)
                    if batch is not None:
                        batch.idle = batch.misses = 0
                    break
                pos = pos_after
                if e is None:
                    inp.skip(pos)
                    break
                if check is not None:
                    check(e)
        return self.entries

    def recv_entry(self):
        """The next entry, or None at the end of the list."""
        return None if self.ended else self._recv_spanning()

    def _recv_spanning(self):
        """One entry whose bytes may arrive in several pieces."""
        inp = self.inp
        have = b""
        while True:
            more = inp.peek()
            data = have + more
            try:
                e, pos = self.parse(data, 0)
            except _SHORT:
                inp.skip(len(more))
                have = data
                if len(have) > self.MAX_ENTRY_BYTES:
                    raise ProtocolError("file-list entry longer than %d bytes" % self.MAX_ENTRY_BYTES)
                continue
            inp.skip(pos - len(have))
            return e

    def parse(self, data, pos):
        """One entry from data[pos:]: (entry, position after it), or (None,
        position) at the end of the list. Raises _Short, IndexError or
        struct.error (and changes nothing) when data ends first."""
        p, opts = self.protocol, self.opts
        if self.varint_flags:
            xflags = data[pos]
            if xflags < 0x80:
                pos += 1
            else:
                xflags, pos = varint_at(data, pos)
            if xflags == 0:
                self.io_error, pos = varint_at(data, pos)
                self.ended = True
                return None, pos
        else:
            xflags = data[pos]
            pos += 1
            if xflags == 0:
                self.ended = True
                return None, pos
            if p >= 28 and xflags & XMIT_EXTENDED_FLAGS:
                xflags |= data[pos] << 8
                pos += 1
                if xflags == XMIT_EXTENDED_FLAGS | XMIT_IO_ERROR_ENDLIST:
                    self.io_error, pos = varint_at(data, pos)
                    self.ended = True
                    return None, pos
        if xflags & XMIT_SAME_NAME:
            l1 = data[pos]
            pos += 1
        else:
            l1 = 0
        if not xflags & XMIT_LONG_NAME:
            l2 = data[pos]
            pos += 1
        elif p >= 30:
            l2, pos = varint_at(data, pos)
        else:
            l2 = _I32.unpack_from(data, pos)[0]
            pos += 4
        lastname = self.lastname
        if l1 > len(lastname) or l2 < 0 or l1 + l2 >= MAX_PATH:
            raise ProtocolError("overflow: xflags=0x%x l1=%d l2=%d" % (xflags, l1, l2))
        end = pos + l2
        if end > len(data):
            raise _Short
        name = lastname[:l1] + data[pos:end] if l1 else data[pos:end]
        pos = end
        if not name:
            raise ProtocolError("empty file name in file list")
        check_name(name, opts.relative)
        if len(self.entries) >= self.MAX_ENTRIES:
            raise ProtocolError("file list too large", RERR_MALLOC)
        if p >= 30 and xflags & XMIT_HLINKED and not xflags & XMIT_HLINK_FIRST:
            return self._hlink_follower(data, pos, name, xflags)
        if p >= 30:
            if data[pos] < 0x80 and pos + 3 <= len(data):
                size = data[pos] << 16 | data[pos + 2] << 8 | data[pos + 1]
                pos += 3
            else:
                size, pos = varlong_at(data, pos, 3)
        else:
            size, pos = longint_at(data, pos)
        if size < 0:
            raise ProtocolError("negative file size for %s" % _show(name))
        modtime = self.modtime
        if not xflags & XMIT_SAME_TIME:
            if p >= 30:
                modtime, pos = varlong_at(data, pos, 4)
            else:
                modtime = _U32.unpack_from(data, pos)[0]
                pos += 4
        nsec = 0
        if xflags & XMIT_MOD_NSEC:
            nsec, pos = varint_at(data, pos)
            if not 0 <= nsec <= MAX_WIRE_NSEC:
                raise ProtocolError("wire value modtime_nsec out of range: %d" % nsec)
        mode = self.mode
        if not xflags & XMIT_SAME_MODE:
            mode = _U32.unpack_from(data, pos)[0]
            pos += 4
            if stat.S_IFMT(mode) not in _WIRE_TYPES:
                raise ProtocolError("invalid mode 0%o for %s" % (mode, _show(name)))
        uid, gid, user, group = self.uid, self.gid, None, None
        if opts.owner and not xflags & XMIT_SAME_UID:
            if p < 30:
                uid = _U32.unpack_from(data, pos)[0]
                pos += 4
            else:
                uid, pos = varint_at(data, pos)
                uid &= 0xFFFFFFFF
                if xflags & XMIT_USER_NAME_FOLLOWS:
                    user, pos = _bytes_at(data, pos + 1, data[pos])
                    user = user or None
        if opts.group and not xflags & XMIT_SAME_GID:
            if p < 30:
                gid = _U32.unpack_from(data, pos)[0]
                pos += 4
            else:
                gid, pos = varint_at(data, pos)
                gid &= 0xFFFFFFFF
                if xflags & XMIT_GROUP_NAME_FOLLOWS:
                    group, pos = _bytes_at(data, pos + 1, data[pos])
                    group = group or None
        rdev_major, rdev, e_rdev = self.rdev_major, self.rdev, None
        fmt = stat.S_IFMT(mode)
        device = fmt == stat.S_IFCHR or fmt == stat.S_IFBLK
        if (opts.devices and device) or (opts.specials and p < 31 and (fmt == stat.S_IFIFO or
                                                                       fmt == stat.S_IFSOCK)):
            if p < 28:
                if not xflags & XMIT_SAME_RDEV_pre28:
                    r = _U32.unpack_from(data, pos)[0]
                    pos += 4
                    rdev = (os.major(r), os.minor(r))
            else:
                if not xflags & XMIT_SAME_RDEV_MAJOR:
                    if p >= 30:
                        rdev_major, pos = varint_at(data, pos)
                    else:
                        rdev_major = _I32.unpack_from(data, pos)[0]
                        pos += 4
                    rdev_major &= 0xFFFFFFFF
                if p >= 30:
                    minor, pos = varint_at(data, pos)
                    minor &= 0xFFFFFFFF
                elif xflags & XMIT_RDEV_MINOR_8_pre30:
                    minor = data[pos]
                    pos += 1
                else:
                    minor = _U32.unpack_from(data, pos)[0]
                    pos += 4
                rdev = (rdev_major, minor)
            e_rdev = rdev
            size = 0
        elif device:
            size = 0
        elif p < 28:
            rdev = (0, 0)
        link = None
        if fmt == stat.S_IFLNK and opts.links:
            if p >= 30:
                n, pos = varint_at(data, pos)
            else:
                n = _I32.unpack_from(data, pos)[0]
                pos += 4
            if n <= 0 or n >= MAX_PATH:
                raise ProtocolError("invalid symlink length %d for %s" % (n, _show(name)))
            link, pos = _bytes_at(data, pos, n)
            if b"\0" in link:
                raise ProtocolError("symlink target contains NUL for %s" % _show(name))
        dev, hl_dev, hl_ino = self.dev, -1, 0
        if opts.hard_links and p < 30 and (xflags & XMIT_HLINKED or (p < 28 and fmt == stat.S_IFREG)):
            if p < 28 or not xflags & XMIT_SAME_DEV_pre30:
                dev, pos = longint_at(data, pos)
                dev -= 1
            hl_dev = dev
            hl_ino, pos = longint_at(data, pos)
        csum = None
        if opts.checksum and (fmt == stat.S_IFREG or p < 28):
            csum, pos = _bytes_at(data, pos, self.csum_len)
            if fmt != stat.S_IFREG:
                csum = None
        e = FileEntry(name, mode, size, modtime, nsec, uid, gid)
        if user is not None or group is not None:
            e.user, e.group = user, group
        if e_rdev is not None:
            e.rdev_major, e.rdev_minor = e_rdev
        e.link = link
        e.hl_dev, e.hl_ino, e.sum = hl_dev, hl_ino, csum
        e.flags = _entry_flags(xflags, p)
        self.lastname, self.modtime, self.mode, self.uid, self.gid = name, modtime, mode, uid, gid
        self.rdev_major, self.rdev, self.dev = rdev_major, rdev, dev
        self.entries.append(e)
        return e, pos

    def _hlink_follower(self, data, pos, name, xflags):
        """From 30, a hard link after the first of its group names that
        first entry and repeats its attributes."""
        ndx = len(self.entries)
        first, pos = varint_at(data, pos)
        if first < 0 or first >= ndx:
            raise ProtocolError("hard-link reference out of range: %d (%d)" % (first, ndx))
        f = self.entries[first]
        e = FileEntry(name, f.mode, f.size, f.mtime, f.nsec, f.uid, f.gid)
        e.user, e.group = f.user, f.group
        e.rdev_major, e.rdev_minor, e.link = f.rdev_major, f.rdev_minor, f.link
        e.hl_first = first
        e.flags = _entry_flags(xflags, self.protocol)
        self.lastname = name
        self.modtime, self.mode, self.uid, self.gid = f.mtime, f.mode, f.uid, f.gid
        self.entries.append(e)
        return e, pos

    def recv_id_lists(self):
        """recv_id_list: the uid and gid name lists after the file list."""
        i, opts = self.inp, self.opts
        users, groups = {}, {}
        for wanted, table in ((opts.owner, users), (opts.group, groups)):
            if not wanted or opts.numeric_ids:
                continue
            while True:
                ident = i.varint30()
                if ident == 0:
                    break
                name = i.read(i.byte())
                table[ident & 0xFFFFFFFF] = name
            if self.id0_names:
                name = i.read(i.byte())
                table[0] = name
        return users, groups


def _entry_flags(xflags, protocol):
    flags = 0
    if xflags & XMIT_TOP_DIR:
        flags |= FLAG_TOP_DIR
    if protocol >= 30:
        if not (xflags & XMIT_NO_CONTENT_DIR):
            flags |= FLAG_CONTENT_DIR
    else:
        flags |= FLAG_CONTENT_DIR
    if xflags & XMIT_HLINKED:
        flags |= FLAG_HLINKED
    if xflags & XMIT_HLINK_FIRST:
        flags |= FLAG_HLINK_FIRST
    return flags


