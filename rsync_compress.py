"""Compression for rsync's file data (-z): which method two peers use, at
which level, and which files are not worth compressing.

The names rsync knows, in its order of preference, are zstd, lz4, zlibx and
zlib. Peers that both speak the negotiation (protocol 30 and up with the
`v` compat letter, no --compress-choice) exchange space-separated lists of
them right after the checksum lists; otherwise -z means zlib.
"""

from __future__ import annotations

import re
from functools import lru_cache

try:
    import zstandard
except ImportError:  # pragma: no cover - depends on the installation
    zstandard = None
try:
    import lz4.block as lz4_block
except ImportError:  # pragma: no cover - depends on the installation
    lz4_block = None

__all__ = ["METHODS", "available_compressions", "pick_compression", "compression_level",
           "skip_compression_level", "default_skip_compress", "SkipCompress", "skip_compress_rules",
           "skip_compress"]

METHODS = ("zstd", "lz4", "zlibx", "zlib")
"""Every compression rsync knows, in its order of preference."""

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
