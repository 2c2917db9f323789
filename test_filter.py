"""Tests for rsync_filter: wildmatch vectors and its polynomial bound."""
from __future__ import annotations

import pytest

import rsync_filter as rf
from rsync_filter import wildmatch


# --------------------------------------------------------------------------
# wildmatch

WILD_VECTORS = [
    # (pattern, text, expected)
    (b"", b"", True),
    (b"", b"x", False),
    (b"abc", b"abc", True),
    (b"abc", b"abcd", False),
    (b"abc", b"ab", False),
    (b"a?c", b"abc", True),
    (b"a?c", b"a/c", False),
    (b"a??", b"ab", False),
    (b"*", b"", True),
    (b"*", b"anything", True),
    (b"*", b"dir/file", False),
    (b"*.c", b"main.c", True),
    (b"*.c", b".c", True),
    (b"*.c", b"src/main.c", False),
    (b"*/*.c", b"src/main.c", True),
    (b"*/*.c", b"a/src/main.c", False),
    (b"**", b"", True),
    (b"**", b"a/b/c", True),
    (b"**.c", b"a/b/c.c", True),
    (b"**/c", b"a/b/c", True),
    (b"**/c", b"c", False),
    (b"a/**", b"a/", True),
    (b"a/**", b"a", False),
    (b"a/**/z", b"a/z", False),
    (b"a/**/z", b"a/b/z", True),
    (b"a/**/z", b"a/b/c/d/z", True),
    (b"a/***", b"a/", True),
    (b"a/***", b"a/b/c", True),
    (b"a**z", b"a/b/z", True),
    (b"a*z", b"a/z", False),
    (b"a*b*c", b"axxbyyc", True),
    (b"a*b*c", b"axxbyy", False),
    (b"*a*b", b"xaxbxb", True),
    (b"**/a*b", b"x/a/y/acb", True),
    (b"**/a*b", b"x/a/y/ac", False),
    (b"a**b*c", b"a/b/x/bxc", True),
    (b"a*/**/c", b"ab/x/c", True),
    (b"*/b", b"a/b", True),
    (b"*/b", b"/b", True),
    (b"x*", b"x/", False),
    (b"x**", b"x/", True),
    (b"[abc]", b"b", True),
    (b"[abc]", b"d", False),
    (b"[!abc]", b"d", True),
    (b"[!abc]", b"a", False),
    (b"[^abc]", b"d", True),
    (b"[^abc]", b"c", False),
    (b"[a-f]", b"c", True),
    (b"[a-f]", b"g", False),
    (b"[f-a]", b"c", False),
    (b"[-a]", b"-", True),
    (b"[a-]", b"-", True),
    (b"[a-c-e]", b"-", True),
    (b"[a-c-e]", b"d", False),
    (b"[a-c-e]", b"e", True),
    (b"[]]", b"]", True),
    (b"[]a]", b"a", True),
    (b"[!]]", b"]", False),
    (b"[!]]", b"x", True),
    (b"[/]", b"/", False),
    (b"[!a]", b"/", False),
    (b"a[/]b", b"a/b", False),
    (b"[\\]]", b"]", True),
    (b"[\\-]", b"-", True),
    (b"[a\\-c]", b"b", False),
    (b"[a-\\z]", b"m", True),
    (b"[[:alpha:]]", b"Q", True),
    (b"[[:alpha:]]", b"7", False),
    (b"[[:digit:]x]", b"x", True),
    (b"[[:digit:][:upper:]]", b"K", True),
    (b"[[:digit:][:upper:]]", b"k", False),
    (b"[![:space:]]", b" ", False),
    (b"[![:space:]]", b"_", True),
    (b"[[:punct:]]", b"!", True),
    (b"[[:punct:]]", b"a", False),
    (b"[[:xdigit:]]", b"F", True),
    (b"[[:xdigit:]]", b"g", False),
    (b"[[:cntrl:]]", b"\x01", True),
    (b"[[:print:]]", b" ", True),
    (b"[[:graph:]]", b" ", False),
    (b"[[:blank:]]", b"\t", True),
    (b"[[:lower:]]", b"\xe9", False),
    (b"[[:alnum:]]", b"\xe9", False),
    (b"[\xe0-\xef]", b"\xe9", True),
    (b"[[:bogus:]]", b"b", False),
    (b"[[:alpha:]", b"a", False),
    (b"[[:]", b"[", True),
    (b"[[:]", b":", True),
    (b"[x[:]", b"[", True),
    (b"[[x]", b"[", True),
    (b"[abc", b"a", False),
    (b"[", b"[", False),
    (b"a[]", b"a]", False),
    (b"\\*", b"*", True),
    (b"\\*", b"x", False),
    (b"\\?", b"?", True),
    (b"\\[a]", b"[a]", True),
    (b"\\a", b"a", True),
    (b"a\\", b"a", False),
    (b"a\\", b"a\\", False),
    (b"*\\*", b"x*", True),
    (b"sp ace*", b"sp ace.c", True),
    (b"\xff*", b"\xff\xfe", True),
    (b"caf\xe9*", b"caf\xe9.c", True),
]


@pytest.mark.parametrize("pattern,text,expected", WILD_VECTORS)
def test_wildmatch_vectors(pattern, text, expected):
    assert wildmatch(pattern, text) is expected


def _steps(pattern: bytes, text: bytes) -> tuple[int, int]:
    counter = [0]
    return rf._dowild(pattern, text, 0, counter), counter[0]


@pytest.mark.parametrize("pattern,text", [
    (b"*a" * 12 + b"b", b"a" * 300),
    (b"*a*a*a*a*a*a*a*b", b"a" * 2000),
    (b"**a" * 10 + b"b", b"a" * 300),
    (b"*/" * 20 + b"x", b"a/" * 200),
    (b"*?" * 30 + b"!", b"abc" * 100),
    (b"**/*" * 12 + b"z", b"a/" * 150),
    (b"[a-z]*" * 15 + b"0", b"q" * 400),
])
def test_wildmatch_stays_polynomial(pattern, text):
    result, steps = _steps(pattern, text)
    assert result != rf._TRUE
    assert steps <= 4 * (len(pattern) + 1) * (len(text) + 1)


def _naive(p: bytes, t: bytes) -> bool:
    """Plain backtracking over the same syntax, without rsync's short cuts."""
    if not p:
        return not t
    if p[:1] == b"*":
        rest = p.lstrip(b"*")
        double = len(p) - len(rest) > 1
        if not rest:
            return double or b"/" not in t
        for cut in range(len(t) + 1):
            if _naive(rest, t[cut:]):
                return True
            if cut < len(t) and t[cut:cut + 1] == b"/" and not double:
                return False
        return False
    if not t:
        return False
    if p[:1] == b"?":
        return t[:1] != b"/" and _naive(p[1:], t[1:])
    if p[:1] == b"[":
        result, after = rf._bracket(p, 0, t[0])
        return result == rf._TRUE and _naive(p[after:], t[1:])
    if p[:1] == b"\\":
        return p[1:2] == t[:1] and _naive(p[2:], t[1:])
    return p[:1] == t[:1] and _naive(p[1:], t[1:])


def test_wildmatch_agrees_with_naive_matcher():
    import random
    rng = random.Random(20240611)
    atoms = [b"a", b"b", b"/", b"*", b"**", b"?", b"[ab]", b"[!a]", b"\\*", b"[a-b/]"]
    for _ in range(20000):
        pattern = b"".join(rng.choice(atoms) for _ in range(rng.randint(0, 6)))
        text = bytes(rng.choice(b"ab/*") for _ in range(rng.randint(0, 8)))
        assert wildmatch(pattern, text) == _naive(pattern, text), (pattern, text)
        if b"/" in text:
            starts = [0] + [i + 1 for i, c in enumerate(text) if c == ord("/")]
            anywhere = any(_naive(pattern, text[i:]) for i in starts)
            assert rf._wildmatch_where(pattern, text, -1) == anywhere, (pattern, text)


def test_wildmatch_long_pattern_no_recursion_limit():
    pattern = b"*x" * 2000
    assert wildmatch(pattern, b"x" * 2000)
    assert not wildmatch(pattern + b"y", b"x" * 2000)


def test_wildmatch_where_modes():
    assert rf._wildmatch_where(b"b/c", b"a/b/c", 2)
    assert not rf._wildmatch_where(b"b/c", b"b", 2)
    assert rf._wildmatch_where(b"b/**", b"a/b/c", -1)
    assert not rf._wildmatch_where(b"b/**", b"a/bb/c", -1)
    assert not rf._wildmatch_where(b"b/**", b"a/b/c", 0)
