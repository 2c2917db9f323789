"""The rsync protocol (versions 27 to 32), as stock rsync speaks it.

This module is the wire: integer and string encodings, multiplexed I/O,
checksum negotiation, the file list, the sender and the receiver. It knows
nothing of sockets: every stage reads from an `In` and writes to an `Out`,
which sit on a `Transport` (a socket, a pair of pipes, an SSH channel) or,
in tests, on plain bytes.

Each protocol-version difference is decided in one place and named after
the rsync concept it belongs to (`compat_flags`, `xfer_flags_as_varint`,
`checksum_seed`, `proper_seed_order`...), so a reader can look the same word
up in rsync's own sources.
"""

import array
import re
import mmap
import grp
import hashlib
import os
import pwd
import select
import socket
import struct
import threading
import time


def _compress():
    """rsync_compress is loaded on first use (it imports this module)."""
    import rsync_compress
    return rsync_compress


def _md4():
    """rsync_md4 is loaded on first use: its pycryptodome backend is slow to import."""
    import rsync_md4
    return rsync_md4

VERSION = "0.1.0"
PROTOCOL_VERSION = 32
MIN_PROTOCOL_VERSION = 27
MAX_PATH = 4096
CHUNK_SIZE = 32 * 1024
MAX_BLOCK_SIZE = 1 << 17
OLD_MAX_BLOCK_SIZE = 1 << 29
MAX_NAME_LEN = 255

# Exit codes (rsync's errcode.h).
RERR_OK = 0
RERR_SYNTAX = 1
RERR_PROTOCOL = 2
RERR_FILESELECT = 3
RERR_UNSUPPORTED = 4
RERR_STARTCLIENT = 5
RERR_SOCKETIO = 10
RERR_FILEIO = 11
RERR_STREAMIO = 12
RERR_MESSAGEIO = 13
RERR_IPC = 14
RERR_SIGNAL = 20
RERR_MALLOC = 22
RERR_PARTIAL = 23
RERR_VANISHED = 24
RERR_DEL_LIMIT = 25
RERR_TIMEOUT = 30
RERR_CONTIMEOUT = 35
RERR_CMD_FAILED = 124
RERR_CMD_KILLED = 125
RERR_CMD_RUN = 126
RERR_CMD_NOTFOUND = 127

RERR_NAMES = {
    RERR_SYNTAX: "syntax or usage error",
    RERR_PROTOCOL: "protocol incompatibility",
    RERR_FILESELECT: "errors selecting input/output files, dirs",
    RERR_UNSUPPORTED: "requested action not supported",
    RERR_STARTCLIENT: "error starting client-server protocol",
    RERR_SOCKETIO: "error in socket IO",
    RERR_FILEIO: "error in file IO",
    RERR_STREAMIO: "error in rsync protocol data stream",
    RERR_MESSAGEIO: "errors with program diagnostics",
    RERR_IPC: "error in IPC code",
    RERR_SIGNAL: "received SIGINT, SIGTERM, or SIGHUP",
    RERR_MALLOC: "error allocating core memory buffers",
    RERR_PARTIAL: "some files/attrs were not transferred (see previous errors)",
    RERR_VANISHED: "some files vanished before they could be transferred",
    RERR_DEL_LIMIT: "the --max-delete limit stopped deletions",
    RERR_TIMEOUT: "timeout in data send/receive",
    RERR_CONTIMEOUT: "timeout waiting for daemon connection",
    RERR_CMD_FAILED: "remote shell failed",
    RERR_CMD_KILLED: "remote shell killed",
    RERR_CMD_RUN: "remote command could not be run",
    RERR_CMD_NOTFOUND: "remote command not found",
}

# Multiplexed message tags (rsync.h enum msgcode).
MPLEX_BASE = 7
MSG_DATA = 0
MSG_ERROR_XFER = 1
MSG_INFO = 2
MSG_ERROR = 3
MSG_WARNING = 4
MSG_ERROR_SOCKET = 5
MSG_LOG = 6
MSG_CLIENT = 7
MSG_ERROR_UTF8 = 8
MSG_REDO = 9
MSG_STATS = 10
MSG_IO_ERROR = 22
MSG_IO_TIMEOUT = 33
MSG_NOOP = 42
MSG_ERROR_EXIT = 86
MSG_SUCCESS = 100
MSG_DELETED = 101
MSG_NO_SEND = 102

# io_error bits.
IOERR_GENERAL = 1 << 0
IOERR_VANISHED = 1 << 1
IOERR_DEL_LIMIT = 1 << 2

# compat_flags (compat.c CF_*).
CF_INC_RECURSE = 1 << 0
CF_SYMLINK_TIMES = 1 << 1
CF_SYMLINK_ICONV = 1 << 2
CF_SAFE_FLIST = 1 << 3
CF_AVOID_XATTR_OPTIM = 1 << 4
CF_CHKSUM_SEED_FIX = 1 << 5
CF_INPLACE_PARTIAL_DIR = 1 << 6
CF_VARINT_FLIST_FLAGS = 1 << 7
CF_ID0_NAMES = 1 << 8

# File-list entry flags (rsync.h XMIT_*).
XMIT_TOP_DIR = 1 << 0
XMIT_SAME_MODE = 1 << 1
XMIT_SAME_RDEV_pre28 = 1 << 2
XMIT_EXTENDED_FLAGS = 1 << 2
XMIT_SAME_UID = 1 << 3
XMIT_SAME_GID = 1 << 4
XMIT_SAME_NAME = 1 << 5
XMIT_LONG_NAME = 1 << 6
XMIT_SAME_TIME = 1 << 7
XMIT_SAME_RDEV_MAJOR = 1 << 8
XMIT_NO_CONTENT_DIR = 1 << 8
XMIT_HLINKED = 1 << 9
XMIT_SAME_DEV_pre30 = 1 << 10
XMIT_USER_NAME_FOLLOWS = 1 << 10
XMIT_RDEV_MINOR_8_pre30 = 1 << 11
XMIT_GROUP_NAME_FOLLOWS = 1 << 11
XMIT_HLINK_FIRST = 1 << 12
XMIT_IO_ERROR_ENDLIST = 1 << 12
XMIT_MOD_NSEC = 1 << 13
XMIT_SAME_ATIME = 1 << 14
XMIT_CRTIME_EQ_MTIME = 1 << 17

# Item flags sent with each file index (rsync.h ITEM_*).
ITEM_REPORT_ATIME = 1 << 0
ITEM_REPORT_CHANGE = 1 << 1
ITEM_REPORT_SIZE = 1 << 2
ITEM_REPORT_TIMEFAIL = 1 << 2
ITEM_REPORT_TIME = 1 << 3
ITEM_REPORT_PERMS = 1 << 4
ITEM_REPORT_OWNER = 1 << 5
ITEM_REPORT_GROUP = 1 << 6
ITEM_REPORT_ACL = 1 << 7
ITEM_REPORT_XATTR = 1 << 8
ITEM_REPORT_CRTIME = 1 << 10
ITEM_BASIS_TYPE_FOLLOWS = 1 << 11
ITEM_XNAME_FOLLOWS = 1 << 12
ITEM_IS_NEW = 1 << 13
ITEM_LOCAL_CHANGE = 1 << 14
ITEM_TRANSFER = 1 << 15
ITEM_MISSING_DATA = 1 << 16  # below 29 the flags are not sent: shown as ?

FNAMECMP_FNAME = 0x80
FNAMECMP_PARTIAL_DIR = 0x81

NDX_DONE = -1
NDX_FLIST_EOF = -2
NDX_DEL_STATS = -3
NDX_FLIST_OFFSET = -101


class RsyncError(Exception):
    """A failure that ends the session with rsync's exit `code`."""

    def __init__(self, msg, code=RERR_PROTOCOL):
        super().__init__(msg)
        self.code = code


class ProtocolError(RsyncError):
    """The peer sent something the protocol does not allow."""

    def __init__(self, msg, code=RERR_STREAMIO):
        super().__init__(msg, code)


class ConnectionClosed(RsyncError):
    """The peer closed the connection before the exchange was over."""

    def __init__(self, msg="connection unexpectedly closed", code=RERR_STREAMIO):
        super().__init__(msg, code)


class RemoteExit(RsyncError):
    """The peer reported a fatal error (MSG_ERROR_EXIT) and is gone."""


# ----------------------------------------------------------------------------
# Transports: a byte pipe to the peer.


def write_all_vectored(writev, buffers):
    """Hands every byte of buffers to writev (os.writev, socket.sendmsg or
    alike, which may take only part), at most 512 buffers per call; views
    are made only for the buffers of the call in flight."""
    buffers = [b for b in buffers if len(b)]
    first = 0
    while first < len(buffers):
        batch = [memoryview(b).cast("B") for b in buffers[first:first + 512]]
        first += len(batch)
        while batch:
            sent = writev(batch)
            done = 0
            while done < len(batch) and sent >= len(batch[done]):
                sent -= len(batch[done])
                done += 1
            del batch[:done]
            if sent:
                batch[0] = batch[0][sent:]


class Transport:
    """A bidirectional byte stream: `recv(n)` returns up to n bytes (b"" at
    end of stream), `sendv(buffers)` writes them all in order."""

    timeout = None

    def recv(self, n):
        raise NotImplementedError

    def recv_into(self, view):
        data = self.recv(len(view))
        view[:len(data)] = data
        return len(data)

    def sendv(self, buffers):
        raise NotImplementedError

    def close(self):
        pass

    def shutdown_write(self):
        pass


class SocketTransport(Transport):
    """A connected socket (TCP, or one end of a socketpair). With a
    `deadline` (a time.monotonic() value) every read must finish by then."""

    deadline = None
    quickack = False

    def __init__(self, sock, timeout=None):
        self.sock = sock
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # Our writes are whole batches already; Nagle would only hold a
            # small last one back until the peer's delayed ack (~40 ms).
            # The peer may not think so (rsync writes its arguments and its
            # checksum list in pieces): acking at once lets its next piece go.
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.quickack = hasattr(socket, "TCP_QUICKACK")
            except OSError:
                pass
        self.set_timeout(timeout)

    def _ack_at_once(self):
        """TCP_QUICKACK lasts only a while, so it is asked for before each read."""
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            self.quickack = False

    def set_timeout(self, timeout):
        self.timeout = timeout
        self.sock.settimeout(timeout)

    def recv(self, n):
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise RsyncError("timeout waiting for data from the peer", RERR_TIMEOUT)
            self.sock.settimeout(left)
        if self.quickack:
            self._ack_at_once()
        try:
            return self.sock.recv(n)
        except socket.timeout:
            raise RsyncError("timeout waiting for data from the peer", RERR_TIMEOUT) from None
        except ConnectionResetError:
            return b""

    def recv_into(self, buf):
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise RsyncError("timeout waiting for data from the peer", RERR_TIMEOUT)
            self.sock.settimeout(left)
        if self.quickack:
            self._ack_at_once()
        try:
            return self.sock.recv_into(buf)
        except socket.timeout:
            raise RsyncError("timeout waiting for data from the peer", RERR_TIMEOUT) from None
        except ConnectionResetError:
            return 0

    def sendv(self, buffers):
        try:
            if len(buffers) == 1:
                self.sock.sendall(buffers[0])
                return
            write_all_vectored(self.sock.sendmsg, buffers)
        except socket.timeout:
            raise RsyncError("timeout sending data to the peer", RERR_TIMEOUT) from None
        except (BrokenPipeError, ConnectionResetError):
            raise ConnectionClosed("connection unexpectedly closed (broken pipe)", RERR_SOCKETIO) from None

    def shutdown_write(self):
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class PipeTransport(Transport):
    """A pair of file descriptors: stdin/stdout of `--server`, or a remote shell."""

    def __init__(self, fd_in, fd_out, timeout=None):
        self.fd_in = fd_in
        self.fd_out = fd_out
        self.timeout = timeout
        for fd in (fd_in, fd_out):
            try:
                os.set_blocking(fd, True)
            except OSError:
                pass

    def set_timeout(self, timeout):
        self.timeout = timeout

    def _wait(self, fd, for_write):
        if not self.timeout:
            return
        r, w, _ = select.select([] if for_write else [fd], [fd] if for_write else [], [], self.timeout)
        if not r and not w:
            raise RsyncError("timeout in data send/receive", RERR_TIMEOUT)

    def recv(self, n):
        self._wait(self.fd_in, False)
        try:
            return os.read(self.fd_in, n)
        except ConnectionResetError:
            return b""

    def recv_into(self, view):
        self._wait(self.fd_in, False)
        try:
            return os.readv(self.fd_in, [view])
        except ConnectionResetError:
            return 0

    def sendv(self, buffers):
        def write(views):
            self._wait(self.fd_out, True)
            return os.writev(self.fd_out, views)
        try:
            write_all_vectored(write, buffers)
        except (BrokenPipeError, ConnectionResetError):
            raise ConnectionClosed("connection unexpectedly closed (broken pipe)", RERR_SOCKETIO) from None

    def shutdown_write(self):
        try:
            os.close(self.fd_out)
        except OSError:
            pass
        self.fd_out = -1

    def close(self):
        for fd in (self.fd_in, self.fd_out):
            if fd > 2:
                try:
                    os.close(fd)
                except OSError:
                    pass


class BytesTransport(Transport):
    """Feeds fixed bytes and collects what is written: for tests and fuzzers."""

    def __init__(self, data=b"", chunk=1 << 16):
        self.data = memoryview(bytes(data))
        self.chunk = chunk
        self.out = bytearray()

    def recv(self, n):
        piece = bytes(self.data[:min(n, self.chunk)])
        self.data = self.data[len(piece):]
        return piece

    def sendv(self, buffers):
        for b in buffers:
            self.out += b


# ----------------------------------------------------------------------------
# Reading: the raw stream, the demultiplexer, and the decoder on top.


class RawIn:
    """Buffered reads from a transport into one reusable buffer; calls
    `before_block` (which flushes our pending output) before it waits for
    the peer, so the two sides can never both wait for each other.

    `take(n)` hands out a view of up to n buffered bytes without copying;
    the view is valid until the next call that reads."""

    SIZE = 1 << 20

    def __init__(self, transport, before_block=None):
        self.transport = transport
        self.before_block = before_block
        self.buf = bytearray(self.SIZE)
        self.view = memoryview(self.buf)
        self.pos = 0
        self.end = 0
        self.total = 0

    def _fill(self):
        """Reads more from the transport after what is buffered; False at EOF."""
        if self.pos == self.end:
            self.pos = self.end = 0
        elif self.end == len(self.buf):
            n = self.end - self.pos
            self.buf[:n] = self.view[self.pos:self.end]
            self.pos, self.end = 0, n
        if self.before_block:
            self.before_block()
        got = self.transport.recv_into(self.view[self.end:])
        if not got:
            return False
        self.end += got
        self.total += got
        return True

    def take(self, n):
        """A view of 1..n buffered bytes (n > 0)."""
        if self.pos == self.end and not self._fill():
            raise ConnectionClosed()
        k = min(n, self.end - self.pos)
        mv = self.view[self.pos:self.pos + k]
        self.pos += k
        return mv

    def byte(self):
        if self.pos < self.end:
            self.pos += 1
            return self.buf[self.pos - 1]
        return self.read(1)[0]

    def read(self, n):
        """Exactly n bytes."""
        if self.end - self.pos >= n:
            b = bytes(self.view[self.pos:self.pos + n])
            self.pos += n
            return b
        parts = []
        while n:
            piece = self.take(n)
            parts.append(bytes(piece))
            n -= len(piece)
        return b"".join(parts)

    def read_line(self, limit=4096, eol=b"\n"):
        """A line without its terminator; a line over `limit` bytes is an error."""
        start = self.pos
        while True:
            i = self.buf.find(eol, start, self.end)
            if i >= 0:
                line = bytes(self.view[self.pos:i])
                self.pos = i + 1
                if len(line) > limit:
                    raise ProtocolError("line from peer too long", RERR_PROTOCOL)
                return line
            if self.end - self.pos > limit:
                raise ProtocolError("line from peer too long", RERR_PROTOCOL)
            start = self.end - self.pos
            if not self._fill():
                if self.end > self.pos:
                    raise ConnectionClosed("connection closed in the middle of a line")
                raise ConnectionClosed()
            start += self.pos

    def pending(self):
        return self.end - self.pos

    def int32(self):
        if self.end - self.pos >= 4:
            self.pos += 4
            return _I32.unpack_from(self.buf, self.pos - 4)[0]
        return _I32.unpack(self.read(4))[0]

    def peek(self):
        """A copy of the buffered bytes (waits for one if there are none),
        left in place until skip(n)."""
        if self.pos == self.end and not self._fill():
            raise ConnectionClosed()
        return bytes(self.view[self.pos:self.end])

    def skip(self, n):
        self.pos += n


class Demux:
    """Reads rsync's multiplexed stream (io.c read_a_msg): frames of a 4-byte
    little-endian header `((MPLEX_BASE + tag) << 24) | length` and a payload.
    MSG_DATA payloads become the data stream; every other message goes to
    `on_message(tag, payload)`."""

    def __init__(self, raw, on_message):
        self.raw = raw
        self.on_message = on_message
        self.left = 0

    def _next_frame(self):
        while True:
            hdr = struct.unpack("<I", self.raw.read(4))[0]
            tag = (hdr >> 24) - MPLEX_BASE
            length = hdr & 0xFFFFFF
            if tag == MSG_DATA:
                if length:
                    self.left = length
                    return
                continue
            if tag < 0:
                raise ProtocolError("unexpected tag %d (is the peer speaking rsync?)" % tag)
            payload = self.raw.read(length) if length else b""
            self.on_message(tag, payload)

    def take(self, n):
        """A view of 1..n bytes of data (valid until the next read)."""
        if not self.left:
            self._next_frame()
        mv = self.raw.take(min(n, self.left))
        self.left -= len(mv)
        return mv

    def byte(self):
        raw = self.raw
        if self.left and raw.pos < raw.end:
            self.left -= 1
            raw.pos += 1
            return raw.buf[raw.pos - 1]
        return self.read(1)[0]

    def read(self, n):
        raw = self.raw
        if self.left >= n and raw.end - raw.pos >= n:
            self.left -= n
            b = bytes(raw.view[raw.pos:raw.pos + n])
            raw.pos += n
            return b
        parts = []
        while n:
            piece = self.take(n)
            parts.append(bytes(piece))
            n -= len(piece)
        return b"".join(parts)

    def pending(self):
        return min(self.left, self.raw.pending())

    def int32(self):
        raw = self.raw
        if self.left >= 4 and raw.end - raw.pos >= 4:
            self.left -= 4
            raw.pos += 4
            return _I32.unpack_from(raw.buf, raw.pos - 4)[0]
        return _I32.unpack(self.read(4))[0]

    def peek(self):
        """A copy of the data bytes at hand in the current frame (waits for
        one if there are none), left in place until skip(n)."""
        if not self.left:
            self._next_frame()
        raw = self.raw
        if raw.pos == raw.end and not raw._fill():
            raise ConnectionClosed()
        return bytes(raw.view[raw.pos:min(raw.end, raw.pos + self.left)])

    def skip(self, n):
        self.left -= n
        self.raw.pos += n


class In:
    """Decodes rsync's integer and string encodings (io.c) from `src` (a
    RawIn or Demux): `read(n)` returns exactly n bytes, `byte()` one."""

    def __init__(self, src, protocol=PROTOCOL_VERSION):
        self.src = src
        self.protocol = protocol
        self.prev_positive = -1
        self.prev_negative = 1

    def read(self, n):
        if n < 0:
            raise ProtocolError("negative length %d from peer" % n)
        return self.src.read(n) if n else b""

    def take(self, n):
        """A view of 1..n bytes, without copying (valid until the next read)."""
        return self.src.take(n)

    def peek(self):
        """The bytes that can be read without waiting, as bytes (at least
        one: waits when there are none); they stay unread until skip(n)."""
        return self.src.peek()

    def skip(self, n):
        self.src.skip(n)

    def byte(self):
        return self.src.byte()

    def shortint(self):
        return _U16.unpack(self.src.read(2))[0]

    def int32(self):
        return self.src.int32()

    def uint32(self):
        return struct.unpack("<I", self.src.read(4))[0]

    def int64(self):
        return struct.unpack("<q", self.src.read(8))[0]

    def longint(self):
        """write_longint: int32, or -1 followed by an int64."""
        v = self.int32()
        if v != -1:
            return v
        return self.int64()

    def varint(self):
        ch = self.byte()
        extra = _INT_BYTE_EXTRA[ch >> 2]
        if not extra:
            return ch
        if extra >= 5:
            raise ProtocolError("Overflow in read_varint()")
        b = self.src.read(extra) + bytes([ch & ((1 << (8 - extra)) - 1)])
        return struct.unpack("<i", b.ljust(4, b"\0")[:4])[0]

    def varlong(self, min_bytes):
        first = self.src.read(min_bytes)
        extra = _INT_BYTE_EXTRA[first[0] >> 2]
        if min_bytes + extra > 9:
            raise ProtocolError("Overflow in read_varlong()")
        body = first[1:]
        if extra:
            body += self.src.read(extra) + bytes([first[0] & ((1 << (8 - extra)) - 1)])
        else:
            body += first[:1]
        return struct.unpack("<q", body.ljust(8, b"\0")[:8])[0]

    def varint30(self):
        return self.varint() if self.protocol >= 30 else self.int32()

    def varlong30(self, min_bytes):
        return self.varlong(min_bytes) if self.protocol >= 30 else self.longint()

    def vstring(self, limit=MAX_PATH):
        n = self.byte()
        if n & 0x80:
            n = ((n & 0x7F) << 8) | self.byte()
        if n > limit:
            raise ProtocolError("over-long vstring received (%d > %d)" % (n, limit))
        return self.read(n)

    def ndx(self):
        """read_ndx: a file index; int32 below 30, else diff-encoded."""
        if self.protocol < 30:
            return self.int32()
        b = self.byte()
        if b == 0:
            return NDX_DONE
        negative = b == 0xFF
        if negative:
            b = self.byte()
        if b == 0xFE:
            hi = self.src.read(2)
            if hi[0] & 0x80:
                rest = self.src.read(2)
                num = ((hi[0] & 0x7F) << 24) | hi[1] | (rest[0] << 8) | (rest[1] << 16)
            else:
                num = ((hi[0] << 8) | hi[1]) + (self.prev_negative if negative else self.prev_positive)
        else:
            num = b + (self.prev_negative if negative else self.prev_positive)
        if negative:
            self.prev_negative = num
            return -num
        self.prev_positive = num
        return num


_INT_BYTE_EXTRA = bytes([0] * 32 + [1] * 16 + [2] * 8 + [3] * 4 + [4] * 2 + [5, 6])

_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_SUM_HEAD = struct.Struct("<4i")


# ----------------------------------------------------------------------------
# Writing: encodings into a buffer, flushed raw or multiplexed.


_BYTES = [bytes((i,)) for i in range(256)]


def enc_int32(v):
    return struct.pack("<i", v)


def enc_varint(x):
    """write_varint: the leading 1 bits of the first byte count extra bytes."""
    if 0 <= x < 0x4000:
        return _BYTES[x] if x < 0x80 else bytes((0x80 | x >> 8, x & 0xFF))
    if 0 < x < 1 << 31:
        cnt = (x.bit_length() + 7) >> 3
        bit = 1 << (8 - cnt)
        top = x >> (8 * cnt - 8)
        if top >= bit:
            return _BYTES[(~(bit - 1)) & 0xFF] + x.to_bytes(cnt, "little")
        return _BYTES[(top | ~(bit * 2 - 1)) & 0xFF] + (x & ((1 << (8 * cnt - 8)) - 1)).to_bytes(cnt - 1, "little")
    b = struct.pack("<i", x)
    cnt = 4
    while cnt > 1 and b[cnt - 1] == 0:
        cnt -= 1
    bit = 1 << (7 - cnt + 1)
    top = b[cnt - 1]
    if top >= bit:
        return bytes([(~(bit - 1)) & 0xFF]) + b[:cnt]
    if cnt > 1:
        return bytes([(top | ~(bit * 2 - 1)) & 0xFF]) + b[:cnt - 1]
    return bytes([top])


def enc_varlong(x, min_bytes):
    """write_varlong: min_bytes-1 low bytes always, more as needed."""
    if 0 <= x < 1 << (8 * min_bytes - 1):
        return ((x & ((1 << (8 * min_bytes - 8)) - 1)) << 8 | x >> (8 * min_bytes - 8)).to_bytes(min_bytes, "little")
    b = struct.pack("<q", x)
    cnt = 8
    while cnt > min_bytes and b[cnt - 1] == 0:
        cnt -= 1
    bit = 1 << (7 - cnt + min_bytes)
    top = b[cnt - 1]
    if top >= bit:
        return bytes([(~(bit - 1)) & 0xFF]) + b[:cnt]
    if cnt > min_bytes:
        return bytes([(top | ~(bit * 2 - 1)) & 0xFF]) + b[:cnt - 1]
    return bytes([top]) + b[:cnt - 1]


def enc_longint(x):
    if 0 <= x <= 0x7FFFFFFF:
        return struct.pack("<i", x)
    return b"\xff\xff\xff\xff" + struct.pack("<q", x)


def enc_vstring(s):
    n = len(s)
    if n > 0x7FFF:
        raise ValueError("vstring too long")
    if n > 0x7F:
        return bytes([0x80 | (n >> 8), n & 0xFF]) + s
    return bytes([n]) + s


class Out:
    """Encodes rsync's integers and strings into a buffer. `flush()` hands
    the buffer to the transport, in MSG_DATA frames once `multiplexed`.
    Messages (`msg`) are written in order with the data around them."""

    FLUSH_AT = 1 << 16
    MAX_FRAME = 0xFFFFFF

    def __init__(self, transport, protocol=PROTOCOL_VERSION):
        self.transport = transport
        self.protocol = protocol
        self.buf = bytearray()
        self.multiplexed = False
        self.total = 0
        self.bwlimit = 0
        self._bw_start = None
        self.later = []
        self.later_lock = threading.Lock()
        self.prev_positive = -1
        self.prev_negative = 1
        self.lock = threading.RLock()

    def _send(self, parts):
        n = sum(len(p) for p in parts)
        self.total += n
        self.transport.sendv(parts)
        if self.bwlimit:
            self._throttle(n)

    def _throttle(self, n):
        """--bwlimit: sleeps so that what was sent averages at most
        `bwlimit` bytes per second."""
        now = time.monotonic()
        if self._bw_start is None:
            self._bw_start, self._bw_sent = now, 0
        self._bw_sent += n
        ahead = self._bw_sent / self.bwlimit - (now - self._bw_start)
        if ahead > 0.01:
            time.sleep(ahead)

    def _frame(self, tag, length):
        return struct.pack("<I", ((MPLEX_BASE + tag) << 24) | length)

    def msg_later(self, tag, payload):
        """A message to go out with the next flush, for a thread that must
        not block on the connection."""
        with self.later_lock:
            self.later.append(self._frame(tag, len(payload)) + payload)

    def flush(self):
        with self.lock:
            if self.later:
                with self.later_lock:
                    later, self.later = self.later, []
            else:
                later = None
            if not self.buf:
                if later and self.multiplexed:
                    self._send(later)
                return
            data = self.buf
            self.buf = bytearray()
            if not self.multiplexed:
                self._send([data])
                return
            mv = memoryview(data)
            parts = []
            for i in range(0, len(mv), self.MAX_FRAME):
                piece = mv[i:i + self.MAX_FRAME]
                parts.append(self._frame(MSG_DATA, len(piece)))
                parts.append(piece)
            self._send(parts + (later or []))

    def _maybe_flush(self):
        if len(self.buf) >= self.FLUSH_AT:
            self.flush()

    def write(self, b):
        with self.lock:
            self.buf += b
            self._maybe_flush()

    def write_data(self, head, data):
        """`head` (a few bytes) then a large buffer, sent without copying it."""
        with self.lock:
            if len(data) < 4096:
                self.buf += head
                self.buf += data
                self._maybe_flush()
                return
            self.buf += head
            if not self.multiplexed:
                pending = self.buf
                self.buf = bytearray()
                self._send([pending, data])
                return
            pending = self.buf
            self.buf = bytearray()
            total = len(pending) + len(data)
            if total <= self.MAX_FRAME:
                self._send([self._frame(MSG_DATA, total), pending, data])
            else:
                self.buf = pending
                self.flush()
                mv = memoryview(data)
                for i in range(0, len(mv), self.MAX_FRAME):
                    piece = mv[i:i + self.MAX_FRAME]
                    self._send([self._frame(MSG_DATA, len(piece)), piece])

    def write_parts(self, parts):
        """Many small and large buffers as one MSG_DATA frame (or a few),
        handed to the transport in a single call when possible; small ones
        join the buffer (copied), so many small files share a frame."""
        with self.lock:
            total = sum(len(p) for p in parts)
            if total + len(self.buf) < self.FLUSH_AT:
                for p in parts:
                    self.buf += p
                return
            if not self.multiplexed:
                pending, self.buf = self.buf, bytearray()
                self._send([pending] + parts if pending else parts)
                return
            if self.buf:
                if len(self.buf) + total <= self.MAX_FRAME:
                    pending, self.buf = self.buf, bytearray()
                    self._send([self._frame(MSG_DATA, len(pending) + total), pending] + parts)
                    return
                self.flush()
            if total <= self.MAX_FRAME:
                self._send([self._frame(MSG_DATA, total)] + parts)
                return
            for p in parts:
                self.write_data(b"", p)
            self.flush()

    def byte(self, v):
        self.write(bytes([v & 0xFF]))

    def shortint(self, v):
        self.write(struct.pack("<H", v & 0xFFFF))

    def int32(self, v):
        self.write(struct.pack("<i", v))

    def uint32(self, v):
        self.write(struct.pack("<I", v))

    def longint(self, v):
        self.write(enc_longint(v))

    def varint(self, v):
        self.write(enc_varint(v))

    def varlong(self, v, min_bytes):
        self.write(enc_varlong(v, min_bytes))

    def varint30(self, v):
        self.write(enc_varint(v) if self.protocol >= 30 else struct.pack("<i", v))

    def varlong30(self, v, min_bytes):
        self.write(enc_varlong(v, min_bytes) if self.protocol >= 30 else enc_longint(v))

    def vstring(self, s):
        self.write(enc_vstring(s))

    def ndx(self, ndx):
        """write_ndx: int32 below 30, else the diff-encoded form."""
        if self.protocol < 30:
            self.int32(ndx)
            return
        out = bytearray()
        if ndx >= 0:
            diff = ndx - self.prev_positive
            self.prev_positive = ndx
        elif ndx == NDX_DONE:
            self.write(b"\0")
            return
        else:
            out.append(0xFF)
            ndx = -ndx
            diff = ndx - self.prev_negative
            self.prev_negative = ndx
        if 0 < diff < 0xFE:
            out.append(diff)
        elif diff < 0 or diff > 0x7FFF:
            out += bytes([0xFE, (ndx >> 24) | 0x80, ndx & 0xFF, (ndx >> 8) & 0xFF, (ndx >> 16) & 0xFF])
        else:
            out += bytes([0xFE, diff >> 8, diff & 0xFF])
        self.write(bytes(out))

    def msg(self, tag, payload=b""):
        """A multiplexed message; data written before it goes first."""
        with self.lock:
            self.flush()
            if not self.multiplexed:
                return
            self._send([self._frame(tag, len(payload)) + payload])


# ----------------------------------------------------------------------------
# Checksums (checksum.c): the rolling sum lives in rsync_delta; here are the
# strong block sums and the whole-file sums, by negotiated name.

try:
    import xxhash
except ImportError:  # pragma: no cover - xxhash is a declared dependency
    xxhash = None

CHECKSUM_DIGEST_LEN = {"xxh128": 16, "xxh3": 8, "xxh64": 8, "md5": 16, "md4": 16, "sha1": 20, "none": 1}
CHECKSUM_ALIASES = {"xxhash": "xxh64"}


def available_checksums():
    """Our checksum names in rsync's order of preference."""
    names = ["xxh128", "xxh3", "xxh64"] if xxhash else []
    names += ["md5"]
    names.append("md4")
    names.append("sha1")
    names.append("none")
    return names


class _NoSum:
    """CSUM_NONE: every sum is one zero byte (and the transfer is whole-file)."""

    def update(self, data):
        pass

    def digest(self):
        return b"\0"

    def copy(self):
        return self


class _Reversed:
    """An xxhash state whose digest comes out in rsync's little-endian order."""

    __slots__ = ("h", "update")

    def __init__(self, h):
        self.h = h
        self.update = h.update

    def digest(self):
        return self.h.digest()[::-1]


def new_hash(name, seed=0):
    """An unseeded-or-seeded hash object for `name` with rsync's byte order."""
    if name == "md5":
        return hashlib.md5()
    if name == "md4":
        return _md4().md4()
    if name == "sha1":
        return hashlib.sha1()
    if name == "none":
        return _NoSum()
    s = seed & 0xFFFFFFFFFFFFFFFF
    if name == "xxh64":
        return _Reversed(xxhash.xxh64(seed=s))
    if name == "xxh3":
        return _Reversed(xxhash.xxh3_64(seed=s))
    if name == "xxh128":
        return _Reversed(xxhash.xxh3_128(seed=s))
    raise RsyncError("unknown checksum name: %s" % name, RERR_UNSUPPORTED)


class Checksums:
    """What the session negotiated: the transfer checksum (block strong sums
    and the whole-file sum) and the file checksum (`-c`), with the seed.

    get_checksum2: md4 hashes data then the seed; sha1 seed first; the xxh
    family take it as their hash seed; md5 puts the seed first (rsync built
    with OpenSSL hashes every md5 named in its table that way), except for
    the implied md5 of protocol 30+ without negotiation or
    CF_CHKSUM_SEED_FIX (proper_seed_order), which puts it last. A zero
    seed is left out. The whole-file sum is seeded (seed first) only with the md4
    that protocols below 30 use when no checksum was chosen (`legacy_md4`).
    """

    def __init__(self, xfer_name, file_name, seed, md5_seed_first, protocol, legacy_md4=False):
        self.xfer_name = xfer_name
        self.legacy_md4 = legacy_md4
        self.file_name = file_name
        self.seed = seed
        self.protocol = protocol
        self.xfer_len = CHECKSUM_DIGEST_LEN[xfer_name]
        self.file_len = CHECKSUM_DIGEST_LEN[file_name]
        seedbytes = struct.pack("<i", seed) if seed else b""
        self.seedbytes = seedbytes
        if xfer_name in ("xxh64", "xxh3", "xxh128"):
            s = seed & 0xFFFFFFFFFFFFFFFF
            fn = {"xxh64": xxhash.xxh64_digest, "xxh3": xxhash.xxh3_64_digest,
                  "xxh128": xxhash.xxh3_128_digest}[xfer_name]
            self.strong = lambda data: fn(data, s)[::-1]
            self.file_digest = lambda data: fn(data)[::-1]
        else:
            if xfer_name == "md4" or (xfer_name == "md5" and not md5_seed_first):
                seed_first = False
            else:
                seed_first = True
            ctor = (lambda: new_hash(xfer_name))
            if not seedbytes:
                def strong(data):
                    h = ctor()
                    h.update(data)
                    return h.digest()
            elif seed_first:
                base = ctor()
                base.update(seedbytes)

                def strong(data):
                    h = base.copy()
                    h.update(data)
                    return h.digest()
            else:
                def strong(data):
                    h = ctor()
                    h.update(data)
                    h.update(seedbytes)
                    return h.digest()
            self.strong = strong

    def file_digest(self, data):
        """The whole-file sum of data held all at once (file_hasher's
        digest; one call for the xxh family)."""
        h = self.file_hasher()
        h.update(data)
        return h.digest()

    def file_hasher(self):
        """The accumulator for the whole-file sum sent after each file's data."""
        h = new_hash(self.xfer_name)
        if self.legacy_md4:
            h.update(struct.pack("<i", self.seed))
        return h

    def file_checksum(self, fd, size):
        """The `-c` checksum of an open file: unseeded file checksum."""
        if self.file_name == "none":
            raise RsyncError("Invalid checksum-choice for --checksum: none", RERR_UNSUPPORTED)
        h = new_hash(self.file_name)
        buf = bytearray(1 << 20)
        mv = memoryview(buf)
        left = size
        while left > 0:
            n = os.readv(fd, [mv[:min(left, len(buf))]])
            if n <= 0:
                break
            h.update(mv[:n])
            left -= n
        return h.digest()


def compression_list(am_server=False):
    """Our compression names in rsync's order; RSYNC_COMPRESS_LIST narrows
    and reorders them as rsync lets it."""
    names = _compress().available_compressions(server=am_server)
    env = os.environ.get("RSYNC_COMPRESS_LIST")
    if env:
        wanted = [n for n in env.replace("&", " ").split() if n in names]
        if wanted:
            return wanted + (["none"] if am_server and "none" not in wanted else [])
    return names


def negotiate_pick(ours, theirs):
    """The first name in `theirs` that we support (rsync's order for both)."""
    names = [CHECKSUM_ALIASES.get(n, n) for n in theirs.split()]
    for n in names:
        if n in ours:
            return n
    return None


_ID_CACHE = None


def prime_id_caches():
    """Reads the whole user and group databases now, for a process that is
    about to lose access to them (a chroot)."""
    global _ID_CACHE
    _ID_CACHE = ({p.pw_uid: p.pw_name for p in pwd.getpwall()},
                 {g.gr_gid: g.gr_name for g in grp.getgrall()},
                 {p.pw_name: p.pw_uid for p in pwd.getpwall()},
                 {g.gr_name: g.gr_gid for g in grp.getgrall()})


def _user_name(uid):
    if _ID_CACHE is not None:
        name = _ID_CACHE[0].get(uid)
        return name.encode()[:255] if name else None
    try:
        return pwd.getpwuid(uid).pw_name.encode()[:255]
    except (KeyError, OverflowError):
        return None


def _group_name(gid):
    if _ID_CACHE is not None:
        name = _ID_CACHE[1].get(gid)
        return name.encode()[:255] if name else None
    try:
        return grp.getgrgid(gid).gr_name.encode()[:255]
    except (KeyError, OverflowError):
        return None


def uid_by_name(name):
    if _ID_CACHE is not None:
        return _ID_CACHE[2].get(name)
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def gid_by_name(name):
    if _ID_CACHE is not None:
        return _ID_CACHE[3].get(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def _show(name):
    return name.decode("utf-8", "backslashreplace")


# ----------------------------------------------------------------------------
# Options: what one side tells the other in the server's argv
# (options.c server_options), and what the server makes of it.


class Options:
    """The transfer options both sides agree on, named as in rsync."""

    def __init__(self):
        self.server = False
        self.sender = False
        self.protect_args = False
        self.daemon = False
        self.verbose = 0
        self.quiet = False
        self.dry_run = False
        self.recurse = False
        self.dirs = False
        self.links = False
        self.copy_links = False
        self.copy_dirlinks = False
        self.copy_unsafe_links = False
        self.safe_links = False
        self.hard_links = False
        self.perms = False
        self.executability = False
        self.owner = False
        self.group = False
        self.devices = False
        self.specials = False
        self.times = False
        self.omit_dir_times = False
        self.omit_link_times = False
        self.checksum = False
        self.ignore_times = False
        self.size_only = False
        self.update = False
        self.whole_file = None
        self.inplace = False
        self.append = 0
        self.partial = False
        self.partial_dir = None
        self.delay_updates = False
        self.sparse = False
        self.relative = False
        self.implied_dirs = True
        self.one_file_system = 0
        self.numeric_ids = False
        self.cvs_exclude = False
        self.delete = False
        self.delete_mode = None
        self.delete_excluded = False
        self.force = False
        self.max_delete = None
        self.existing = False
        self.ignore_existing = False
        self.min_size = None
        self.max_size = None
        self.compress = False
        self.compress_choice = None
        self.compress_level = None
        self.skip_compress = None
        self.checksum_choice = None
        self.checksum_seed = 0
        self.block_size = 0
        self.timeout = 0
        self.bwlimit = 0
        self.modify_window = 0
        self.ignore_errors = False
        self.stats = False
        self.list_only = False
        self.prune_empty_dirs = False
        self.keep_dirlinks = False
        self.backup = False
        self.fuzzy = 0
        self.open_noatime = False
        self.client_info = ""
        self.protocol = PROTOCOL_VERSION
        self.log_format = None
        self.max_alloc = None
        self.super = False
        self.itemize = 0
        self.refused = []

    @property
    def preserve_specials(self):
        return self.specials


# Single letters of the packed option word: letter -> (attribute, value).
# A value of None means "count" (vv, HH, xx).
SERVER_LETTERS = {
    "v": ("verbose", None), "q": ("quiet", True), "n": ("dry_run", True),
    "l": ("links", True), "d": ("dirs", True), "L": ("copy_links", True),
    "k": ("copy_dirlinks", True), "K": ("keep_dirlinks", True), "W": ("whole_file", True),
    "H": ("hard_links", True), "o": ("owner", True), "g": ("group", True),
    "D": ("devices", True), "t": ("times", True), "p": ("perms", True),
    "E": ("executability", True), "r": ("recurse", True), "c": ("checksum", True),
    "C": ("cvs_exclude", True), "I": ("ignore_times", True), "R": ("relative", True),
    "x": ("one_file_system", None), "S": ("sparse", True), "u": ("update", True),
    "O": ("omit_dir_times", True), "J": ("omit_link_times", True), "m": ("prune_empty_dirs", True),
    "z": ("compress", True), "s": ("protect_args", True),
}

# Letters that stock rsync may send but that this server does not implement.
UNSUPPORTED_LETTERS = {
    "A": "--acls", "X": "--xattrs", "U": "--atimes", "N": "--crtimes",
    "b": "--backup", "y": "--fuzzy", "L": "--copy-links", "k": "--copy-dirlinks",
    "K": "--keep-dirlinks", "R": "--relative", "m": "--prune-empty-dirs",
}

# Long options: name -> (attribute, kind) with kind "flag", "int", "str", "noflag".
SERVER_LONG = {
    "server": ("server", "flag"), "sender": ("sender", "flag"), "daemon": ("daemon", "flag"),
    "numeric-ids": ("numeric_ids", "flag"), "inplace": ("inplace", "flag"),
    "checksum-choice": ("checksum_choice", "str"), "timeout": ("timeout", "int"),
    "bwlimit": ("bwlimit", "bwlimit"), "safe-links": ("safe_links", "flag"),
"specials": ("specials", "flag"),
    "no-specials": ("specials", "noflag"), "log-format": ("log_format", "str"),
    "out-format": ("log_format", "str"), "msgs2stderr": (None, "flag"),
    "no-msgs2stderr": (None, "flag"), "modify-window": ("modify_window", "int"),
    "checksum-seed": ("checksum_seed", "int"), "ignore-errors": ("ignore_errors", "flag"),
    "use-qsort": (None, "flag"), "no-relative": ("relative", "noflag"),
    "no-implied-dirs": ("implied_dirs", "noflag"), "list-only": ("list_only", "flag"),
    "no-r": ("recurse", "noflag"), "no-W": ("whole_file", "noflag"),
    "no-whole-file": ("whole_file", "noflag"), "open-noatime": ("open_noatime", "flag"),
    "max-alloc": ("max_alloc", "str"), "size-only": ("size_only", "flag"),
    "delete": ("delete", "flag"), "delete-before": ("delete_mode", "before"),
    "delete-during": ("delete_mode", "during"), "delete-delay": ("delete_mode", "delay"),
    "delete-after": ("delete_mode", "after"), "delete-excluded": ("delete_excluded", "flag"),
    "force": ("force", "flag"), "max-delete": ("max_delete", "int"),
    "existing": ("existing", "flag"), "ignore-existing": ("ignore_existing", "flag"),
    "min-size": ("min_size", "size"), "max-size": ("max_size", "size"),
    "stats": ("stats", "flag"), "partial": ("partial", "flag"),
    "super": ("super", "flag"), "block-size": ("block_size", "int"),
    "protocol": ("protocol", "int"),
    "compress-choice": ("compress_choice", "str"), "compress-level": ("compress_level", "int"),
    "new-compress": ("compress_choice", "zlibx"), "old-compress": ("compress_choice", "zlib"),
    "skip-compress": ("skip_compress", "str"), "compress": ("compress", "flag"),
}



def refusal_message(refused):
    return "%s: option not supported by this server" % ", ".join(refused)


def protect_args_requested(argv):
    """Whether the option words before the "." hold protect_args (-s): the
    client then sends the rest of its arguments on the connection."""
    for a in argv:
        if a == "." or a == "--" or not a.startswith("-"):
            return False
        if a.startswith("--"):
            continue
        for ch in a[1:]:
            if ch == "s":
                return True
            if ch in "eB":  # the rest of the word is this option's value
                break
    return False


def with_protected_args(argv, raw):
    """The argv to serve when protect_args_requested(argv): the option words
    that came before (up to the first other word: below protocol 30 the
    client writes its whole list there too, with "(null)" where the
    protected part starts) followed by the protected words."""
    n = 0
    while n < len(argv) and argv[n].startswith("-") and argv[n] != "--":
        n += 1
    return list(argv[:n]) + read_protected_args(raw)


def read_protected_args(raw, limit=1024):
    """send_protected_args: NUL-ended words up to an empty one, the first a
    stand-in argv[0] that is dropped. An empty argument comes as "."."""
    words = []
    while True:
        w = raw.read_line(MAX_PATH + 64, eol=b"\0")
        if not w:
            return [os.fsdecode(a) for a in words[1:]]
        if len(words) >= limit:
            raise ProtocolError("too many protected arguments", RERR_PROTOCOL)
        words.append(w)


def parse_server_args(argv, opts=None):
    """Parses the argv that an rsync client sends to its server. Returns
    (options, paths); paths keep the leading "." argument. Options we do not
    implement are collected in `options.refused` (parsing goes on, so the
    compat letters of `-e` are still known when the refusal is reported)."""
    opts = opts or Options()
    opts.refused = []
    paths = []
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if paths or not a.startswith("-") or a == "-":
            paths.append(a)
            continue
        if a == "--":
            paths.extend(argv[i:])
            break
        if a.startswith("--"):
            name, eq, value = a[2:].partition("=")
            if name not in SERVER_LONG:
                opts.refused.append("--" + name)
                continue
            attr, kind = SERVER_LONG[name]
            if kind in ("int", "str", "bwlimit", "size") and not eq:
                if i >= len(argv):
                    raise RsyncError("option --%s requires an argument" % name, RERR_SYNTAX)
                value = argv[i]
                i += 1
            if attr is None:
                continue
            if kind == "flag":
                setattr(opts, attr, True)
            elif kind == "noflag":
                setattr(opts, attr, False)
            elif kind == "int":
                try:
                    setattr(opts, attr, int(value))
                except ValueError:
                    raise RsyncError("invalid number for --%s: %s" % (name, value), RERR_SYNTAX) from None
            elif kind == "bwlimit":
                opts.bwlimit = parse_size(value, "K", name, 512, unlimited_0=True)
            elif kind == "size":
                setattr(opts, attr, parse_size(value, name=name))
            elif kind == "str":
                setattr(opts, attr, value)
            else:
                setattr(opts, attr, kind)
            if attr == "compress_choice":
                opts.compress = True
            if name.startswith("delete"):
                opts.delete = True
            continue
        letters = a[1:]
        j = 0
        while j < len(letters):
            c = letters[j]
            j += 1
            if c == "e":
                opts.client_info = letters[j:]
                break
            if c == "B":
                rest = letters[j:] or (argv[i] if i < len(argv) else "")
                if not letters[j:]:
                    i += 1
                try:
                    opts.block_size = int(rest)
                except ValueError:
                    raise RsyncError("invalid block size: %s" % rest, RERR_SYNTAX) from None
                break
            if c in UNSUPPORTED_LETTERS:
                opts.refused.append("-%s (%s)" % (c, UNSUPPORTED_LETTERS[c]))
                continue
            if c not in SERVER_LETTERS:
                opts.refused.append("-" + c)
                continue
            attr, value = SERVER_LETTERS[c]
            if value is None:
                setattr(opts, attr, getattr(opts, attr) + 1)
            else:
                setattr(opts, attr, value)
            if c == "D":
                opts.specials = True
    return opts, paths


_SIZE_MAX = float(1 << 62)  # rsync's SIZE_MAX / 2 on 64 bits
_SIZE_ARG = re.compile(r"(\d*(?:\.\d*)?)([bkmgtp]?)(b|ib)?([+-]1)?", re.IGNORECASE)


def parse_size(text, default_suffix="b", name="size", min_value=0, unlimited_0=False):
    """parse_size_arg of rsync's options: a number (fraction allowed), an
    optional unit b/k/m/g/t/p (DEFAULT_SUFFIX when none) of 1024s, or of
    1000s when followed by "b" ("ib" spells 1024s), and an optional "+1" or
    "-1" adjusting the result by one byte; no digits count as 0. Raises
    RsyncError (code 1) with rsync's wording when TEXT is none of that."""
    m = _SIZE_ARG.fullmatch(text)
    if m is None or (m.group(3) and not m.group(2)) or (m.group(4) and m.start(4) == 0):
        raise RsyncError("--%s=%s is invalid" % (name, text), RERR_SYNTAX)
    num, unit, base, adjust = m.groups()
    reps = "bkmgtp".index((unit or default_suffix).lower())
    mult = 1000 if base and base.lower() == "b" else 1024
    value = float(num) * mult ** reps if num.strip(".") else 0.0
    if not value < _SIZE_MAX:  # also infinity, from a long run of digits
        raise RsyncError("--%s=%s is too large" % (name, text), RERR_SYNTAX)
    size = int(value)
    if adjust:
        size += 1 if adjust[0] == "+" else -1
    if size < 0:
        raise RsyncError("--%s=%s is too large" % (name, text), RERR_SYNTAX)
    if size < min_value and not (unlimited_0 and size == 0):
        raise RsyncError("--%s=%s is too small (min: %d%s)" % (
            name, text, min_value, " or 0 for unlimited" if unlimited_0 else ""), RERR_SYNTAX)
    return size


# ----------------------------------------------------------------------------
# The session: version exchange, compat flags, negotiation, the seed, and
# the multiplexed message channel (compat.c setup_protocol, io.c).


class Stats:
    def __init__(self):
        self.total_read = 0
        self.total_written = 0
        self.total_size = 0
        self.flist_buildtime = 0
        self.flist_xfertime = 0
        self.num_files = 0
        self.num_dirs = 0
        self.num_symlinks = 0
        self.num_devices = 0
        self.num_specials = 0
        self.created_files = 0
        self.deleted_files = 0
        self.xferred_files = 0
        self.total_transferred_size = 0
        self.literal_data = 0
        self.matched_data = 0
        self.flist_size = 0


class Session:
    """One rsync conversation over a transport, in one role.

    Owns the wire streams and the state that the protocol version decides:
    `protocol`, `compat_flags`, `xfer_flags_as_varint`, `checksum_seed`,
    `proper_seed_order`, `use_safe_flist`, `id0_names`. `on_text(tag, text)`
    receives MSG_INFO/ERROR/WARNING/LOG text from the peer."""

    def __init__(self, transport, opts, am_server, am_sender, on_text=None, log=None, raw=None):
        self.transport = transport
        self.opts = opts
        self.am_server = am_server
        self.am_sender = am_sender
        self.out = Out(transport)
        self.out.bwlimit = getattr(opts, "bwlimit", 0) or 0
        self.raw = raw or RawIn(transport)
        self.raw.before_block = self.out.flush
        self.inp = In(self.raw)
        self.protocol = PROTOCOL_VERSION
        self.remote_protocol = 0
        self.compat_flags = 0
        self.xfer_flags_as_varint = False
        self.proper_seed_order = False
        self.use_safe_flist = False
        self.id0_names = False
        self.checksum_seed = 0
        self.checksums = None
        self.compression = None
        self.compress_level = None
        self.io_error = 0
        self.remote_io_error = 0
        self.stats = Stats()
        self.on_text = on_text
        self.log = log or (lambda msg: None)
        self.peer_exit = None
        self.mux_in = False
        self.on_deleted = None
        self.del_stats = [0, 0, 0, 0, 0]

    # -- the version exchange and setup

    def set_protocol(self, protocol):
        self.protocol = protocol
        self.out.protocol = protocol
        self.inp.protocol = protocol

    def exchange_versions(self, ours=PROTOCOL_VERSION):
        """The remote-shell start: both sides write their version as int32."""
        self.out.int32(min(ours, PROTOCOL_VERSION))
        self.out.flush()
        remote = self.inp.int32()
        self.remote_protocol = remote
        if remote < 20 or remote > 40:
            raise RsyncError("protocol version mismatch -- is your shell clean?\n"
                             "(see the rsync manpage for an explanation)", RERR_PROTOCOL)
        self.set_protocol(min(ours, remote))

    def setup_protocol(self):
        """compat flags (>= 30), checksum negotiation, the checksum seed."""
        p, opts = self.protocol, self.opts
        if p < MIN_PROTOCOL_VERSION:
            raise RsyncError("protocol version %d is older than %d, which this program needs"
                             % (p, MIN_PROTOCOL_VERSION), RERR_PROTOCOL)
        do_negotiation = False
        if p >= 30:
            if self.am_server:
                info = opts.client_info
                cf = CF_SYMLINK_TIMES if hasattr(os, "utime") else 0
                for letter, bit in (("f", CF_SAFE_FLIST), ("x", CF_AVOID_XATTR_OPTIM),
                                    ("C", CF_CHKSUM_SEED_FIX), ("I", CF_INPLACE_PARTIAL_DIR),
                                    ("u", CF_ID0_NAMES), ("v", CF_VARINT_FLIST_FLAGS)):
                    if letter in info:
                        cf |= bit
                self.compat_flags = cf
                self.out.varint(cf)
            else:
                self.compat_flags = self.inp.varint()
                if self.compat_flags & CF_INC_RECURSE:
                    raise RsyncError("the server chose incremental recursion, which we did not offer",
                                     RERR_PROTOCOL)
            cf = self.compat_flags
            do_negotiation = bool(cf & CF_VARINT_FLIST_FLAGS)
            self.xfer_flags_as_varint = do_negotiation
            self.proper_seed_order = bool(cf & CF_CHKSUM_SEED_FIX)
            self.id0_names = bool(cf & CF_ID0_NAMES)
            self.use_safe_flist = bool(cf & CF_SAFE_FLIST) or p >= 31
        ours = available_checksums()
        compressions = compression_list(self.am_server) if opts.compress else []
        want_csum_list = do_negotiation and not opts.checksum_choice
        want_zip_list = do_negotiation and opts.compress and not opts.compress_choice
        if want_csum_list:
            self.out.vstring(" ".join(ours).encode())
        if want_zip_list:
            self.out.vstring(" ".join(compressions).encode())
        self.out.flush()
        if opts.checksum_choice:
            xfer, _, filesum = opts.checksum_choice.partition(",")
            xfer = CHECKSUM_ALIASES.get(xfer, xfer)
            filesum = CHECKSUM_ALIASES.get(filesum, filesum) if filesum else xfer
            for n in (xfer, filesum):
                if n == "auto":
                    continue
                if n not in ours:
                    raise RsyncError("unknown checksum name: %s" % n, RERR_UNSUPPORTED)
            default = "md5" if p >= 30 else "md4"
            xfer = default if xfer == "auto" else xfer
            filesum = default if filesum == "auto" else filesum
        elif do_negotiation:
            theirs = self.inp.vstring(1024).decode("ascii", "replace")
            xfer = negotiate_pick(ours, theirs)
            if xfer is None:
                raise RsyncError("Failed to negotiate a checksum choice.\n%s list: %s\n%s list: %s"
                                 % ("Client" if self.am_server else "Server", theirs,
                                    "Server" if self.am_server else "Client", " ".join(ours)),
                                 RERR_UNSUPPORTED)
            filesum = xfer
        else:
            xfer = filesum = "md5" if p >= 30 else "md4"
        self.compression = None
        if opts.compress:
            if opts.compress_choice:
                method = opts.compress_choice.lower()
                if method in ("auto",):
                    method = "zlib" if not do_negotiation else None
                if method is not None and method != "none" and method not in compressions:
                    raise RsyncError("unknown compress name: %s" % opts.compress_choice, RERR_UNSUPPORTED)
            elif want_zip_list:
                theirs = self.inp.vstring(1024).decode("ascii", "replace")
                method = _compress().pick_compression(compressions, theirs, server=self.am_server)
                if method is None:
                    raise RsyncError("Failed to negotiate a compress choice.\n%s list: %s\n%s list: %s"
                                     % ("Client" if self.am_server else "Server", theirs,
                                        "Server" if self.am_server else "Client", " ".join(compressions)),
                                     RERR_UNSUPPORTED)
            else:
                method = "zlib"
            if method and method != "none":
                level = _compress().compression_level(method, opts.compress_level)
                if not (level is None and method in ("zlib", "zlibx")):
                    self.compression = method
                    self.compress_level = opts.compress_level
        implied = not do_negotiation and (not opts.checksum_choice or opts.checksum_choice.startswith("auto"))
        legacy_md4 = p < 30 and implied
        md5_seed_first = not (implied and not self.proper_seed_order)
        if self.am_server:
            seed = opts.checksum_seed or ((int(time.time()) ^ (os.getpid() << 6)) & 0x7FFFFFFF)
            self.out.int32(seed)
        else:
            self.out.flush()
            seed = self.inp.int32()
        self.checksum_seed = seed
        self.checksums = Checksums(xfer, filesum, seed, md5_seed_first, p, legacy_md4)
        if xfer == "none":
            opts.whole_file = True

    def start_mux_out(self):
        self.out.flush()
        self.out.multiplexed = True

    def start_mux_in(self):
        self.inp.src = Demux(self.raw, self._on_message)
        self.mux_in = True

    # -- messages

    def _on_message(self, tag, payload):
        if tag in (MSG_INFO, MSG_ERROR, MSG_WARNING, MSG_ERROR_XFER, MSG_LOG, MSG_CLIENT,
                   MSG_ERROR_SOCKET, MSG_ERROR_UTF8):
            if self.on_text:
                self.on_text(tag, payload)
            if tag in (MSG_ERROR_XFER,):
                self.remote_io_error |= IOERR_GENERAL
            return
        if tag == MSG_NOOP:
            return
        if tag == MSG_IO_ERROR and len(payload) == 4:
            self.remote_io_error |= struct.unpack("<i", payload)[0]
            return
        if tag == MSG_IO_TIMEOUT and len(payload) == 4:
            return
        if tag == MSG_ERROR_EXIT:
            code = struct.unpack("<i", payload)[0] if len(payload) == 4 else 0
            self.peer_exit = code
            raise RemoteExit("the peer exited with code %d" % code, code or RERR_PARTIAL)
        if tag == MSG_NO_SEND and len(payload) == 4:
            self.on_no_send(struct.unpack("<i", payload)[0])
            return
        if tag == MSG_DELETED:
            if self.on_deleted is not None:
                self.on_deleted(payload)
            return
        if tag == MSG_STATS:
            return
        raise ProtocolError("unexpected tag %d from the peer" % tag)

    def on_no_send(self, ndx):
        pass

    def send_text(self, tag, text):
        """rprintf to the peer: INFO, ERROR, WARNING (the last two need 30)."""
        if isinstance(text, str):
            text = text.encode("utf-8", "surrogateescape")
        if not text.endswith(b"\n"):
            text += b"\n"
        if self.protocol < 30:
            if tag == MSG_ERROR:
                tag = MSG_ERROR_XFER
            elif tag == MSG_WARNING:
                tag = MSG_INFO
        if self.out.multiplexed:
            self.out.msg(tag, text)

    def send_io_error(self):
        if self.protocol >= 30:
            self.out.msg(MSG_IO_ERROR, struct.pack("<i", self.io_error))

    def fatal(self, err):
        """Reports a fatal error to the peer as rsync does, then says goodbye."""
        code = err.code if isinstance(err, RsyncError) else RERR_STREAMIO
        try:
            if self.out.multiplexed:
                text = str(err)
                self.send_text(MSG_ERROR, text if text.startswith(("ERROR", "rsync", "@ERROR")) else "rsync: " + text)
                self.send_text(MSG_ERROR, "rsync error: %s (code %d) at %s [%s=%s]" % (
                    RERR_NAMES.get(code, "unexplained error"), code, "gokr-rsync",
                    "sender" if self.am_sender else "receiver", VERSION))
                if self.protocol >= 31 and code not in (RERR_SOCKETIO, RERR_STREAMIO, RERR_TIMEOUT):
                    self.out.msg(MSG_ERROR_EXIT, struct.pack("<i", code))
                self.out.flush()
        except (RsyncError, OSError):
            pass
        return code

    # -- index and attributes (rsync.c read_ndx_and_attrs)

    def read_ndx_and_attrs(self, nfiles):
        """The next request: (ndx, iflags, basis_type, xname); negatives pass
        through. NDX_DEL_STATS is consumed (and returned as a tuple)."""
        inp = self.inp
        while True:
            ndx = inp.ndx()
            if ndx == NDX_DONE:
                return ndx, 0, FNAMECMP_FNAME, None
            if ndx == NDX_DEL_STATS:
                return ndx, [inp.varint() for _ in range(5)], None, None
            if ndx < 0:
                raise ProtocolError("Invalid file index: %d (%d - %d)" % (ndx, NDX_DONE, nfiles - 1),
                                    RERR_PROTOCOL)
            if self.protocol >= 29:
                iflags = inp.shortint()
            else:
                iflags = ITEM_TRANSFER | ITEM_MISSING_DATA
            if self.protocol < 30 and ndx == nfiles and iflags == ITEM_IS_NEW:
                continue
            if ndx >= nfiles:
                raise ProtocolError("Invalid file index: %d (%d - %d)" % (ndx, NDX_DONE, nfiles - 1),
                                    RERR_PROTOCOL)
            basis = inp.byte() if iflags & ITEM_BASIS_TYPE_FOLLOWS else FNAMECMP_FNAME
            xname = inp.vstring() if iflags & ITEM_XNAME_FOLLOWS else None
            return ndx, iflags, basis, xname

    def write_ndx_and_attrs(self, ndx, iflags, basis=FNAMECMP_FNAME, xname=None):
        out = self.out
        out.ndx(ndx)
        if self.protocol >= 29:
            out.shortint(iflags)
            if iflags & ITEM_BASIS_TYPE_FOLLOWS:
                out.byte(basis)
            if iflags & ITEM_XNAME_FOLLOWS:
                out.vstring(xname or b"")

    # -- sum headers (match.c / sender.c receive_sums, generator.c write_sum_head)

    def read_sum_head(self):
        """(count, blength, s2length, remainder), each checked as rsync does
        before anything is allocated."""
        p = self.protocol
        count, blength, s2length, remainder = _SUM_HEAD.unpack(self.inp.read(16))
        max_blength = MAX_BLOCK_SIZE if p >= 30 else OLD_MAX_BLOCK_SIZE
        if count < 0:
            raise ProtocolError("Invalid checksum count %d" % count)
        if blength < 0 or blength > max_blength:
            raise ProtocolError("Invalid block length %d" % blength)
        if s2length < 0 or s2length > self.checksums.xfer_len:
            raise ProtocolError("Invalid checksum length %d" % s2length)
        if remainder < 0 or remainder > blength:
            raise ProtocolError("Invalid remainder length %d" % remainder)
        if count > 0 and blength == 0:
            raise ProtocolError("Invalid block length 0 with %d blocks" % count)
        if count > (1 << 31) // max(blength, 1) + 1 and count * (4 + s2length) > (1 << 30):
            raise ProtocolError("checksum count %d is too large" % count, RERR_MALLOC)
        return count, blength, s2length, remainder

    def write_sum_head(self, count, blength, s2length, remainder):
        self.out.write(_SUM_HEAD.pack(count, blength, s2length, remainder))

    def read_sums(self, count, s2length):
        """The block sums: count × (int32 sum1 + s2length bytes), read in slices."""
        sum1s = array.array("I")
        sum2s = []
        rec = 4 + s2length
        per = max(1, (1 << 20) // rec)
        left = count
        while left:
            n = min(left, per)
            data = self.inp.read(n * rec)
            if s2length:
                mv = memoryview(data)
                sum1s.extend(struct.unpack("<%dI" % n, b"".join(bytes(mv[k:k + 4]) for k in range(0, n * rec, rec))))
                sum2s.extend(bytes(mv[k + 4:k + rec]) for k in range(0, n * rec, rec))
            else:
                sum1s.extend(struct.unpack("<%dI" % n, data))
                sum2s.extend([b""] * n)
            left -= n
        return sum1s, sum2s


# ----------------------------------------------------------------------------
# The sender's view of the file system: everything is opened relative to a
# directory descriptor, one component at a time, never following a symlink,
# so a path checked once cannot be swapped for a link before it is used.

O_DIR = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_NOATIME = getattr(os, "O_NOATIME", 0)


def split_path(path):
    """Components of a relative path, without empty and "." parts; ".." is refused."""
    parts = [p for p in path.split(b"/") if p and p != b"."]
    if b".." in parts:
        raise RsyncError("path contains '..': %s" % _show(path), RERR_FILESELECT)
    return parts


def open_dir_beneath(dirfd, parts):
    """Opens a directory below dirfd, refusing to follow any symlink."""
    fd = os.dup(dirfd)
    try:
        for part in parts:
            nfd = os.open(part, O_DIR | O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


class DirCache:
    """Keeps the last directory opened below a root, since files come in
    directory order."""

    def __init__(self, rootfd):
        self.rootfd = rootfd
        self.parts = None
        self.fd = -1

    def get(self, parts):
        if parts != self.parts:
            self.close()
            self.fd = open_dir_beneath(self.rootfd, parts)
            self.parts = parts
        return self.fd

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = -1
        self.parts = None


def _errtext(e):
    return "%s (%d)" % (os.strerror(e.errno), e.errno) if getattr(e, "errno", None) else str(e)


def recv_filter_rules(sess):
    """The client's rules: int32 length + text each, a zero length ends them."""
    rules = []
    while True:
        n = sess.inp.int32()
        if n == 0:
            return rules
        if n < 0 or n >= MAX_PATH + 1024:
            raise ProtocolError("filter rule length %d out of range" % n, RERR_PROTOCOL)
        if len(rules) >= 100_000:
            raise ProtocolError("too many filter rules", RERR_PROTOCOL)
        rules.append(sess.inp.read(n))


def send_filter_rules(sess, rules):
    for r in rules:
        sess.out.int32(len(r))
        sess.out.write(r)
    sess.out.int32(0)


def make_filters(rules, protocol, opts):
    """The server's FilterList from the client's wire rules, or None."""
    if not rules and not opts.cvs_exclude:
        return None
    import rsync_filter
    fl = rsync_filter.FilterList(protocol=protocol)
    try:
        for r in rules:
            for rule in rsync_filter.parse_wire_rule(r, protocol):
                fl.add(rule)
    except rsync_filter.FilterError as e:
        raise RsyncError(str(e), RERR_PROTOCOL) from None
    if opts.cvs_exclude:
        fl.add_cvs_exclude(server=True, sender=opts.sender)
    return fl


# ----------------------------------------------------------------------------
# The server side of a session (main.c start_server, do_server_sender).


def run_server(transport, argv, root, *, confined, remote_protocol=None, log=None,
               io_timeout=0, daemon_filters=None, am_daemon=False, root_shown="", raw=None, module=None,
               writable=True, refusal=None, numeric_ids=False, ignore_errors=False):
    """Serves one `rsync --server ...` session on `transport` and returns the
    exit code. `root` is the directory paths are relative to; with
    `remote_protocol` the version came in the daemon greeting, otherwise the
    4-byte exchange of a remote shell starts the session."""
    log = log or (lambda msg: None)
    if remote_protocol is None and protect_args_requested(argv):
        raw = raw or RawIn(transport)
        argv = with_protected_args(argv, raw)
    opts, paths = parse_server_args(argv)
    opts.daemon_numeric_ids = numeric_ids
    opts.ignore_errors = opts.ignore_errors or ignore_errors
    sess = Session(transport, opts, am_server=True, am_sender=opts.sender, log=log, raw=raw)
    if opts.protocol and opts.protocol < PROTOCOL_VERSION:
        ours = max(opts.protocol, MIN_PROTOCOL_VERSION)
    else:
        ours = PROTOCOL_VERSION
    try:
        if remote_protocol is None:
            sess.exchange_versions(ours)
        else:
            sess.set_protocol(min(ours, remote_protocol))
        sess.setup_protocol()
        sess.start_mux_out()
        if am_daemon and io_timeout and sess.protocol >= 31:
            sess.out.msg(MSG_IO_TIMEOUT, struct.pack("<i", io_timeout))
        if refusal:
            raise RsyncError(refusal, RERR_SYNTAX if refusal.startswith("ERROR: module") else RERR_UNSUPPORTED)
        if opts.refused:
            raise RsyncError(refusal_message(opts.refused), RERR_UNSUPPORTED)
        if not opts.sender and not writable:
            raise RsyncError("ERROR: module is read only", RERR_SYNTAX)
        if opts.timeout and hasattr(transport, "set_timeout"):
            transport.set_timeout(opts.timeout)
        if sess.protocol >= 30:
            sess.start_mux_in()
        receiver_wants_list = opts.prune_empty_dirs or (
            opts.delete and (not opts.delete_excluded or sess.protocol >= 29))
        rules = recv_filter_rules(sess) if opts.sender or receiver_wants_list else []
        filters = make_filters(rules, sess.protocol, opts)
        if not opts.sender:
            import rsync_receiver
            return rsync_receiver.serve_receiver(sess, paths, root, confined, filters, log, daemon_filters)
        import rsync_sender
        return rsync_sender.serve_sender(sess, paths, root, confined, filters, log, root_shown,
                                         daemon_filters, module)
    except RemoteExit as e:
        return e.code
    except ConnectionClosed as e:
        log("connection closed: %s" % e)
        return e.code
    except RsyncError as e:
        log("error: %s" % e)
        code = sess.fatal(e)
        _drain(transport)
        return code
    except OSError as e:
        log("error: %s" % e)
        code = sess.fatal(RsyncError(_errtext(e), RERR_FILEIO))
        _drain(transport)
        return code
    except Exception as e:  # a bug must not look like a clean end to the client
        log("internal error: %r" % e)
        code = sess.fatal(RsyncError("internal error in the server: %r" % e, RERR_STREAMIO))
        _drain(transport)
        return code


def _drain(transport, seconds=2.0):
    """noop_io_until_death: give the peer a moment to read our last words."""
    try:
        transport.shutdown_write()
        deadline = time.monotonic() + seconds
        if hasattr(transport, "set_timeout"):
            transport.set_timeout(seconds)
        while time.monotonic() < deadline:
            if not transport.recv(65536):
                break
    except (RsyncError, OSError):
        pass


DROP_EVERY = 8 << 20


def _drop_pages(buf, start, end):
    """Gives back the mapped pages of [start, end) (they stay in the page
    cache and fault in again if read), so resident memory does not grow
    with the size of the file. Returns the new low-water mark.

    Callers pass start 0 rather than the last mark: a page cache of large
    folios maps a whole folio when any byte of it is read, so pages behind
    the mark come back and would otherwise stay."""
    madvise = getattr(buf, "madvise", None)
    page = mmap.PAGESIZE
    start -= start % page
    end -= end % page
    if madvise is not None and end > start:
        try:
            madvise(mmap.MADV_DONTNEED, start, end - start)
        except (OSError, ValueError):
            pass
    return max(start, end)
