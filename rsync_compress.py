"""File data on the wire: rsync's token streams, plain or compressed (-z).

A file's data goes from sender to receiver as literal bytes and references
to blocks of the receiver's basis file, ended by an end token.

Plain: int32 n > 0 and n literal bytes (at most 32 KiB per token), int32
-(i + 1) for basis block i, int32 0 at the end.

Compressed (zlib, zlibx, zstd, lz4), one flag byte per item:
    0x00                       end of the file
    0x40 | n >> 8, n & 0xff    n (< 16384) bytes of compressed literal data
    0x20 + int32 i             block i
    0x21 + int32 i + int16 r   blocks i .. i + r
    0x80 + d                   block last + d (d < 64), where last is the
                               final block of the previous run (0 at the start)
    0xc0 + d + int16 r         blocks last + d .. last + d + r
The int16 counts are little-endian; a run holds at most 65536 blocks.

zlib: one raw deflate stream per file. Each stretch of literal data ends
with a sync flush whose closing 00 00 ff ff is left off (the receiver puts
it back before the next flag). Matched blocks enter the history on both
sides: the receiver inflates them as stored blocks of at most 0xffff bytes
(below protocol 31 every such piece of a longer block starts at the block's
first byte), and the sender makes its deflater agree. zlibx: the same
without the matched blocks in the history. zstd: one stream for the whole
session, flushed before every block reference and end. lz4: every frame is
a raw lz4 block of at most 16383 input bytes, decoded on its own.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable
from functools import lru_cache

from rsync import ProtocolError

try:
    import zstandard
except ImportError:  # pragma: no cover - depends on the installation
    zstandard = None
try:
    import lz4.block as lz4_block
except ImportError:  # pragma: no cover - depends on the installation
    lz4_block = None

__all__ = ["METHODS", "TokenWriter", "TokenReader", "available_compressions", "pick_compression",
           "compression_level", "skip_compression_level", "default_skip_compress", "SkipCompress",
           "skip_compress_rules", "skip_compress"]

METHODS = ("zstd", "lz4", "zlibx", "zlib")
"""Every compression rsync knows, in its order of preference."""

CHUNK_SIZE = 32 * 1024
MAX_DATA_COUNT = 16383
END_FLAG = 0x00
TOKEN_LONG = 0x20
TOKENRUN_LONG = 0x21
DEFLATED_DATA = 0x40
TOKEN_REL = 0x80
TOKENRUN_REL = 0xC0
MAX_TOKEN_INDEX = 0x7FFFFFFE
MAX_RUN = 0xFFFF
HISTORY = 32 * 1024
STORED_MAX = 0xFFFF
SYNC_TAIL = b"\x00\x00\xff\xff"
EMPTY_STORED = b"\x00\x00\x00\xff\xff"
LZ4_OUT_MAX = CHUNK_SIZE + CHUNK_SIZE // 255 + 16
ZSTD_BLOCK_MAX = 128 * 1024
ZSTD_WINDOW_MAX = 1 << 27
INFLATE_PIECE = 256 * 1024

_LEVELS = {  # method: (least, most, default, the level that turns compression off)
    "zlib": (1, 9, 6, 0),
    "zlibx": (1, 9, 6, 0),
    "zstd": (-131072, 22, 3, None),
    "lz4": (0, 0, 0, None),
}
_SKIP_LEVELS = {"zlib": 0, "zlibx": 0, "zstd": -131072, "lz4": 0}


# ----------------------------------------------------------------------------
# Negotiation and levels


def available_compressions(server: bool = False) -> list[str]:
    """Our compression names in rsync's order, as sent in the negotiation
    string; a server's list ends with "none"."""
    names = [m for m in METHODS
             if not (m == "zstd" and zstandard is None) and not (m == "lz4" and lz4_block is None)]
    return names + ["none"] if server else names


def pick_compression(ours: list[str], theirs_str: str, server: bool = False) -> str | None:
    """The compression both sides settle on, given the peer's list.

    A client takes its own most-preferred name that the server lists (what
    rsync 3.5.0 does on both sides); a server takes the client's first name
    it supports, which agrees with clients before and after 3.5.0. Names
    compare without case. "none" means no compression; None: no common name
    (rsync then fails with exit code 4)."""
    mine = [n.lower() for n in ours]
    theirs = [n.lower() for n in theirs_str.split()]
    if server:
        return next((n for n in theirs if n in mine), None)
    return next((n for n in mine if n in theirs), None)


def compression_level(method: str, level: int | None = None) -> int | None:
    """The level `method` runs at for --compress-level=level (None: not
    given), settled as rsync does: the method's default when not given (and
    for -1 with zlib, 0 with zstd), clamped into the method's range; None
    when the level turns compression off (0 with zlib and zlibx)."""
    least, most, default, off = _LEVELS[method]
    if level is None:
        return default
    if method in ("zlib", "zlibx") and level == -1:
        return default
    if method == "zstd" and level == 0:
        return default
    if off is not None and level == off:
        return None
    return min(max(level, least), most)


def skip_compression_level(method: str) -> int:
    """The least compressing level of `method` (rsync's skip-compress level)."""
    return _SKIP_LEVELS[method]


# ----------------------------------------------------------------------------
# Which files are not worth compressing

DEFAULT_DONT_COMPRESS = (
    "*.3g2 *.3gp *.7z *.aac *.ace *.apk *.avi *.bz2 *.deb *.dmg *.ear *.f4v *.flac *.flv *.gpg "
    "*.gz *.iso *.jar *.jpeg *.jpg *.lrz *.lz *.lz4 *.lzma *.lzo *.m1a *.m1v *.m2a *.m2ts *.m2v "
    "*.m4a *.m4b *.m4p *.m4r *.m4v *.mka *.mkv *.mov *.mp1 *.mp2 *.mp3 *.mp4 *.mpa *.mpeg *.mpg "
    "*.mpv *.mts *.odb *.odf *.odg *.odi *.odm *.odp *.ods *.odt *.oga *.ogg *.ogm *.ogv *.ogx "
    "*.opus *.otg *.oth *.otp *.ots *.ott *.oxt *.png *.qt *.rar *.rpm *.rz *.rzip *.spx "
    "*.squashfs *.sxc *.sxd *.sxg *.sxm *.sxw *.sz *.tbz *.tbz2 *.tgz *.tlz *.ts *.txz *.tzo "
    "*.vob *.war *.webm *.webp *.xz *.z *.zip *.zst")
_MAX_SUFFIX = 32


def default_skip_compress() -> str:
    """rsync's default "dont compress" list: space-separated wildcards."""
    return DEFAULT_DONT_COMPRESS


def _as_bytes(text) -> bytes:
    return text.encode("utf-8", "surrogateescape") if isinstance(text, str) else bytes(text)


def _suffix_regex(suffix: bytes) -> bytes:
    """A suffix where [abc] is a set of letters; a "[" without a closing
    "]", or "[]", is a plain "["."""
    out = []
    i = 0
    while i < len(suffix):
        c = suffix[i:i + 1]
        close = suffix.find(b"]", i + 1) if c == b"[" else -1
        if close > i + 1:
            out.append(b"[" + b"".join(re.escape(suffix[j:j + 1]) for j in range(i + 1, close)) + b"]")
            i = close + 1
            continue
        out.append(re.escape(c))
        i += 1
    return b"".join(out)


class SkipCompress:
    """A compiled skip-compress list.

    `dont_compress` is the daemon parameter's form (space-separated; "*"
    alone matches every file; "*.SUFFIX" with no ".", "?" or "*" in SUFFIX is
    a suffix, anything else a wildcard matched against the file's last
    component), `suffixes` the --skip-compress form ("gz/jpg/mp[34]":
    suffixes split at "/", where "*" and "?" are plain letters). Matching
    ignores ASCII case; a suffix is what follows the last dot of the last
    component, when that dot is not its first character."""

    def __init__(self, dont_compress: str | bytes = "", suffixes: str | bytes | None = None):
        self.everything = False
        self.wildcards: list[bytes] = []
        found: list[bytes] = []
        for word in _as_bytes(suffixes or b"").lower().split(b"/"):
            if word:
                found.append(word[:_MAX_SUFFIX])
        for word in _as_bytes(dont_compress).lower().split(b" "):
            if not word:
                continue
            if word == b"*":
                self.everything = True
                break
            if word.startswith(b"*.") and len(word) > 2 and not re.search(rb"[.?*]", word[2:]):
                found.append(word[2:])
            else:
                self.wildcards.append(word)
        self.suffixes = found
        self._suffix_re = (re.compile(b"(?:" + b"|".join(_suffix_regex(s) for s in found) + b")")
                           if found else None)

    def __call__(self, name: bytes) -> bool:
        if self.everything:
            return True
        base = _as_bytes(name).rsplit(b"/", 1)[-1].lower()
        if self.wildcards:
            from rsync_filter import wildmatch
            if any(wildmatch(w, base) for w in self.wildcards):
                return True
        dot = base.rfind(b".")
        if self._suffix_re is None or dot <= 0 or dot == len(base) - 1:
            return False
        return self._suffix_re.fullmatch(base[dot + 1:]) is not None


def skip_compress_rules(option: str | bytes | None = None, dont_compress: str | bytes | None = None,
                        daemon: bool = False) -> SkipCompress:
    """The list a transfer uses: outside a daemon, --skip-compress (`option`)
    replaces the default list; a daemon module's "dont compress" value
    (the default list unless set) always applies, with --skip-compress added."""
    if option is not None and not daemon:
        return SkipCompress("", option)
    return SkipCompress(DEFAULT_DONT_COMPRESS if dont_compress is None else dont_compress, option)


@lru_cache(maxsize=32)
def _compiled(patterns: bytes) -> SkipCompress:
    return SkipCompress(patterns)


def skip_compress(name: bytes, patterns) -> bool:
    """Whether a file called `name` should be sent uncompressed: `patterns`
    is a SkipCompress or a "dont compress" string (e.g. default_skip_compress())."""
    if not isinstance(patterns, SkipCompress):
        patterns = _compiled(_as_bytes(patterns))
    return patterns(name)


# ----------------------------------------------------------------------------
# Writing


def _byte_view(data) -> memoryview:
    mv = memoryview(data)
    return mv if mv.format == "B" and mv.ndim == 1 else mv.cast("B")


def _history_pieces(mv: memoryview, protocol: int):
    """A matched block as it enters the deflate history: pieces of at most
    0xffff bytes; below protocol 31 each piece starts at the block's start."""
    left, off = len(mv), 0
    while left > 0:
        n = min(left, STORED_MAX)
        yield mv[off:off + n]
        left -= n
        if protocol >= 31:
            off += n


def _check_method(method):
    if method not in (None,) + METHODS:
        raise ValueError("unknown compression method %r" % (method,))
    if method == "zstd" and zstandard is None:
        raise ValueError("zstd needs the zstandard package")
    if method == "lz4" and lz4_block is None:
        raise ValueError("lz4 needs the lz4 package")


class TokenWriter:
    """Encodes each file's literals and block references as `method` puts
    them on the wire (None: plain tokens), handing the bytes to write() in
    order. write() must use or copy its argument before it returns.

    Per file: begin_file(), then literal() and block() in file order, then
    end_file(); the caller sends the whole-file checksum after that.

    zlib keeps the receiver's inflate history in step without zlib's
    Z_INSERT_ONLY: after a sync flush the deflate stream sits on a byte
    boundary, so what follows the matched blocks may come from a new raw
    deflater whose preset dictionary is the last 32 KiB of the file's data
    as the receiver has it (literals and matched blocks). When only a few
    matched bytes separate two literals, deflating them into the running
    stream and discarding that output up to a sync flush is cheaper and has
    the same effect (rsync built against a stock zlib does that).
    DICT_AFTER is the number of matched bytes between two literals from
    which the preset dictionary is used."""

    DICT_AFTER = 2 * 1024

    def __init__(self, method: str | None, write: Callable[[bytes | memoryview], None],
                 level: int | None = None, protocol: int = 32):
        _check_method(method)
        self.method = method
        self.protocol = protocol
        self._write = write
        self.level = None
        if method is not None:
            self.level = compression_level(method, level)
            if self.level is None:
                raise ValueError("compression level %r turns %s off: use method None" % (level, method))
        self._zstd = None
        if method == "zstd":
            self._zstd = zstandard.ZstdCompressor(level=self.level).compressobj()
        self._in_file = False

    def begin_file(self, compress: bool = True) -> None:
        """Starts a file. compress=False (the file matched the skip-compress
        list): zlib and zlibx store this file's literals uncompressed (level
        0, still deflate framing); zstd and lz4 compress it as usual, since
        a level cannot change inside rsync's zstd stream and lz4 has none.
        rsync 3.5.0 itself ignores --skip-compress."""
        self._in_file = True
        self._run_start = None
        self._last = -1
        self._last_run_end = 0
        self._dirty = False
        self._obuf = bytearray()
        if self.method in ("zlib", "zlibx"):
            self._file_level = self.level if compress else 0
            self._deflater = None
            self._window = bytearray()
            self._gap = 0
            self._inserted = False
        elif self.method == "lz4":
            self._lbuf = bytearray()

    def literal(self, data) -> None:
        """Literal bytes of the file, any amount."""
        self._need_file()
        mv = _byte_view(data)
        n = len(mv)
        if not n:
            return
        if self.method is None:
            for i in range(0, n, CHUNK_SIZE):
                piece = mv[i:i + CHUNK_SIZE]
                self._write(struct.pack("<i", len(piece)))
                self._write(piece)
            return
        self._put_run()
        if self.method == "lz4":
            self._lz4_literal(mv)
            return
        if self.method == "zstd":
            compress = self._zstd.compress
        else:
            compress = self._deflater_for_literal().compress
        for i in range(0, n, CHUNK_SIZE):
            self._obuf += compress(mv[i:i + CHUNK_SIZE])
            self._emit_full()
        if self.method == "zlib":
            self._remember(mv)
        self._dirty = True

    def block(self, index: int, data) -> None:
        """A reference to basis block `index`, whose content is `data`."""
        self._need_file()
        if not 0 <= index <= MAX_TOKEN_INDEX:
            raise ValueError("block index %d out of range" % index)
        if self.method is None:
            self._write(struct.pack("<i", -(index + 1)))
            return
        if self._dirty:
            self._flush_data()
        if self._run_start is not None and (index != self._last + 1 or index > self._run_start + MAX_RUN):
            self._put_run()
        if self._run_start is None:
            self._run_start = index
        self._last = index
        if self.method == "zlib":
            self._insert(_byte_view(data))

    def end_file(self) -> None:
        """The end token (after the data still held back)."""
        self._need_file()
        self._in_file = False
        if self.method is None:
            self._write(b"\0\0\0\0")
            return
        if self._dirty:
            self._flush_data()
        self._put_run()
        self._write(b"\0")
        self._deflater = self._window = self._obuf = None

    # -- internals

    def _need_file(self):
        if not self._in_file:
            raise RuntimeError("begin_file() must come first")

    def _frame(self, payload):
        n = len(payload)
        self._write(bytes((DEFLATED_DATA | n >> 8, n & 0xFF)))
        self._write(payload)

    def _emit_full(self):
        buf = self._obuf
        if len(buf) < MAX_DATA_COUNT:
            return
        whole = len(buf) - len(buf) % MAX_DATA_COUNT
        for i in range(0, whole, MAX_DATA_COUNT):
            self._frame(buf[i:i + MAX_DATA_COUNT])
        del buf[:whole]

    def _emit_all(self, data):
        for i in range(0, len(data), MAX_DATA_COUNT):
            self._frame(data[i:i + MAX_DATA_COUNT])

    def _put_run(self):
        """The pending run of consecutive blocks, as one flag (+ index, count)."""
        start = self._run_start
        if start is None:
            return
        count = self._last - start
        rel = start - self._last_run_end
        if 0 <= rel <= 63:
            head = bytes(((TOKENRUN_REL if count else TOKEN_REL) + rel,))
        else:
            head = bytes((TOKENRUN_LONG if count else TOKEN_LONG,)) + struct.pack("<i", start)
        if count:
            head += struct.pack("<H", count)
        self._write(head)
        self._last_run_end = self._last
        self._run_start = None

    def _flush_data(self):
        """Ends a stretch of literal data: everything compressed so far goes out."""
        self._dirty = False
        if self.method == "lz4":
            self._lz4_frames(bytes(self._lbuf))
            self._lbuf.clear()
            return
        if self.method == "zstd":
            self._obuf += self._zstd.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
            self._emit_all(self._obuf)
            self._obuf = bytearray()
            return
        out = self._obuf + self._deflater.flush(zlib.Z_SYNC_FLUSH)
        if out[-4:] != SYNC_TAIL:
            raise AssertionError("zlib's sync flush did not end with 00 00 ff ff")
        del out[-4:]
        self._emit_all(out)
        self._obuf = bytearray()

    def _lz4_literal(self, mv):
        """Frames of 16383 input bytes; a shorter rest waits for more."""
        buf = self._lbuf
        if buf:
            take = min(MAX_DATA_COUNT - len(buf), len(mv))
            buf += mv[:take]
            mv = mv[take:]
            if len(buf) < MAX_DATA_COUNT:
                self._dirty = True
                return
            self._lz4_frames(bytes(buf))
            buf.clear()
        whole = len(mv) - len(mv) % MAX_DATA_COUNT
        self._lz4_frames(mv[:whole])
        buf += mv[whole:]
        self._dirty = bool(buf)

    def _lz4_frames(self, mv):
        pos = 0
        while pos < len(mv):
            n = min(len(mv) - pos, MAX_DATA_COUNT)
            while True:
                out = lz4_block.compress(mv[pos:pos + n], mode="default", store_size=False)
                if len(out) <= MAX_DATA_COUNT:
                    break
                n //= 2
            self._frame(out)
            pos += n

    def _deflater_for_literal(self):
        """The deflater for the next literal data, in step with the receiver's history."""
        d = self._deflater
        if d is None:
            args = (self._file_level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY)
            if self._window:
                d = zlib.compressobj(*args, zdict=bytes(self._window[-HISTORY:]))
            else:
                d = zlib.compressobj(*args)
            self._deflater = d
        elif self._inserted:
            d.flush(zlib.Z_SYNC_FLUSH)
        self._inserted = False
        self._gap = 0
        return d

    def _insert(self, mv):
        """A matched block enters the history (zlib only)."""
        pieces = list(_history_pieces(mv, self.protocol))
        self._gap += sum(len(p) for p in pieces)
        if self._deflater is not None and self._gap >= self.DICT_AFTER:
            self._deflater = None
        d = self._deflater
        for p in pieces:
            if d is not None:
                d.compress(p)
                self._inserted = True
            self._remember(p)

    def _remember(self, mv):
        w = self._window
        if len(mv) >= HISTORY:
            w[:] = mv[len(mv) - HISTORY:]
            return
        w += mv
        if len(w) > 2 * HISTORY:
            del w[:len(w) - HISTORY]


# ----------------------------------------------------------------------------
# Reading


class _ZstdInput:
    """rsync's endless zstd stream, decoded so that one call never yields
    more than one zstd block (at most 128 KiB): the frame and block headers
    are followed, and the decoder is fed up to the end of one block at a time."""

    _MAGIC, _FHD, _FHREST, _BHDR, _SKIPLEN, _BLOCK, _CHECKSUM, _SKIP = range(8)

    def __init__(self):
        dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_WINDOW_MAX)
        self._d = dctx.decompressobj(write_size=ZSTD_BLOCK_MAX, read_across_frames=True)
        self._expect(self._MAGIC, 4)
        self._left = 0
        self._last_block = False
        self._checksum = False

    def _expect(self, kind, n):
        self._kind = kind
        self._need = n
        self._hdr = bytearray()

    def _body(self, kind, n):
        self._kind = kind
        self._left = n
        if not n:
            self._after_body()

    def _header(self):
        h = self._hdr
        kind = self._kind
        if kind == self._MAGIC:
            magic = int.from_bytes(h, "little")
            if magic == 0xFD2FB528:
                self._expect(self._FHD, 1)
            elif magic & 0xFFFFFFF0 == 0x184D2A50:
                self._expect(self._SKIPLEN, 4)
            else:
                raise ProtocolError("zstd data does not start a zstd frame (magic %08x)" % magic)
        elif kind == self._FHD:
            d = h[0]
            if d & 0x08:
                raise ProtocolError("zstd frame header has its reserved bit set")
            single = bool(d & 0x20)
            rest = (0 if single else 1) + (0, 1, 2, 4)[d & 3] + (1 if single else 0, 2, 4, 8)[d >> 6]
            self._checksum = bool(d & 0x04)
            if rest:
                self._expect(self._FHREST, rest)
            else:
                self._expect(self._BHDR, 3)
        elif kind == self._FHREST:
            self._expect(self._BHDR, 3)
        elif kind == self._BHDR:
            v = int.from_bytes(h, "little")
            btype, size = (v >> 1) & 3, v >> 3
            if btype == 3:
                raise ProtocolError("zstd block of the reserved type")
            if size > ZSTD_BLOCK_MAX:
                raise ProtocolError("zstd block of %d bytes is too large" % size)
            self._last_block = bool(v & 1)
            self._body(self._BLOCK, 1 if btype == 1 else size)
        else:
            self._body(self._SKIP, int.from_bytes(h, "little"))

    def _after_body(self):
        if self._kind == self._BLOCK and not self._last_block:
            self._expect(self._BHDR, 3)
        elif self._kind == self._BLOCK and self._checksum:
            self._body(self._CHECKSUM, 4)
        else:
            self._expect(self._MAGIC, 4)

    def feed(self, mv: memoryview, pos: int) -> tuple[bytes, int]:
        """Decodes mv[pos:] up to the end of the next block; (output, new pos)."""
        start, end = pos, len(mv)
        while pos < end:
            if self._left:
                take = min(self._left, end - pos)
                pos += take
                self._left -= take
                if not self._left:
                    self._after_body()
                    break
                continue
            take = min(self._need - len(self._hdr), end - pos)
            self._hdr += mv[pos:pos + take]
            pos += take
            if len(self._hdr) == self._need:
                self._header()
        try:
            out = self._d.decompress(mv[start:pos]) if pos > start else b""
        except zstandard.ZstdError as e:
            raise ProtocolError("zstd data is corrupt: %s" % e) from None
        return out, pos


class TokenReader:
    """Decodes the token stream that `method` (None: plain) puts on the wire.

    read(n) must return exactly n bytes (or raise). Per file: begin_file(),
    then next() until ("end", None); the caller reads the whole-file
    checksum after that. For zlib the receiver passes each copied block's
    content to block_data(), in order, before asking for more.

    Everything the peer controls is bounded: a plain literal run above
    max_literal bytes is refused, compressed data comes back in pieces of at
    most max_literal bytes (at most 256 KiB from zlib, 128 KiB from zstd,
    32 KiB from lz4), block indexes are checked against begin_file's
    max_block (the block count of the sum header), and any malformed input
    raises rsync.ProtocolError."""

    def __init__(self, method: str | None, read: Callable[[int], bytes], protocol: int = 32,
                 max_literal: int = 1 << 24):
        _check_method(method)
        if max_literal < 1:
            raise ValueError("max_literal must be positive")
        self.method = method
        self.protocol = protocol
        self.max_literal = max_literal
        self._readfn = read
        self._zstd = _ZstdInput() if method == "zstd" else None
        self._in_file = False

    def begin_file(self, max_block: int | None = None) -> None:
        """Starts a file whose block references must stay below max_block
        (None: anything rsync allows)."""
        self._in_file = True
        self._max_block = MAX_TOKEN_INDEX + 1 if max_block is None else min(max_block, MAX_TOKEN_INDEX + 1)
        self._token = 0
        self._run = 0
        self._owed = 0
        self._rest = None
        self._frame = False
        if self.method in ("zlib", "zlibx"):
            self._inflater = zlib.decompressobj(-15)
            self._tail = b""
            self._synced = True

    def next(self) -> tuple[str, object]:
        """("literal", bytes), ("block", index) or ("end", None)."""
        if not self._in_file:
            raise RuntimeError("begin_file() must come first")
        if self.method is None:
            return self._next_plain()
        if self._run:
            self._token += 1
            self._run -= 1
            self._owed += 1
            return ("block", self._token)
        while True:
            if self._rest is not None:
                return ("literal", self._take_rest())
            if self._frame:
                out = self._more()
                if out:
                    return ("literal", self._piece(out))
                continue
            flag = self._read(1)[0]
            if flag & 0xC0 == DEFLATED_DATA:
                n = (flag & 0x3F) << 8 | self._read(1)[0]
                self._start_frame(self._read(n))
                continue
            self._end_data()
            if flag == END_FLAG:
                self._in_file = False
                return ("end", None)
            return ("block", self._token_flag(flag))

    def block_data(self, data) -> None:
        """The content of the block next() returned last (zlib puts it into
        the inflate history; the other methods ignore it)."""
        if self.method is None:
            return
        if self._owed <= 0:
            raise RuntimeError("block_data() without a block from next()")
        self._owed -= 1
        if self.method != "zlib":
            return
        d = self._inflater
        for piece in _history_pieces(_byte_view(data), self.protocol):
            n = len(piece)
            try:
                d.decompress(bytes((0, n & 0xFF, n >> 8, ~n & 0xFF, ~n >> 8 & 0xFF)))
                got = len(d.decompress(piece))
            except zlib.error as e:
                raise ProtocolError("the decompressor lost sync: %s" % e) from None
            if got != n or d.unconsumed_tail or d.eof:
                raise ProtocolError("the decompressor lost sync before a matched block")

    # -- internals

    def _read(self, n):
        data = self._readfn(n)
        if len(data) != n:
            raise ProtocolError("the token stream ended early")
        return data

    def _next_plain(self):
        t = struct.unpack("<i", self._read(4))[0]
        if t == 0:
            self._in_file = False
            return ("end", None)
        if t > 0:
            if t > self.max_literal:
                raise ProtocolError("literal run of %d bytes is too long" % t)
            return ("literal", self._read(t))
        return ("block", self._check_block(-(t + 1), 0))

    def _check_block(self, index, count):
        if index < 0 or index + count > MAX_TOKEN_INDEX or index + count >= self._max_block:
            if count:
                raise ProtocolError("blocks %d to %d out of range (%d blocks)"
                                    % (index, index + count, self._max_block))
            raise ProtocolError("block index %d out of range (%d blocks)" % (index, self._max_block))
        return index

    def _token_flag(self, flag):
        if flag & TOKEN_REL:
            index = self._token + (flag & 0x3F)
            run = flag & 0x40
        elif flag in (TOKEN_LONG, TOKENRUN_LONG):
            index = struct.unpack("<i", self._read(4))[0]
            run = flag & 1
        else:
            raise ProtocolError("invalid flag byte 0x%02x in the compressed token stream" % flag)
        count = 0
        if run:
            count = struct.unpack("<H", self._read(2))[0]
            if count == 0:
                raise ProtocolError("a block run of 0 more blocks in the compressed token stream")
        self._check_block(index, count)
        self._token = index
        self._run = count
        self._owed += 1
        return index

    def _piece(self, out):
        if len(out) <= self.max_literal:
            return out
        self._rest = (out, self.max_literal)
        return out[:self.max_literal]

    def _take_rest(self):
        out, off = self._rest
        end = off + self.max_literal
        if end >= len(out):
            self._rest = None
        else:
            self._rest = (out, end)
        return out[off:end]

    def _start_frame(self, data):
        if self.method in ("zlib", "zlibx"):
            if not data:
                raise ProtocolError("an empty deflated-data frame")
            if self._owed and self.method == "zlib":
                raise RuntimeError("block_data() was not given for %d block(s)" % self._owed)
            self._synced = False
            self._tail = data
            self._frame = True
        elif self.method == "zstd":
            self._zview = memoryview(data)
            self._zpos = 0
            self._frame = bool(data)
        else:
            if not data:
                raise ProtocolError("an empty lz4 frame")
            try:
                out = lz4_block.decompress(data, uncompressed_size=LZ4_OUT_MAX)
            except lz4_block.LZ4BlockError as e:
                raise ProtocolError("lz4 frame does not decompress into %d bytes: %s"
                                    % (LZ4_OUT_MAX, e)) from None
            if not out:
                raise ProtocolError("an lz4 frame without data")
            self._rest = (out, 0)

    def _more(self):
        """Output of the current frame; b"" once it is used up."""
        if self.method == "zstd":
            mv = self._zview
            while self._zpos < len(mv):
                out, self._zpos = self._zstd.feed(mv, self._zpos)
                if out:
                    return out
            self._frame = False
            return b""
        d = self._inflater
        try:
            out = d.decompress(self._tail, min(self.max_literal, INFLATE_PIECE))
        except zlib.error as e:
            raise ProtocolError("inflate failed: %s" % e) from None
        if d.eof:
            raise ProtocolError("the deflated data ends the deflate stream")
        tail = d.unconsumed_tail
        if not out and tail:
            raise ProtocolError("inflate makes no progress")
        self._tail = tail
        if not out:
            self._frame = False
        return out

    def _end_data(self):
        """zlib: the data before a flag must end at a sync flush (whose 00 00
        ff ff the sender left off)."""
        if self.method not in ("zlib", "zlibx") or self._synced:
            return
        d = self._inflater
        try:
            lost = d.decompress(SYNC_TAIL, 1) or d.unconsumed_tail or d.eof
            if not lost:
                probe = d.copy()
                lost = probe.decompress(EMPTY_STORED, 1) or probe.unconsumed_tail or probe.eof
        except zlib.error:
            lost = True
        if lost:
            raise ProtocolError("the decompressor lost sync: the deflated data does not end at a sync flush")
        self._synced = True
