"""rsync's filter rules: wildmatch, rule parsing, per-directory merge files,
and the filter list's wire form.

Everything works on bytes (file names are arbitrary bytes) and nothing here
opens a file or touches a socket: merge files are read through callables the
caller supplies, and the wire functions only build or take apart rule texts.

Typical use by a file-list builder::

    flist = FilterList(root=b"/srv/data")
    flist.add_exclude(b"*.o")
    flist.add_F()
    state = flist.enter_dir(b"", read_merge_file_in_root)
    if not flist.excluded(b"src", is_dir=True): ...
    flist.leave_dir(state)
"""
from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass, field
from itertools import chain
from typing import Callable, Iterable, Iterator, Sequence

__all__ = [
    "FilterError", "Flag", "Rule", "FilterList", "DirState", "wildmatch",
    "parse_rules", "parse_wire_rule", "encode_rules", "encode_wire_list",
    "decode_wire_list", "filter_list_on_wire", "default_cvs_rules",
    "MAXPATHLEN", "MAX_WIRE_RULE_LEN", "MAX_MERGE_DEPTH",
]

MAXPATHLEN = 4096
"""A pattern must be shorter than this; rsync discards longer ones."""
MAX_WIRE_RULE_LEN = MAXPATHLEN + 1024 - 1
"""Longest rule text rsync accepts on the wire or as one line of a rules file."""
MAX_MERGE_DEPTH = 32
"""How deeply merge files may include further merge files."""

ReadFile = Callable[[bytes], "bytes | None"]


class FilterError(ValueError):
    """A filter rule is malformed, unreadable or cannot be expressed."""


# --------------------------------------------------------------------------
# wildmatch

_TRUE, _FALSE, _ABORT_ALL, _ABORT_TO_STARSTAR = 1, 0, -1, -2
_SLASH, _STAR, _QMARK, _LBRACKET, _RBRACKET, _BACKSLASH = b"/*?[]\\"
_BANG, _CARET, _DASH, _COLON = b"!^-:"


def _span(first: str, last: str) -> frozenset[int]:
    return frozenset(range(ord(first), ord(last) + 1))


_UPPER, _LOWER, _DIGIT = _span("A", "Z"), _span("a", "z"), _span("0", "9")
_GRAPH = frozenset(range(0x21, 0x7F))
_CLASSES: dict[bytes, frozenset[int]] = {
    b"alnum": _UPPER | _LOWER | _DIGIT,
    b"alpha": _UPPER | _LOWER,
    b"blank": frozenset(b" \t"),
    b"cntrl": frozenset(range(0x20)) | {0x7F},
    b"digit": _DIGIT,
    b"graph": _GRAPH,
    b"lower": _LOWER,
    b"print": _GRAPH | {0x20},
    b"punct": _GRAPH - (_UPPER | _LOWER | _DIGIT),
    b"space": frozenset(b" \t\n\v\f\r"),
    b"upper": _UPPER,
    b"xdigit": _DIGIT | _span("a", "f") | _span("A", "F"),
}
"""POSIX classes as the C locale defines them; bytes >= 0x80 are in none."""


def _bracket(pat: bytes, p: int, tc: int) -> tuple[int, int]:
    """Match text byte tc against the bracket expression opening at pat[p].

    Returns (_TRUE, index after the closing bracket), (_FALSE, 0), or
    (_ABORT_ALL, 0) when the expression is malformed.
    """
    plen = len(pat)

    def at(i: int) -> int:
        return pat[i] if i < plen else 0

    p += 1
    pc = at(p)
    if pc == _CARET:
        pc = _BANG
    negated = pc == _BANG
    if negated:
        p += 1
        pc = at(p)
    prev = 0
    matched = False
    while True:
        if not pc:
            return _ABORT_ALL, 0
        if pc == _BACKSLASH:
            p += 1
            pc = at(p)
            if not pc:
                return _ABORT_ALL, 0
            if tc == pc:
                matched = True
        elif pc == _DASH and prev and at(p + 1) and at(p + 1) != _RBRACKET:
            p += 1
            pc = at(p)
            if pc == _BACKSLASH:
                p += 1
                pc = at(p)
                if not pc:
                    return _ABORT_ALL, 0
            if prev <= tc <= pc:
                matched = True
            pc = 0
        elif pc == _LBRACKET and at(p + 1) == _COLON:
            start = p + 2
            end = start
            while at(end) and at(end) != _RBRACKET:
                end += 1
            if not at(end):
                return _ABORT_ALL, 0
            if end - start - 1 < 0 or pat[end - 1] != _COLON:
                # No ":]" before the "]": the "[" is an ordinary member.
                pc = _LBRACKET
                if tc == pc:
                    matched = True
            else:
                members = _CLASSES.get(pat[start:end - 1])
                if members is None:
                    return _ABORT_ALL, 0
                if tc in members:
                    matched = True
                p = end
                pc = 0
        elif tc == pc:
            matched = True
        prev = pc
        p += 1
        pc = at(p)
        if pc == _RBRACKET:
            break
    if matched == negated or tc == _SLASH:
        return _FALSE, 0
    return _TRUE, p + 1


def _scan(pat: bytes, text: bytes, p: int, t: int) -> int | tuple[int, bool, int]:
    """Match literal characters, "?" and brackets until a "*" needs a choice.

    Returns a final result, or (pattern index after the stars, whether they
    were "**", text index) when the caller must try the star's extents.
    """
    plen, tlen = len(pat), len(text)
    while p < plen:
        pc = pat[p]
        if t >= tlen:
            if pc != _STAR:
                return _ABORT_ALL
            tc = 0
        else:
            tc = text[t]
        if pc == _STAR:
            p += 1
            special = p < plen and pat[p] == _STAR
            while p < plen and pat[p] == _STAR:
                p += 1
            if p >= plen:
                if not special and _SLASH in text[t:]:
                    return _FALSE
                return _TRUE
            return (p, special, t)
        if pc == _BACKSLASH:
            p += 1
            if p >= plen or pat[p] != tc:
                return _FALSE
        elif pc == _QMARK:
            if tc == _SLASH:
                return _FALSE
        elif pc == _LBRACKET:
            result, after = _bracket(pat, p, tc)
            if result != _TRUE:
                return result
            p = after
            t += 1
            continue
        elif pc != tc:
            return _FALSE
        p += 1
        t += 1
    return _TRUE if t >= tlen else _FALSE


def _dowild(pat: bytes, text: bytes, t: int = 0, steps: list[int] | None = None) -> int:
    """rsync's matcher, with an explicit stack instead of recursion.

    A failed single "*" that reaches a "/" gives up up to the nearest "**",
    and running out of text gives up entirely; these two short cuts keep the
    work polynomial in the lengths of pattern and text.
    """
    tlen = len(text)
    stack: list[list] = []
    result = _scan(pat, text, 0, t)
    while True:
        if steps is not None:
            steps[0] += 1
        if type(result) is tuple:
            after, special, t = result
            if t >= tlen:
                result = _ABORT_ALL
                continue
            stack.append([after, special, t])
            result = _scan(pat, text, after, t)
            continue
        if not stack:
            return result
        frame = stack[-1]
        after, special, t = frame
        if result != _FALSE:
            if not special or result != _ABORT_TO_STARSTAR:
                stack.pop()
                continue
        elif not special and text[t] == _SLASH:
            stack.pop()
            result = _ABORT_TO_STARSTAR
            continue
        t += 1
        if t >= tlen:
            stack.pop()
            result = _ABORT_ALL
            continue
        frame[2] = t
        result = _scan(pat, text, after, t)


def _trailing_elements(text: bytes, count: int) -> bytes | None:
    """The last `count` slash-separated elements of text, or None if fewer."""
    pos = len(text)
    for _ in range(count - 1):
        pos = text.rfind(b"/", 0, pos)
        if pos < 0:
            return None
    cut = text.rfind(b"/", 0, pos)
    return text[cut + 1:]


def _wildmatch_where(pat: bytes, text: bytes, where: int) -> bool:
    """Match pat against all of text (where == 0), its last `where` elements
    (where > 0), or starting at the beginning or after any slash (where < 0)."""
    if where > 0:
        text = _trailing_elements(text, where)
        if text is None:
            return False
    result = _dowild(pat, text)
    if result != _TRUE and where < 0 and result != _ABORT_ALL:
        pos = text.find(b"/")
        while pos >= 0:
            result = _dowild(pat, text, pos + 1)
            if result != _FALSE and result != _ABORT_TO_STARSTAR:
                break
            pos = text.find(b"/", pos + 1)
        else:
            return False
    return result == _TRUE


def wildmatch(pattern: bytes, text: bytes) -> bool:
    """Match text against an rsync wildcard pattern.

    "*" matches any run without "/", "**" any run at all, "?" one byte other
    than "/", "[...]" one byte from a set ("!" or "^" negates; ranges and
    POSIX classes allowed; never "/"), and a backslash quotes the next byte.
    A malformed bracket expression matches nothing.  The bytes up to a NUL
    are significant, as in C.
    """
    pattern = pattern.split(b"\0", 1)[0]
    text = text.split(b"\0", 1)[0]
    return _dowild(pattern, text) == _TRUE


# --------------------------------------------------------------------------
# Rules

class Flag(enum.IntFlag):
    """What a rule is and how it matches; the names follow rsync's."""
    WILD = 1 << 0            # pattern has "*", "?" or "["
    WILD2 = 1 << 1           # pattern has "**"
    WILD2_PREFIX = 1 << 2    # pattern starts with "**"
    WILD3_SUFFIX = 1 << 3    # pattern ends with "***"
    ABS_PATH = 1 << 4        # matched against the absolute path ("/" modifier)
    INCLUDE = 1 << 5
    DIRECTORY = 1 << 6       # written with a trailing "/": directories only
    WORD_SPLIT = 1 << 7      # merge file is split on whitespace ("w")
    NO_INHERIT = 1 << 8      # per-directory rules do not reach subdirs ("n")
    NO_PREFIXES = 1 << 9     # merge file holds bare patterns ("+" or "-")
    MERGE_FILE = 1 << 10     # "." or ":"
    PERDIR_MERGE = 1 << 11   # ":"
    EXCLUDE_SELF = 1 << 12   # "e": also exclude the merge file's name
    NEGATE = 1 << 14         # "!": matches when the pattern does not
    CVS_IGNORE = 1 << 15     # "C"
    SENDER_SIDE = 1 << 16    # "s", hide/show
    RECEIVER_SIDE = 1 << 17  # "r", protect/risk
    CLEAR_LIST = 1 << 18     # "!" rule
    PERISHABLE = 1 << 19     # "p"
    XATTR = 1 << 20          # "x": matches xattr names, not files


_SIDES = Flag.SENDER_SIDE | Flag.RECEIVER_SIDE
_WILD_FLAGS = Flag.WILD | Flag.WILD2 | Flag.WILD2_PREFIX | Flag.WILD3_SUFFIX
_FROM_CONTAINER = (Flag.ABS_PATH | Flag.INCLUDE | Flag.DIRECTORY | Flag.NEGATE
                   | Flag.PERISHABLE)
_CVS_MODS = Flag.NO_PREFIXES | Flag.WORD_SPLIT | Flag.NO_INHERIT | Flag.CVS_IGNORE
_WILD_CHARS = re.compile(rb"[*?\[]")


@dataclass(frozen=True)
class Rule:
    """One filter rule in the form rsync keeps it.

    `pattern` has any trailing "/" removed (Flag.DIRECTORY records it); for
    merge rules it is the file name.  The WILD* flags are derived from the
    pattern and need not be given.
    """
    pattern: bytes
    flags: Flag = Flag(0)
    _slashes: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.pattern, str):
            object.__setattr__(self, "pattern", self.pattern.encode("utf-8", "surrogateescape"))
        flags = Flag(self.flags) & ~_WILD_FLAGS
        pat = self.pattern
        if _WILD_CHARS.search(pat):
            flags |= Flag.WILD
            if b"**" in pat:
                flags |= Flag.WILD2
                if pat.startswith(b"**"):
                    flags |= Flag.WILD2_PREFIX
                if pat.endswith(b"***"):
                    flags |= Flag.WILD3_SUFFIX
        object.__setattr__(self, "flags", flags)
        object.__setattr__(self, "_slashes", pat.count(b"/"))

    @property
    def is_include(self) -> bool:
        return bool(self.flags & Flag.INCLUDE)

    def text(self) -> bytes:
        """The rule in long-prefix syntax, as rsync --debug=FILTER shows it."""
        return _rule_prefix(self, for_xfer=False) + self.pattern + (
            b"/" if self.flags & Flag.DIRECTORY else b"")

    def __str__(self) -> str:
        return self.text().decode("utf-8", "backslashreplace")

    def hits(self, name: bytes, is_dir: bool, abs_dir: bytes = b"",
             xattr: bool = False) -> bool:
        """Whether this include/exclude rule applies to name.

        name is relative to the transfer root; abs_dir is the transfer root
        as absolute-path rules see it, without its leading "/" ("" at the
        top of the namespace).
        """
        flags = self.flags
        negate = bool(flags & Flag.NEGATE)
        if name.startswith(b"/"):
            name = name[1:]
        if not name or xattr != bool(flags & Flag.XATTR):
            return False
        pattern = self.pattern
        slashes = self._slashes
        prefix = b""
        if not slashes and not flags & Flag.WILD2:
            name = name[name.rfind(b"/") + 1:]
        elif flags & Flag.ABS_PATH and abs_dir:
            prefix = abs_dir + b"/"
        elif flags & Flag.WILD2_PREFIX:
            prefix = b"/"
        full = prefix + name
        if is_dir:
            if flags & Flag.WILD3_SUFFIX:
                full += b"/"
        elif flags & Flag.DIRECTORY:
            return negate
        anchored = pattern.startswith(b"/")
        if anchored:
            pattern = pattern[1:]
        if not anchored and slashes and not flags & Flag.WILD2:
            where = slashes + 1
        elif not anchored and flags & Flag.WILD2 and not flags & Flag.WILD2_PREFIX:
            where = -1
        else:
            where = 0
        if flags & Flag.WILD:
            found = _wildmatch_where(pattern, full, where)
        elif prefix:
            tail = _trailing_elements(full, where) if where > 0 else full
            found = tail == pattern
        elif anchored:
            found = name == pattern
        else:
            found = name == pattern or name.endswith(b"/" + pattern)
        return found != negate


def _rule_prefix(rule: Rule, *, for_xfer: bool, protocol: int = 32,
                 client_is_sender: bool = False,
                 delete_excluded: bool = False) -> bytes | None:
    """The prefix rsync writes before a rule's pattern.

    For the wire (for_xfer) the prefix is limited to what the peer's protocol
    understands; None means the rule cannot be expressed at all.
    """
    flags = rule.flags
    old = for_xfer and protocol < 29
    legal = 1 if old else 15
    out = bytearray()
    if flags & Flag.PERDIR_MERGE:
        if old:
            return None
        out += b":"
    elif flags & Flag.INCLUDE:
        out += b"+"
    elif not old or rule.pattern[:2] in (b"- ", b"+ "):
        out += b"-"
    else:
        legal = 0
    if flags & Flag.ABS_PATH:
        out += b"/"
    if flags & Flag.NEGATE:
        out += b"!"
    if flags & Flag.CVS_IGNORE:
        out += b"C"
    else:
        if flags & Flag.NO_INHERIT:
            out += b"n"
        if flags & Flag.WORD_SPLIT:
            out += b"w"
        if flags & Flag.NO_PREFIXES:
            out += b"+" if flags & Flag.INCLUDE else b"-"
    if flags & Flag.EXCLUDE_SELF:
        out += b"e"
    if flags & Flag.XATTR:
        out += b"x"
    if flags & Flag.SENDER_SIDE and (not for_xfer or protocol >= 29):
        out += b"s"
    if flags & Flag.RECEIVER_SIDE and (not for_xfer or protocol >= 29
                                       or (delete_excluded and client_is_sender)):
        out += b"r"
    if flags & Flag.PERISHABLE:
        if not for_xfer or protocol >= 30:
            out += b"p"
        elif client_is_sender:
            return None
    if len(out) > legal:
        return None
    if legal:
        out += b" "
    return bytes(out)


# --------------------------------------------------------------------------
# Parsing

_SPACE = frozenset(b" \t\n\v\f\r")
_LONG_NAMES = {
    ord("c"): (b"clear", "!"), ord("d"): (b"dir-merge", ":"),
    ord("e"): (b"exclude", "-"), ord("h"): (b"hide", "H"),
    ord("i"): (b"include", "+"), ord("m"): (b"merge", "."),
    ord("p"): (b"protect", "P"), ord("r"): (b"risk", "R"),
    ord("s"): (b"show", "S"),
}
_RULE_KINDS = {
    ":": Flag.PERDIR_MERGE | Flag.MERGE_FILE, ".": Flag.MERGE_FILE,
    "+": Flag.INCLUDE, "-": Flag(0), "!": Flag.CLEAR_LIST,
    "S": Flag.INCLUDE | Flag.SENDER_SIDE, "H": Flag.SENDER_SIDE,
    "R": Flag.INCLUDE | Flag.RECEIVER_SIDE, "P": Flag.RECEIVER_SIDE,
}


def _show(text: bytes, limit: int = 200) -> str:
    shown = text[:limit].decode("utf-8", "backslashreplace")
    return shown + "..." if len(text) > limit else shown


def _rule_error(msg: str, text: bytes, origin: str | None, detail: str = "") -> FilterError:
    """rsync's wording; text read from a file is described, not echoed, so an
    error cannot hand a file's contents to whoever chose to merge it."""
    if origin is not None:
        return FilterError(f"{msg} in filter rule: <rule from {origin}>")
    return FilterError(f"{msg}{detail} in filter rule: {_show(text)}"
                       if detail else f"{msg}: {_show(text)}")


def _parse_tok(s: bytes, i: int, tflags: Flag, old_prefixes: bool,
               delete_excluded: bool, origin: str | None
               ) -> tuple[Flag, bytes, int] | None:
    """Parse the rule starting at s[i] the way rsync's parse_rule_tok does.

    tflags are the flags of the merge rule whose file is being read (0 for
    options and the wire).  Returns (flags, pattern, end) or None at the end.
    """
    n = len(s)
    word_split = bool(tflags & Flag.WORD_SPLIT)
    if word_split:
        while i < n and s[i] in _SPACE:
            i += 1
    if i >= n:
        return None
    start = i
    flags = tflags & _FROM_CONTAINER
    if tflags & Flag.NO_PREFIXES:
        if s[i] == _BANG and tflags & Flag.CVS_IGNORE:
            flags |= Flag.CLEAR_LIST
    elif old_prefixes:
        if s.startswith(b"- ", i):
            flags &= ~Flag.INCLUDE
            i += 2
        elif s.startswith(b"+ ", i):
            flags |= Flag.INCLUDE
            i += 2
        elif s[i] == _BANG:
            flags |= Flag.CLEAR_LIST
    else:
        kind = None
        long_name = _LONG_NAMES.get(s[i])
        if long_name is not None:
            word, code = long_name
            if s.startswith(word, i):
                end = i + len(word)
                follow = s[end] if end < n else 0
                if not follow or follow in _SPACE or follow == ord("_"):
                    kind, i = code, end - 1
                elif follow == ord(","):
                    kind, i = code, end
        else:
            kind = chr(s[i])
            if i + 1 < n and s[i + 1] == ord(","):
                i += 1
        if kind not in _RULE_KINDS:
            raise _rule_error("Unknown filter rule", s[start:], origin)
        flags |= _RULE_KINDS[kind]
        side_given = kind in "HSPR"
        if kind != "!":
            while True:
                i += 1
                if i >= n or s[i] in b" _":
                    break
                c = s[i]
                if word_split and c in _SPACE:
                    i -= 1
                    break
                bare_ok = flags & Flag.MERGE_FILE and not flags & Flag.NO_PREFIXES
                if c == ord("-") and bare_ok:
                    flags |= Flag.NO_PREFIXES
                elif c == ord("+") and bare_ok:
                    flags |= Flag.NO_PREFIXES | Flag.INCLUDE
                elif c == ord("/"):
                    flags |= Flag.ABS_PATH
                elif c == ord("!") and not flags & Flag.MERGE_FILE:
                    flags |= Flag.NEGATE
                elif c == ord("C") and not flags & Flag.NO_PREFIXES and not side_given:
                    flags |= _CVS_MODS
                elif c in b"enw" and flags & Flag.MERGE_FILE:
                    flags |= {ord("e"): Flag.EXCLUDE_SELF, ord("n"): Flag.NO_INHERIT,
                              ord("w"): Flag.WORD_SPLIT}[c]
                elif c == ord("p"):
                    flags |= Flag.PERISHABLE
                elif c == ord("r") and not side_given:
                    flags |= Flag.RECEIVER_SIDE
                elif c == ord("s") and not side_given:
                    flags |= Flag.SENDER_SIDE
                elif c == ord("x"):
                    flags |= Flag.XATTR
                else:
                    shown = chr(c) if 32 < c < 127 else "\\x%02x" % c
                    raise _rule_error("invalid modifier", s[start:], origin,
                                      f" '{shown}' at position {i - start}")
        if i < n:
            i += 1
    if tflags & _SIDES:
        if flags & _SIDES:
            raise _rule_error("specified-side merge file contains specified-side filter",
                              s[start:], origin)
        flags |= tflags & _SIDES
    if word_split:
        end = i
        while end < n and s[end] not in _SPACE:
            end += 1
    else:
        end = n
    pattern = s[i:end]
    if flags & Flag.CLEAR_LIST:
        if not tflags & Flag.NO_PREFIXES and not old_prefixes and pattern:
            raise _rule_error("'!' rule has trailing characters", s[start:], origin)
        if len(pattern) > 1:
            flags &= ~Flag.CLEAR_LIST
    elif not pattern and not flags & Flag.CVS_IGNORE:
        raise _rule_error("unexpected end of filter rule", s[start:], origin)
    if delete_excluded and not flags & (_SIDES | Flag.MERGE_FILE | Flag.PERDIR_MERGE):
        flags |= Flag.SENDER_SIDE
    if len(pattern) >= MAXPATHLEN:
        raise FilterError(f"over-long filter pattern ({len(pattern)} bytes; the limit is "
                          f"{MAXPATHLEN - 1}){f' in {origin}' if origin else ''}")
    return flags, pattern, end


def _tokens(text: bytes, tflags: Flag = Flag(0), old_prefixes: bool = False,
            delete_excluded: bool = False, origin: str | None = None
            ) -> Iterator[tuple[Flag, bytes]]:
    text = text.split(b"\0", 1)[0]
    i = 0
    while (tok := _parse_tok(text, i, tflags, old_prefixes, delete_excluded, origin)):
        flags, pattern, i = tok
        if flags & Flag.MERGE_FILE and not pattern:
            pattern = b".cvsignore"
        yield flags, pattern


def _as_bytes(text: bytes | str) -> bytes:
    return text.encode("utf-8", "surrogateescape") if isinstance(text, str) else bytes(text)


def _stored(flags: Flag, pattern: bytes) -> Rule:
    """The rule as rsync stores it: a trailing "/" becomes Flag.DIRECTORY
    (except for "." merges, whose name is kept as written)."""
    if (len(pattern) > 1 and pattern.endswith(b"/")
            and not (flags & Flag.MERGE_FILE and not flags & Flag.PERDIR_MERGE)
            and not flags & Flag.CLEAR_LIST):
        pattern, flags = pattern[:-1], flags | Flag.DIRECTORY
    return Rule(pattern, flags)


def parse_rules(text: bytes | str, *, old_prefixes: bool = False) -> list[Rule]:
    """Parse one --filter RULE (or, with old_prefixes, an --exclude/--include
    argument) without acting on it: merge rules are returned, not read."""
    return [_stored(f, p) for f, p in _tokens(_as_bytes(text), old_prefixes=old_prefixes)]


def _file_pieces(data: bytes, word_split: bool, from0: bool) -> Iterator[tuple[int, bytes]]:
    """Split a rules file into (line number, rule text) as rsync reads it:
    by line (LF, CR or CRLF; NUL with --from0) skipping empty lines and ";"
    or "#" comments, or by whitespace for word-split merge files."""
    if word_split:
        sep = rb"[ \t\n\v\f\r\0]+" if from0 else rb"[ \t\n\v\f\r]+"
        pieces = enumerate(re.split(sep, data))
    else:
        lines = data.split(b"\0") if from0 else re.split(rb"\r\n|\r|\n", data)
        pieces = enumerate(lines, 1)
    for number, piece in pieces:
        if len(piece) > MAX_WIRE_RULE_LEN:
            raise FilterError(f"over-long filter rule ({len(piece)} bytes; the limit is "
                              f"{MAX_WIRE_RULE_LEN})")
        piece = piece.split(b"\0", 1)[0]
        if piece and (word_split or piece[0] not in b";#"):
            yield number, piece


# --------------------------------------------------------------------------
# The wire

def parse_wire_rule(text: bytes, protocol: int) -> list[Rule]:
    """Parse one rule text received from a client (the bytes after its int32
    length).  Below protocol 29 rules are old-style: "+ " and "- " prefixes
    only.  Merge rules are returned for FilterList.add to act on; it refuses
    a "merge FILE" unless given a reader (rsyncd reads such files, confined
    to the module), while "dir-merge" files are read by enter_dir's reader.

    Raises FilterError for an empty, over-long, NUL-containing or malformed
    rule.
    """
    text = bytes(text)
    if not text:
        raise FilterError("empty filter rule (a zero length ends the list)")
    if len(text) > MAX_WIRE_RULE_LEN:
        raise FilterError(f"over-long filter rule received ({len(text)} bytes; the limit "
                          f"is {MAX_WIRE_RULE_LEN})")
    if b"\0" in text:
        raise FilterError(f"filter rule contains a NUL byte: {_show(text)}")
    return [_stored(f, p) for f, p in _tokens(text, old_prefixes=protocol < 29)]


_LOCAL, _REMOTE = 1, 2


def encode_rules(rules: Iterable[Rule], protocol: int, *, client_is_sender: bool = False,
                 delete_excluded: bool = False, cvs_exclude: bool = False,
                 cvs_rules: Sequence[Rule] | None = None) -> list[bytes]:
    """The rule texts a client sends to the server, in order (each goes on
    the wire as int32 length + text; encode_wire_list adds the framing).

    As rsync does: rules that only concern the client's own side stay home
    (sender-only ones when the client sends, receiver-only ones when it
    receives, and with --delete-excluded the unsided ones too); hide/show/
    protect/risk travel as "-s"/"+s"/"-r"/"+r"; "-C" is expanded into the CVS
    list when the client sends or the protocol is below 29; below 29 only
    "+ "-prefixed includes and bare excludes exist, and a rule that needs
    more raises FilterError.  cvs_exclude adds what -C adds before sending.
    """
    seq = list(rules)
    if cvs_exclude and client_is_sender:
        if protocol >= 29 and not any(
                r.flags & Flag.PERDIR_MERGE and _basename(r.pattern) == b".cvsignore"
                for r in seq):
            seq += parse_rules(b":C")
        seq += [Rule(b"", _CVS_MODS | (Flag.SENDER_SIDE if delete_excluded else Flag(0)))]
    out: list[bytes] = []

    def send(items: Iterable[Rule], emit: bool) -> None:
        for rule in items:
            flags = rule.flags
            if flags & Flag.CLEAR_LIST or (flags & Flag.MERGE_FILE
                                           and not flags & Flag.PERDIR_MERGE):
                raise FilterError(f"rule {rule} must be applied before the list is sent")
            elide = 0
            if flags & Flag.SENDER_SIDE:
                elide = _LOCAL if client_is_sender else _REMOTE
            if flags & Flag.RECEIVER_SIDE:
                elide = 0 if elide else (_REMOTE if client_is_sender else _LOCAL)
            elif delete_excluded and not elide and (
                    not flags & Flag.PERDIR_MERGE or flags & Flag.NO_PREFIXES):
                elide = _LOCAL if client_is_sender else _REMOTE
            if elide == _LOCAL:
                continue
            if flags & Flag.CVS_IGNORE and not flags & Flag.MERGE_FILE:
                expand = client_is_sender or protocol < 29
                listed = cvs_rules if cvs_rules is not None else default_cvs_rules(
                    protocol, flags, delete_excluded=delete_excluded)
                send(listed, emit and expand)
                if expand:
                    continue
            prefix = _rule_prefix(rule, for_xfer=True, protocol=protocol,
                                  client_is_sender=client_is_sender,
                                  delete_excluded=delete_excluded)
            if prefix is None:
                raise FilterError(f"filter rules are too modern for remote rsync "
                                  f"(protocol {protocol}): {rule}")
            text = prefix + rule.pattern + (b"/" if flags & Flag.DIRECTORY else b"")
            if emit and text:
                out.append(text)

    send(seq, True)
    return out


def encode_wire_list(texts: Iterable[bytes]) -> bytes:
    """Frame rule texts as rsync sends them: int32 length + text each, then
    an int32 0."""
    parts = []
    for text in texts:
        if not text or len(text) > MAX_WIRE_RULE_LEN:
            raise FilterError(f"cannot send a filter rule of {len(text)} bytes")
        parts.append(struct.pack("<i", len(text)) + text)
    parts.append(struct.pack("<i", 0))
    return b"".join(parts)


def decode_wire_list(buf: bytes) -> tuple[list[bytes], int] | None:
    """Take a framed filter list off the front of buf.

    Returns (rule texts, bytes consumed), or None if buf does not yet hold
    the whole list.  A length beyond MAX_WIRE_RULE_LEN raises FilterError
    before waiting for its bytes.
    """
    texts, pos = [], 0
    while True:
        if len(buf) - pos < 4:
            return None
        (length,) = struct.unpack_from("<i", buf, pos)
        if length == 0:
            return texts, pos + 4
        if length < 0 or length > MAX_WIRE_RULE_LEN:
            raise FilterError(f"over-long filter rule announced ({length & 0xFFFFFFFF} "
                              f"bytes; the limit is {MAX_WIRE_RULE_LEN})")
        if len(buf) - pos - 4 < length:
            return None
        texts.append(bytes(buf[pos + 4:pos + 4 + length]))
        pos += 4 + length


def filter_list_on_wire(*, client_is_sender: bool, protocol: int, delete_mode: bool = False,
                        delete_excluded: bool = False, prune_empty_dirs: bool = False) -> bool:
    """Whether the client sends a filter list (and the server reads one).

    A receiving server only wants the list to decide deletions or pruning;
    when the client sends and the server will not use it, nothing at all
    (not even the terminating 0) goes over the wire.
    """
    receiver_wants = prune_empty_dirs or (delete_mode and (not delete_excluded
                                                           or protocol >= 29))
    return not client_is_sender or receiver_wants


# --------------------------------------------------------------------------
# CVS excludes

_CVS_DEFAULTS = (
    b"RCS SCCS CVS CVS.adm RCSLOG cvslog.* tags TAGS .make.state .nse_depinfo"
    b" *~ #* .#* ,* _$* *$ *.old *.bak *.BAK *.orig *.rej .del-* *.a *.olb *.o"
    b" *.obj *.so *.exe *.Z *.elc *.ln core .svn/ .git/ .hg/ .bzr/")


def _cvs_list(protocol: int, rflags: Flag, extra: bytes, delete_excluded: bool) -> list[Rule]:
    rules: list[Rule] = []
    perishable = Flag.PERISHABLE if protocol >= 30 else Flag(0)
    for text, tflags in ((_CVS_DEFAULTS, rflags | perishable), (extra, rflags)):
        for flags, pattern in _tokens(text, tflags, delete_excluded=delete_excluded):
            if flags & Flag.CLEAR_LIST:
                rules.clear()
            else:
                rules.append(_stored(flags, pattern))
    return rules


def default_cvs_rules(protocol: int, rflags: Flag = _CVS_MODS, extra: bytes = b"",
                      *, delete_excluded: bool = False) -> list[Rule]:
    """The rules a "-C" rule stands for: rsync's built-in CVS ignore list
    (perishable from protocol 30 on), then `extra`, which holds the
    whitespace-separated contents of $HOME/.cvsignore and $CVSIGNORE."""
    return _cvs_list(protocol, Flag(rflags), _as_bytes(extra), delete_excluded)


# --------------------------------------------------------------------------
# The filter list

_ANCHORED2ABS = 1 << 2
_ABS_IF_SLASH = 1 << 3
_DIR2WILD3 = 1 << 4


def _basename(name: bytes) -> bytes:
    return name[name.rfind(b"/") + 1:]


def _components(path: bytes) -> tuple[bytes, ...]:
    """Path elements, with "." dropped and ".." collapsed (never above the top)."""
    out: list[bytes] = []
    for part in path.split(b"/"):
        if part == b"..":
            if out:
                out.pop()
        elif part and part != b".":
            out.append(part)
    return tuple(out)


class _RuleList:
    """Rules of one list: a per-directory list's own rules come before those
    it inherited from parent directories."""
    __slots__ = ("local", "inherited")

    def __init__(self) -> None:
        self.local: list = []
        self.inherited: list = []


class _DirMerge:
    """A dir-merge rule and the rules its files currently contribute."""
    __slots__ = ("rule", "name", "rules", "setup_pending")

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.name = rule.pattern
        self.rules = _RuleList()
        self.setup_pending = True


@dataclass
class _Ctx:
    xflags: int
    where: tuple[bytes, ...]
    read_file: ReadFile | None
    depth: int = 0
    origin: str | None = None
    parent_scan: bool = False


class DirState:
    """What FilterList.enter_dir saved; hand it back to leave_dir."""
    __slots__ = ("saved",)

    def __init__(self, saved: list) -> None:
        self.saved = saved


class FilterList:
    """An ordered filter list that answers, first match wins, whether a path
    is excluded (sender) or protected from deletion (receiver).

    root is the transfer root's path as absolute-path rules ("/" modifier,
    anchored rules of per-directory files, "dir-merge /name") see it: the
    directory's absolute path, or for a daemon module its path inside the
    module ("" = the module itself).  delete_excluded makes unsided rules
    sender-only, as --delete-excluded does.  cvsignore holds the contents of
    $HOME/.cvsignore and $CVSIGNORE for "-C".  read_file, if given, reads
    "." merge files named by rules added later (see add).
    """

    def __init__(self, rules: Iterable[Rule | bytes | str] = (), *, protocol: int = 32,
                 delete_excluded: bool = False, root: bytes | str = b"",
                 cvsignore: bytes | str = b"", read_file: ReadFile | None = None) -> None:
        self.protocol = protocol
        self.delete_excluded = delete_excluded
        self.read_file = read_file
        self.cvsignore = _as_bytes(cvsignore)
        self._root = _components(_as_bytes(root))
        self._abs_dir = b"/".join(self._root)
        self._top = _RuleList()
        self._active: list[_DirMerge | None] = []
        self._cvs: _RuleList | None = None
        self._stack: list[DirState] = []
        self._F_count = 0
        for rule in rules:
            self.add(rule)

    # ---- building

    def add(self, rule: Rule | bytes | str, *, read_file: ReadFile | None = None) -> None:
        """Add one --filter RULE (text) or an already parsed Rule, e.g. from
        parse_wire_rule.

        "!" clears the list; "merge FILE" is read at once through
        read_file(name) -> bytes | None (None: missing, which is an error);
        "dir-merge NAME" is remembered and read per directory by enter_dir.
        """
        ctx = _Ctx(0, self._root, read_file or self.read_file)
        if isinstance(rule, Rule):
            self._apply(self._top, rule.flags, rule.pattern + (
                b"/" if rule.flags & Flag.DIRECTORY else b""), ctx)
        else:
            self._parse_str(self._top, _as_bytes(rule), Flag(0), False, ctx)

    def add_exclude(self, pattern: bytes | str) -> None:
        """--exclude PATTERN: an old-style rule; "+ " or "- " may prefix it."""
        self._parse_str(self._top, _as_bytes(pattern), Flag(0), True,
                        _Ctx(0, self._root, None))

    def add_include(self, pattern: bytes | str) -> None:
        """--include PATTERN."""
        self._parse_str(self._top, _as_bytes(pattern), Flag.INCLUDE, True,
                        _Ctx(0, self._root, None))

    def add_from(self, data: bytes, *, include: bool = False, from0: bool = False,
                 name: str = "-") -> None:
        """--exclude-from / --include-from: data is the file's contents (the
        caller reads FILE, or stdin for "-"); name is used in messages."""
        self._parse_file(self._top, data, Flag.INCLUDE if include else Flag(0), True,
                         _Ctx(0, self._root, None, origin=name), from0=from0)

    def add_F(self) -> None:
        """-F: the first adds "dir-merge /.rsync-filter", the second
        "- .rsync-filter"; further ones do nothing."""
        self._F_count += 1
        if self._F_count == 1:
            self.add(b": /.rsync-filter")
        elif self._F_count == 2:
            self.add(b"- .rsync-filter")

    def add_cvs_exclude(self, *, server: bool, sender: bool) -> None:
        """-C: append ":C" and/or "-C" where rsync puts them on this side.

        Call it after the filter list went over the wire (a sending client
        passes cvs_exclude=True to encode first): rsync appends them after
        the user's rules, so they have the lowest priority.
        """
        if not server and sender:
            texts = [b":C", b"-C"] if self.protocol >= 29 else [b"-C", b":C"]
        elif not server or sender:
            texts = [b":C", b"-C"]
        else:
            texts = [b":C"] if self.protocol < 29 else []
        for text in texts:
            self.add(text)

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The top-level rules, in order (merge files already expanded)."""
        return tuple(item.rule if isinstance(item, _DirMerge) else item
                     for item in self._top.local)

    def encode(self, *, client_is_sender: bool, cvs_exclude: bool = False,
               protocol: int | None = None) -> list[bytes]:
        """encode_rules for this list, with its own CVS list for "-C"."""
        protocol = self.protocol if protocol is None else protocol
        if self._cvs is not None:
            cvs = self._cvs.local
        else:
            side = Flag.SENDER_SIDE if self.delete_excluded else Flag(0)
            cvs = _cvs_list(protocol, _CVS_MODS | side, self.cvsignore, self.delete_excluded)
        return encode_rules(self.rules, protocol, client_is_sender=client_is_sender,
                            delete_excluded=self.delete_excluded, cvs_exclude=cvs_exclude,
                            cvs_rules=cvs)

    def _parse_str(self, lst: _RuleList, text: bytes, tflags: Flag, old_prefixes: bool,
                   ctx: _Ctx) -> None:
        for flags, pattern in _tokens(text, tflags, old_prefixes, self.delete_excluded,
                                      ctx.origin):
            self._apply(lst, flags, pattern, ctx)

    def _parse_file(self, lst: _RuleList, data: bytes, tflags: Flag, old_prefixes: bool,
                    ctx: _Ctx, from0: bool = False) -> None:
        word_split = bool(tflags & Flag.WORD_SPLIT)
        origin = ctx.origin
        for number, piece in _file_pieces(data, word_split, from0):
            ctx.origin = origin if word_split else f"{origin} line {number}"
            self._parse_str(lst, piece, tflags, old_prefixes, ctx)
        ctx.origin = origin

    def _apply(self, lst: _RuleList, flags: Flag, pattern: bytes, ctx: _Ctx) -> None:
        """Act on one parsed rule as rsync's parse_filter_str does."""
        if self.delete_excluded and not flags & (_SIDES | Flag.MERGE_FILE):
            flags |= Flag.SENDER_SIDE
        if flags & Flag.CLEAR_LIST:
            self._release(lst.local)
            lst.local = []
            lst.inherited = []
            return
        if flags & Flag.MERGE_FILE:
            if not pattern:
                pattern = b".cvsignore"
            if flags & Flag.EXCLUDE_SELF:
                self._add_rule(lst, Flag(0), _basename(pattern), 0, ctx)
                flags &= ~Flag.EXCLUDE_SELF
            if not flags & Flag.PERDIR_MERGE:
                self._merge(lst, flags, pattern, ctx)
                return
            if ctx.parent_scan and not pattern.startswith(b"/"):
                pattern = b"/" + b"/".join(_components(b"/".join(ctx.where) + b"/" + pattern))
            self._add_rule(lst, flags, pattern, 0 if ctx.parent_scan else ctx.xflags, ctx)
            return
        self._add_rule(lst, flags, pattern, ctx.xflags, ctx)
        if flags & Flag.CVS_IGNORE and self._cvs is None:
            self._cvs = _RuleList()
            self._cvs.local = _cvs_list(self.protocol, flags, self.cvsignore,
                                        self.delete_excluded)

    def _merge(self, lst: _RuleList, flags: Flag, name: bytes, ctx: _Ctx) -> None:
        kind = "include" if flags & Flag.INCLUDE else "exclude"
        if ctx.read_file is None:
            raise FilterError(f"cannot read {kind} file {_show(name)}: no reader for merge files here")
        if ctx.depth >= MAX_MERGE_DEPTH:
            raise FilterError(f"merge-file include depth limit ({MAX_MERGE_DEPTH}) exceeded "
                              f"at {_show(name)}")
        data = ctx.read_file(name)
        if data is None:
            raise FilterError(f"failed to open {kind} file {_show(name)}")
        inner = _Ctx(ctx.xflags & ~_ANCHORED2ABS, ctx.where, ctx.read_file, ctx.depth + 1,
                     _show(name), ctx.parent_scan)
        self._parse_file(lst, data, flags, False, inner)

    def _add_rule(self, lst: _RuleList, flags: Flag, pattern: bytes, xflags: int,
                  ctx: _Ctx) -> None:
        """Store a rule as rsync's add_rule does, including anchoring a
        per-directory file's "/pattern" at that file's directory."""
        if len(pattern) > 1 and pattern.endswith(b"/"):
            pattern = pattern[:-1]
            flags |= Flag.DIRECTORY
        if not flags & (Flag.ABS_PATH | Flag.MERGE_FILE) and (
                (xflags & (_ANCHORED2ABS | _ABS_IF_SLASH) and pattern.startswith(b"/"))
                or (xflags & _ABS_IF_SLASH and b"/" in pattern)):
            flags |= Flag.ABS_PATH
            if pattern.startswith(b"/") and ctx.where:
                pattern = b"/" + b"/".join(ctx.where) + pattern
        if xflags & _DIR2WILD3 and flags & Flag.DIRECTORY and not flags & Flag.INCLUDE:
            flags &= ~Flag.DIRECTORY
            pattern += b"/***"
        rule = Rule(pattern, flags)
        if flags & Flag.PERDIR_MERGE:
            base = _basename(pattern)
            if any(dm is not None and _basename(dm.rule.pattern) == base
                   for dm in self._active):
                return
            dm = _DirMerge(rule)
            self._active.append(dm)
            lst.local.append(dm)
        else:
            lst.local.append(rule)

    def _release(self, items: Iterable) -> None:
        """Forget the dir-merge rules among items that are being dropped."""
        for item in items:
            if isinstance(item, _DirMerge):
                for i, dm in enumerate(self._active):
                    if dm is item:
                        self._active[i] = None
                while self._active and self._active[-1] is None:
                    self._active.pop()

    # ---- directory walk

    def enter_dir(self, reldir: bytes | str, read_file: ReadFile) -> DirState:
        """Read the per-directory merge files of a directory being scanned.

        Call it for the transfer root (reldir b"") and then for each
        subdirectory descended into, before checking that directory's
        entries; pair each call with leave_dir(state), innermost first.

        read_file(name) returns the contents of file `name` in that
        directory, or None if there is none.  The caller opens it safely;
        this module never touches the file system.  Names are plain file
        names, except while the transfer root is entered for a dir-merge
        rule whose name has a "/" (like -F's "/.rsync-filter"): then the
        same file is first looked for in the root's parents, from the top
        down, as b"../../name", b"../name".  "merge" rules inside those
        files also go through read_file, with the name as written.
        """
        where = self._root + _components(_as_bytes(reldir))
        state = DirState([(dm, dm.rules.local, dm.rules.inherited) if dm else None
                          for dm in self._active])
        self._stack.append(state)
        try:
            i = 0
            while i < len(self._active):
                dm = self._active[i]
                i += 1
                if dm is None:
                    continue
                lst = dm.rules
                lst.inherited = lst.local + lst.inherited
                lst.local = []
                if dm.rule.flags & Flag.NO_INHERIT:
                    lst.inherited = []
                if dm.setup_pending:
                    dm.setup_pending = False
                    self._setup_dir_merge(dm, where, read_file)
                data = read_file(dm.name) if dm.name else None
                if data is not None:
                    ctx = _Ctx(_ANCHORED2ABS, where, read_file, origin=_show(dm.name))
                    self._parse_file(lst, data, dm.rule.flags, False, ctx)
        except BaseException:
            self.leave_dir(state)
            raise
        return state

    def _setup_dir_merge(self, dm: _DirMerge, where: tuple[bytes, ...],
                         read_file: ReadFile) -> None:
        """First use of a dir-merge rule: a name with a "/" is reduced to its
        last element, and if its directory is the current one or a parent,
        the file is read in every directory from there down to the current
        one's parent, the rules all being inherited."""
        name = dm.name
        if b"/" not in name:
            return
        if not name.startswith(b"/"):
            name = b"/".join(where) + b"/" + name
        target = _components(name)
        dm.name = target[-1] if target else b""
        if not target:
            return
        top = target[:-1]
        if where[:len(top)] != top:
            return
        lst = dm.rules
        for depth in range(len(top), len(where)):
            up = len(where) - depth
            data = read_file(b"../" * up + dm.name)
            if data is not None:
                ctx = _Ctx(_ANCHORED2ABS, where[:depth], read_file,
                           origin=_show(b"/".join(where[:depth] + (dm.name,))), parent_scan=True)
                self._parse_file(lst, data, dm.rule.flags, False, ctx)
            if dm.rule.flags & Flag.NO_INHERIT:
                self._release(lst.local)
                lst.local = []
                lst.inherited = []
            lst.inherited = lst.local + lst.inherited
            lst.local = []

    def leave_dir(self, state: DirState) -> None:
        """Drop what enter_dir read and restore the parent's rules."""
        if not self._stack or self._stack[-1] is not state:
            raise FilterError("leave_dir() called out of order: leave the innermost "
                              "directory first, once")
        self._stack.pop()
        i = len(self._active)
        while i > 0:
            i -= 1
            dm = self._active[i] if i < len(self._active) else None
            if dm is not None:
                self._release(dm.rules.local)
                dm.rules.local = []
        for i, saved in enumerate(state.saved):
            if saved is not None and i < len(self._active) and self._active[i] is saved[0]:
                saved[0].rules.local, saved[0].rules.inherited = saved[1], saved[2]

    # ---- matching

    def match(self, relpath: bytes | str, is_dir: bool, *, sender_side: bool = True,
              ignore_perishable: bool = False, xattr: bool = False) -> Rule | None:
        """The first rule that applies to relpath (relative to the transfer
        root, no leading "/"), or None.  Rules limited to the other side are
        skipped; with ignore_perishable, so are "p" rules (rsync does that
        inside a directory it is about to delete)."""
        name = _as_bytes(relpath)
        pending: list[Iterator] = [iter(self._top.local)]
        while pending:
            item = next(pending[-1], None)
            if item is None:
                pending.pop()
                continue
            if isinstance(item, _DirMerge):
                if not (ignore_perishable and item.rule.flags & Flag.PERISHABLE):
                    pending.append(chain(item.rules.local, item.rules.inherited))
                continue
            flags = item.flags
            if ignore_perishable and flags & Flag.PERISHABLE:
                continue
            if flags & Flag.CVS_IGNORE:
                if not flags & Flag.MERGE_FILE and self._cvs is not None:
                    pending.append(iter(self._cvs.local))
                continue
            sides = flags & _SIDES
            if sides == (Flag.RECEIVER_SIDE if sender_side else Flag.SENDER_SIDE):
                continue
            if item.hits(name, is_dir, self._abs_dir, xattr):
                return item
        return None

    def excluded(self, relpath: bytes | str, is_dir: bool, sender_side: bool = True, *,
                 ignore_perishable: bool = False) -> bool:
        """Whether the sender leaves relpath out of the file list (or, with
        sender_side False, whether the receiver's rules exclude it).  A
        directory that is excluded is not descended into."""
        rule = self.match(relpath, is_dir, sender_side=sender_side,
                          ignore_perishable=ignore_perishable)
        return rule is not None and not rule.is_include

    def protected(self, relpath: bytes | str, is_dir: bool, *,
                  ignore_perishable: bool = False) -> bool:
        """Whether the receiver must not delete relpath: excludes and protect
        rules shield it, includes and risk rules expose it, and with
        --delete-excluded plain excludes no longer protect."""
        return self.excluded(relpath, is_dir, False, ignore_perishable=ignore_perishable)

    def add_daemon_rules(self, text: bytes | str, *, kind: str = "filter") -> None:
        """A daemon module's "filter", "include", "exclude", "include from" or
        "exclude from" parameter (the last two take the file's contents).

        As rsyncd does, a pattern with a "/" anywhere is matched against the
        path inside the module and an excluded "dir/" covers its contents
        too.  rsyncd keeps these in a list of their own, checked before the
        client's rules on both sides: use a separate FilterList for them.
        """
        tflags = {"filter": Flag.WORD_SPLIT, "include": Flag.WORD_SPLIT | Flag.INCLUDE,
                  "exclude": Flag.WORD_SPLIT, "include from": Flag.INCLUDE,
                  "exclude from": Flag(0)}.get(kind)
        if tflags is None:
            raise FilterError(f"unknown daemon filter parameter {kind!r}")
        ctx = _Ctx(_ABS_IF_SLASH | _DIR2WILD3, (), None, origin=kind if "from" in kind else None)
        if "from" in kind:
            self._parse_file(self._top, _as_bytes(text), tflags, True, ctx)
        else:
            self._parse_str(self._top, _as_bytes(text), tflags, kind != "filter", ctx)
