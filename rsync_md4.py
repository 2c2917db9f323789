"""MD4 (RFC 1320) for rsync's block and file checksums.

rsync peers that negotiate no checksum (protocols before 30, or no common
choice) use MD4 for the strong block sums and the whole-file sum. OpenSSL 3
dropped MD4 from its default provider, so hashlib often lacks it. md4()
picks the first that works of: hashlib's md4, pycryptodome's Crypto.Hash.MD4,
and PureMD4 below. BACKEND names the choice.

This module uses only the standard library at import time, so it can be
copied into another project on its own.
"""
import struct

__all__ = ["md4", "PureMD4", "BACKEND", "BACKENDS"]

_M = 0xFFFFFFFF
_WORDS = struct.Struct("<16I")


def _rounds(state, data, start, stop):
    """Runs the MD4 compression over the 64-byte blocks of data[start:stop]."""
    a0, b0, c0, d0 = state
    unpack = _WORDS.unpack_from
    for pos in range(start, stop, 64):
        (x0, x1, x2, x3, x4, x5, x6, x7,
         x8, x9, x10, x11, x12, x13, x14, x15) = unpack(data, pos)
        a, b, c, d = a0, b0, c0, d0
        t = (a + (d ^ (b & (c ^ d))) + x0) & _M
        a = ((t << 3) | (t >> 29)) & _M
        t = (d + (c ^ (a & (b ^ c))) + x1) & _M
        d = ((t << 7) | (t >> 25)) & _M
        t = (c + (b ^ (d & (a ^ b))) + x2) & _M
        c = ((t << 11) | (t >> 21)) & _M
        t = (b + (a ^ (c & (d ^ a))) + x3) & _M
        b = ((t << 19) | (t >> 13)) & _M
        t = (a + (d ^ (b & (c ^ d))) + x4) & _M
        a = ((t << 3) | (t >> 29)) & _M
        t = (d + (c ^ (a & (b ^ c))) + x5) & _M
        d = ((t << 7) | (t >> 25)) & _M
        t = (c + (b ^ (d & (a ^ b))) + x6) & _M
        c = ((t << 11) | (t >> 21)) & _M
        t = (b + (a ^ (c & (d ^ a))) + x7) & _M
        b = ((t << 19) | (t >> 13)) & _M
        t = (a + (d ^ (b & (c ^ d))) + x8) & _M
        a = ((t << 3) | (t >> 29)) & _M
        t = (d + (c ^ (a & (b ^ c))) + x9) & _M
        d = ((t << 7) | (t >> 25)) & _M
        t = (c + (b ^ (d & (a ^ b))) + x10) & _M
        c = ((t << 11) | (t >> 21)) & _M
        t = (b + (a ^ (c & (d ^ a))) + x11) & _M
        b = ((t << 19) | (t >> 13)) & _M
        t = (a + (d ^ (b & (c ^ d))) + x12) & _M
        a = ((t << 3) | (t >> 29)) & _M
        t = (d + (c ^ (a & (b ^ c))) + x13) & _M
        d = ((t << 7) | (t >> 25)) & _M
        t = (c + (b ^ (d & (a ^ b))) + x14) & _M
        c = ((t << 11) | (t >> 21)) & _M
        t = (b + (a ^ (c & (d ^ a))) + x15) & _M
        b = ((t << 19) | (t >> 13)) & _M
        t = (a + ((b & c) | (d & (b | c))) + x0 + 0x5A827999) & _M
        a = ((t << 3) | (t >> 29)) & _M
        t = (d + ((a & b) | (c & (a | b))) + x4 + 0x5A827999) & _M
        d = ((t << 5) | (t >> 27)) & _M
        t = (c + ((d & a) | (b & (d | a))) + x8 + 0x5A827999) & _M
        c = ((t << 9) | (t >> 23)) & _M
        t = (b + ((c & d) | (a & (c | d))) + x12 + 0x5A827999) & _M
        b = ((t << 13) | (t >> 19)) & _M
        t = (a + ((b & c) | (d & (b | c))) + x1 + 0x5A827999) & _M
        a = ((t << 3) | (t >> 29)) & _M
        t = (d + ((a & b) | (c & (a | b))) + x5 + 0x5A827999) & _M
        d = ((t << 5) | (t >> 27)) & _M
        t = (c + ((d & a) | (b & (d | a))) + x9 + 0x5A827999) & _M
        c = ((t << 9) | (t >> 23)) & _M
        t = (b + ((c & d) | (a & (c | d))) + x13 + 0x5A827999) & _M
        b = ((t << 13) | (t >> 19)) & _M
        t = (a + ((b & c) | (d & (b | c))) + x2 + 0x5A827999) & _M
        a = ((t << 3) | (t >> 29)) & _M
        t = (d + ((a & b) | (c & (a | b))) + x6 + 0x5A827999) & _M
        d = ((t << 5) | (t >> 27)) & _M
        t = (c + ((d & a) | (b & (d | a))) + x10 + 0x5A827999) & _M
        c = ((t << 9) | (t >> 23)) & _M
        t = (b + ((c & d) | (a & (c | d))) + x14 + 0x5A827999) & _M
        b = ((t << 13) | (t >> 19)) & _M
        t = (a + ((b & c) | (d & (b | c))) + x3 + 0x5A827999) & _M
        a = ((t << 3) | (t >> 29)) & _M
        t = (d + ((a & b) | (c & (a | b))) + x7 + 0x5A827999) & _M
        d = ((t << 5) | (t >> 27)) & _M
        t = (c + ((d & a) | (b & (d | a))) + x11 + 0x5A827999) & _M
        c = ((t << 9) | (t >> 23)) & _M
        t = (b + ((c & d) | (a & (c | d))) + x15 + 0x5A827999) & _M
        b = ((t << 13) | (t >> 19)) & _M
        t = (a + (b ^ c ^ d) + x0 + 0x6ED9EBA1) & _M
        a = ((t << 3) | (t >> 29)) & _M
        t = (d + (a ^ b ^ c) + x8 + 0x6ED9EBA1) & _M
        d = ((t << 9) | (t >> 23)) & _M
        t = (c + (d ^ a ^ b) + x4 + 0x6ED9EBA1) & _M
        c = ((t << 11) | (t >> 21)) & _M
        t = (b + (c ^ d ^ a) + x12 + 0x6ED9EBA1) & _M
        b = ((t << 15) | (t >> 17)) & _M
        t = (a + (b ^ c ^ d) + x2 + 0x6ED9EBA1) & _M
        a = ((t << 3) | (t >> 29)) & _M
        t = (d + (a ^ b ^ c) + x10 + 0x6ED9EBA1) & _M
        d = ((t << 9) | (t >> 23)) & _M
        t = (c + (d ^ a ^ b) + x6 + 0x6ED9EBA1) & _M
        c = ((t << 11) | (t >> 21)) & _M
        t = (b + (c ^ d ^ a) + x14 + 0x6ED9EBA1) & _M
        b = ((t << 15) | (t >> 17)) & _M
        t = (a + (b ^ c ^ d) + x1 + 0x6ED9EBA1) & _M
        a = ((t << 3) | (t >> 29)) & _M
        t = (d + (a ^ b ^ c) + x9 + 0x6ED9EBA1) & _M
        d = ((t << 9) | (t >> 23)) & _M
        t = (c + (d ^ a ^ b) + x5 + 0x6ED9EBA1) & _M
        c = ((t << 11) | (t >> 21)) & _M
        t = (b + (c ^ d ^ a) + x13 + 0x6ED9EBA1) & _M
        b = ((t << 15) | (t >> 17)) & _M
        t = (a + (b ^ c ^ d) + x3 + 0x6ED9EBA1) & _M
        a = ((t << 3) | (t >> 29)) & _M
        t = (d + (a ^ b ^ c) + x11 + 0x6ED9EBA1) & _M
        d = ((t << 9) | (t >> 23)) & _M
        t = (c + (d ^ a ^ b) + x7 + 0x6ED9EBA1) & _M
        c = ((t << 11) | (t >> 21)) & _M
        t = (b + (c ^ d ^ a) + x15 + 0x6ED9EBA1) & _M
        b = ((t << 15) | (t >> 17)) & _M
        a0 = (a0 + a) & _M
        b0 = (b0 + b) & _M
        c0 = (c0 + c) & _M
        d0 = (d0 + d) & _M
    return a0, b0, c0, d0


class PureMD4:
    """MD4 in pure Python, with the hashlib object interface."""

    name = "md4"
    digest_size = 16
    block_size = 64

    def __init__(self, data=b""):
        self._state = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
        self._pending = b""
        self._length = 0
        if data:
            self.update(data)

    def update(self, data):
        data = memoryview(data).cast("B")
        n = len(data)
        self._length += n
        if self._pending:
            need = 64 - len(self._pending)
            if n < need:
                self._pending += bytes(data)
                return
            block = self._pending + bytes(data[:need])
            self._state = _rounds(self._state, block, 0, 64)
            self._pending = b""
            data = data[need:]
            n -= need
        full = n - n % 64
        if full:
            self._state = _rounds(self._state, data, 0, full)
        if full < n:
            self._pending = bytes(data[full:])

    def digest(self):
        tail = self._pending + b"\x80"
        tail += bytes((56 - len(tail)) % 64)
        tail += struct.pack("<Q", (self._length * 8) & 0xFFFFFFFFFFFFFFFF)
        return struct.pack("<4I", *_rounds(self._state, tail, 0, len(tail)))

    def hexdigest(self):
        return self.digest().hex()

    def copy(self):
        other = PureMD4.__new__(PureMD4)
        other._state = self._state
        other._pending = self._pending
        other._length = self._length
        return other


def _hashlib_factory():
    import hashlib
    try:
        hashlib.new("md4", b"", usedforsecurity=False)
    except (ValueError, TypeError):
        return None

    def new(data=b""):
        return hashlib.new("md4", data, usedforsecurity=False)
    return new


def _pycryptodome_factory():
    try:
        from Crypto.Hash import MD4
    except ImportError:
        return None

    def new(data=b""):
        return MD4.new(data)
    return new


def _available():
    found = {}
    for name, factory in (("hashlib", _hashlib_factory),
                          ("pycryptodome", _pycryptodome_factory)):
        new = factory()
        if new is not None:
            found[name] = new
    found["python"] = PureMD4
    return found


BACKENDS = _available()
"""The MD4 implementations usable here, by name, best first."""

BACKEND = next(iter(BACKENDS))
_new = BACKENDS[BACKEND]


def md4(data=b""):
    """Returns a new MD4 hash object (hashlib interface) fed with data."""
    return _new(data)
