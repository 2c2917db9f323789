"""rsync's filter rules, starting with wildmatch: rsync's wildcard matcher,
on bytes (file names are arbitrary bytes)."""
from __future__ import annotations

__all__ = ["wildmatch"]


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
