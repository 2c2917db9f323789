"""Tests for rsync_filter: wildmatch vectors, rule parsing, per-directory
merge files, the wire form, and agreement with stock rsync."""
from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import rsync_filter as rf
from conftest import need
from rsync_filter import Flag, FilterError, FilterList, wildmatch

RSYNC = shutil.which("rsync")


def need_rsync() -> str:
    return need(RSYNC, "stock rsync")


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


# --------------------------------------------------------------------------
# Rule matching (semantics documented in rsync's FILTER RULES)

def fl(*rules, **kw) -> FilterList:
    return FilterList(rules, **kw)


@pytest.mark.parametrize("rule,path,is_dir,expected", [
    ("- foo", "foo", False, True),
    ("- foo", "a/b/foo", False, True),
    ("- foo", "a/foo/b", False, False),
    ("- foo", "xfoo", False, False),
    ("- /foo", "foo", False, True),
    ("- /foo", "a/foo", False, False),
    ("- foo/", "foo", False, False),
    ("- foo/", "a/foo", True, True),
    ("- foo/bar", "foo/bar", False, True),
    ("- foo/bar", "x/foo/bar", False, True),
    ("- foo/bar", "xfoo/bar", False, False),
    ("- foo/*/baz", "foo/bar/baz", False, True),
    ("- foo/*/baz", "foo/a/b/baz", False, False),
    ("- /foo/**/bar", "foo/bar", False, False),
    ("- /foo/**/bar", "foo/x/bar", False, True),
    ("- /foo/**/bar", "foo/x/y/bar", False, True),
    ("- **/bar", "bar", False, True),
    ("- **/bar", "a/b/bar", False, True),
    ("- x/**/y", "a/x/y", False, False),
    ("- x/**/y", "a/x/q/y", False, True),
    ("- dir/***", "dir", True, True),
    ("- dir/***", "dir", False, False),
    ("- dir/***", "dir/a/b", False, True),
    ("- *.o", "a/b.o", False, True),
    ("- *.o", "a.o/b", False, False),
    ("-! */", "file", False, True),
    ("-! */", "dir", True, False),
    ("-! *.c", "x.c", False, False),
    ("-! *.c", "x.h", False, True),
    ("- a\\b", "a\\b", False, True),
    ("- a\\b*", "ab", False, True),
    ("-x user.*", "user.x", False, False),
])
def test_rule_semantics(rule, path, is_dir, expected):
    assert fl(rule).excluded(path.encode(), is_dir) is expected


def test_first_match_wins():
    f = fl("+ keep.o", "- *.o")
    assert not f.excluded(b"keep.o", False)
    assert f.excluded(b"other.o", False)
    f = fl("- *.o", "+ keep.o")
    assert f.excluded(b"keep.o", False)


def test_sides():
    f = fl("H hidden", "P kept", "S shown", "- shown", "R risky", "- risky")
    assert f.excluded(b"hidden", False)
    assert not f.protected(b"hidden", False)
    assert not f.excluded(b"kept", False)
    assert f.protected(b"kept", False)
    assert not f.excluded(b"shown", False)
    assert f.protected(b"shown", False)
    assert f.excluded(b"risky", False)
    assert not f.protected(b"risky", False)


def test_delete_excluded_makes_plain_rules_sender_only():
    f = FilterList(["- *.o", "P *.keep"], delete_excluded=True)
    assert f.excluded(b"a.o", False)
    assert not f.protected(b"a.o", False)
    assert f.protected(b"x.keep", False)


def test_perishable():
    f = fl("-p *.o")
    assert f.protected(b"a.o", False)
    assert not f.protected(b"a.o", False, ignore_perishable=True)


def test_absolute_path_modifier_uses_root():
    f = FilterList(["-/ /srv/data/foo", "-/ sub/x"], root=b"/srv/data")
    assert f.excluded(b"foo", False)
    assert not f.excluded(b"a/foo", False)
    assert f.excluded(b"sub/x", False)
    f = FilterList(["-/ data/x"], root=b"/srv/data")
    assert f.excluded(b"x", False)


def test_xattr_rules_only_match_xattr_names():
    f = fl("-x user.secret", "- *.o")
    assert f.match(b"user.secret", False, xattr=True).pattern == b"user.secret"
    assert f.match(b"a.o", False, xattr=True) is None
    assert not f.excluded(b"user.secret", False)


def test_clear_rule():
    f = fl("- *.o", "!", "- *.c")
    assert [r.text() for r in f.rules] == [b"- *.c"]
    assert not f.excluded(b"a.o", False)


def test_cvs_exclude_list():
    f = FilterList(["-C"], protocol=30, cvsignore=b"*.tmp ! *.junk")
    assert f.excluded(b"x.junk", False)
    assert not f.excluded(b"x.o", False), "'!' in $CVSIGNORE clears the list so far"
    f = FilterList(["-C"], protocol=30)
    for name in (b"core", b"a.o", b"x~", b"#x", b"CVS"):
        assert f.excluded(name, False), name
    assert f.excluded(b".git", True)
    assert not f.excluded(b".git", False)
    assert not f.protected(b"a.o", False, ignore_perishable=True)
    assert f.protected(b"a.o", False, ignore_perishable=False)
    assert not FilterList(["-C"], protocol=29).match(b"a.o", False).flags & Flag.PERISHABLE


# --------------------------------------------------------------------------
# Parsing

@pytest.mark.parametrize("text,expected", [
    ("- foo", "- foo"), ("exclude foo", "- foo"), ("exclude_foo", "- foo"),
    ("-_foo", "- foo"), ("+ bar/", "+ bar/"), ("include,! bar", "+! bar"),
    ("hide x", "-s x"), ("show x", "+s x"), ("protect x", "-r x"), ("risk x", "+r x"),
    ("H,p x", "-sp x"), ("-,sr x", "-sr x"), ("-/!p foo/", "-/!p foo/"),
    ("-px x", "-xp x"), (":C", ":C .cvsignore"), ("dir-merge,n- .r", ":n- .r"),
    (":+ .r", ":+ .r"), (":w .r", ":w .r"), (":s .r", ":s .r"), ("-  two", "-  two"),
    ("- foo//", "- foo//"), ("- /", "- /"),
])
def test_parse_forms(text, expected):
    assert [r.text().decode() for r in rf.parse_rules(text)] == [expected]


@pytest.mark.parametrize("text,message", [
    ("Hs x", "invalid modifier 's' at position 1"),
    ("HC", "invalid modifier 'C'"),
    ("-e x", "invalid modifier 'e'"),
    ("-n x", "invalid modifier 'n'"),
    ("-w x", "invalid modifier 'w'"),
    (":-+ .r", "invalid modifier '+' at position 2"),
    (":! .r", "invalid modifier '!'"),
    ("-z x", "invalid modifier 'z'"),
    ("- ", "unexpected end of filter rule"),
    ("-", "unexpected end of filter rule"),
    ("merge", "unexpected end of filter rule"),
    ("! x", "'!' rule has trailing characters"),
    ("clear x", "'!' rule has trailing characters"),
    ("c foo", "Unknown filter rule"),
    ("X foo", "Unknown filter rule"),
    ("-/,! foo", "invalid modifier ','"),
])
def test_parse_errors(text, message):
    with pytest.raises(FilterError, match=re.escape(message)):
        rf.parse_rules(text)


def test_old_style_prefixes():
    f = FilterList()
    f.add_exclude("+ keep")
    f.add_exclude("!x")
    f.add_include("- drop")
    f.add_include("foo")
    assert [r.text() for r in f.rules] == [b"+ keep", b"- !x", b"- drop", b"+ foo"]
    f.add_exclude("!")
    assert f.rules == ()
    f.add_exclude("")
    assert f.rules == ()


def test_exclude_from_file_contents():
    f = FilterList()
    data = b"# comment\n; another\n\n*.o\r\n+ *.c\r- *.h\n  spaced\n"
    f.add_from(data)
    assert [r.text() for r in f.rules] == [b"- *.o", b"+ *.c", b"- *.h", b"-   spaced"]
    g = FilterList()
    g.add_from(b"a\0b\0#c\0", include=True, from0=True)
    assert [r.text() for r in g.rules] == [b"+ a", b"+ b"]


def test_merge_file_read_through_reader():
    files = {b"outer": b"- *.o\n. inner\n+ *.c\n", b"inner": b"- secret\n"}
    f = FilterList(read_file=files.get)
    f.add(". outer")
    assert [r.text() for r in f.rules] == [b"- *.o", b"- secret", b"+ *.c"]
    f = FilterList()
    f.add("merge,+ list", read_file={b"list": b"a\nb\n"}.get)
    assert [r.text() for r in f.rules] == [b"+ a", b"+ b"]
    f = FilterList()
    f.add("merge,w- list", read_file={b"list": b"a b\n\tc\n"}.get)
    assert [r.text() for r in f.rules] == [b"- a", b"- b", b"- c"]


def test_merge_file_errors():
    with pytest.raises(FilterError, match="failed to open exclude file missing"):
        FilterList().add(". missing", read_file=lambda name: None)
    with pytest.raises(FilterError, match="no reader"):
        FilterList().add(". x")
    with pytest.raises(FilterError, match="depth limit"):
        FilterList().add(". loop", read_file=lambda name: b". loop\n")
    with pytest.raises(FilterError, match=r"<rule from bad line 2>"):
        FilterList().add(". bad", read_file=lambda name: b"- ok\n-Q secret-text\n")


def test_word_split_file_tokens_are_rules():
    """rsync splits a "w" file into words before parsing, so a prefix and its
    pattern cannot be separated by a space there."""
    with pytest.raises(FilterError, match="unexpected end"):
        FilterList().add("merge,w w", read_file={b"w": b"- foo + bar"}.get)
    f = FilterList()
    f.add("merge,w w", read_file={b"w": b"-_foo +_bar"}.get)
    assert [r.text() for r in f.rules] == [b"- foo", b"+ bar"]


def test_side_modifier_conflict_in_merge_file():
    with pytest.raises(FilterError, match="specified-side merge file"):
        FilterList().add("merge,s f", read_file={b"f": b"H x\n"}.get)
    f = FilterList()
    f.add("merge,s f", read_file={b"f": b"- x\n"}.get)
    assert [r.text() for r in f.rules] == [b"-s x"]


def test_F_option():
    f = FilterList()
    f.add_F()
    assert [r.text() for r in f.rules] == [b": /.rsync-filter"]
    f.add_F()
    f.add_F()
    assert [r.text() for r in f.rules] == [b": /.rsync-filter", b"- .rsync-filter"]


def test_duplicate_dir_merge_dropped():
    f = FilterList([": .a", ": x/.a", ":C", ":C"])
    assert [r.text() for r in f.rules] == [b": .a", b":C .cvsignore"]


def test_exclude_self_and_cvs_merge():
    f = FilterList([":e .rules"])
    assert [r.text() for r in f.rules] == [b"- .rules", b": .rules"]


# --------------------------------------------------------------------------
# Per-directory merge files

class Tree:
    """An in-memory tree of merge files: {reldir: {name: contents}}."""

    def __init__(self, files):
        self.files = {k.encode(): {n.encode(): v.encode() for n, v in d.items()}
                      for k, d in files.items()}

    def reader(self, reldir: bytes):
        def read(name: bytes):
            parts = [p for p in reldir.split(b"/") if p]
            while name.startswith(b"../"):
                name = name[3:]
                if parts:
                    parts.pop()
            return self.files.get(b"/".join(parts), {}).get(name)
        return read


def test_dir_merge_inheritance_and_order():
    tree = Tree({"": {".r": "- *.o\n+ keep.o\n"},
                 "a": {".r": "+ keep.o\n- /anch\n"},
                 "a/b": {".r": "!\n- *.c\n"}})
    f = FilterList([": .r", "- keep.o"])
    s0 = f.enter_dir(b"", tree.reader(b""))
    assert f.excluded(b"x.o", False) and f.excluded(b"keep.o", False)
    s1 = f.enter_dir(b"a", tree.reader(b"a"))
    assert not f.excluded(b"a/keep.o", False)
    assert f.excluded(b"a/x.o", False)
    assert f.excluded(b"a/anch", False) and not f.excluded(b"a/b/anch", False)
    s2 = f.enter_dir(b"a/b", tree.reader(b"a/b"))
    assert f.excluded(b"a/b/x.c", False)
    assert f.excluded(b"a/b/anch", False) is False
    assert not f.excluded(b"a/b/x.o", False), "'!' cleared the inherited rules"
    assert f.excluded(b"a/b/keep.o", False), "global rule after the dir-merge"
    f.leave_dir(s2)
    assert not f.excluded(b"a/x.c", False) and f.excluded(b"a/x.o", False)
    f.leave_dir(s1)
    f.leave_dir(s0)
    with pytest.raises(FilterError, match="out of order"):
        f.leave_dir(s0)


def test_dir_merge_nearer_directories_win():
    tree = Tree({"": {".r": "- *.o\n"}, "a": {".r": "+ *.o\n"}, "a/b/c": {".r": "- k.o\n"}})
    f = FilterList([": .r"])
    states = [f.enter_dir(d, tree.reader(d)) for d in (b"", b"a", b"a/b", b"a/b/c")]
    assert not f.excluded(b"a/b/c/x.o", False)
    assert f.excluded(b"a/b/c/k.o", False)
    for state in reversed(states[2:]):
        f.leave_dir(state)
    assert not f.excluded(b"a/x.o", False)
    for state in reversed(states[:2]):
        f.leave_dir(state)


def test_dir_merge_no_inherit_and_nested():
    tree = Tree({"": {".n": "- top\n", ".r": ": .inner\n"},
                 "d": {".inner": "- deep\n"},
                 "d/e": {".inner": "- deeper\n"}})
    f = FilterList([":n .n", ": .r"])
    s0 = f.enter_dir(b"", tree.reader(b""))
    assert f.excluded(b"top", False)
    s1 = f.enter_dir(b"d", tree.reader(b"d"))
    assert not f.excluded(b"d/top", False)
    assert f.excluded(b"d/deep", False)
    s2 = f.enter_dir(b"d/e", tree.reader(b"d/e"))
    assert f.excluded(b"d/e/deep", False) and f.excluded(b"d/e/deeper", False)
    f.leave_dir(s2)
    f.leave_dir(s1)
    assert not f.excluded(b"deep", False)
    f.leave_dir(s0)
    assert f._active[-1].rule.pattern == b".r"


def test_dir_merge_parent_scan():
    tree = Tree({"": {".rf": "- fromroot\n- /anchored\n"},
                 "srv": {".rf": "- fromsrv\n"},
                 "srv/data": {".rf": "- here\n"}})
    f = FilterList([": /.rf"], root=b"/srv/data")
    seen = []

    def read(name):
        seen.append(name)
        return tree.reader(b"srv/data")(name)
    s = f.enter_dir(b"", read)
    assert seen == [b"../../.rf", b"../.rf", b".rf"]
    for name in (b"fromroot", b"fromsrv", b"here"):
        assert f.excluded(name, False)
    assert not f.excluded(b"anchored", False)
    f.leave_dir(s)


def test_dir_merge_rules_from_file_are_not_echoed():
    f = FilterList([": .r"])
    with pytest.raises(FilterError) as info:
        f.enter_dir(b"", {b".r": b"- ok\nQ top-secret\n"}.get)
    assert "top-secret" not in str(info.value) and ".r line 2" in str(info.value)
    assert f._stack == [], "a failed enter_dir leaves no state behind"


def test_dir_merge_word_split_and_cvs():
    f = FilterList([":C", ":w- .w"])
    s = f.enter_dir(b"", {b".cvsignore": b"a.x b.x\n! c.x", b".w": b"d e"}.get)
    assert [f.excluded(n, False) for n in (b"a.x", b"c.x", b"d", b"e")] == [
        False, True, True, True]
    f.leave_dir(s)


# --------------------------------------------------------------------------
# Wire form

def test_wire_framing_round_trip():
    texts = [b"- *.o", b"+ keep/", b":n- .r"]
    data = rf.encode_wire_list(texts)
    assert data[:4] == struct.pack("<i", 5)
    assert rf.decode_wire_list(data + b"tail") == (texts, len(data))
    assert rf.decode_wire_list(data[:-1]) is None
    with pytest.raises(FilterError, match="over-long"):
        rf.decode_wire_list(struct.pack("<i", 1 << 20))
    with pytest.raises(FilterError, match="over-long"):
        rf.decode_wire_list(struct.pack("<i", -5))


ROUND_TRIP_BOTH = ["- *.o", "+ dir/", "-/ /abs/x", "-! */", ":n- .r", ":C", "-C",
                   ": /.rsync-filter", "-x user.*", "+sr both", "- - dash", "+ + plus",
                   ":w+ .inc", "-/!x a"]
ROUND_TRIP_PULL = ["H hid", "S sh", "-s alsohid", ":s .side"]
ROUND_TRIP_PUSH = ["P pr", "R ri", "+r alsori", ":r .rside"]


@pytest.mark.parametrize("protocol", [29, 30, 31, 32])
@pytest.mark.parametrize("client_is_sender", [False, True], ids=["pull", "push"])
def test_encode_then_parse_round_trips(protocol, client_is_sender):
    texts = ROUND_TRIP_BOTH + (ROUND_TRIP_PUSH if client_is_sender else ROUND_TRIP_PULL)
    if client_is_sender:
        texts.remove("-C")
    if protocol >= 30:
        texts.append("-p perishable")
    rules = [r for t in texts for r in rf.parse_rules(t)]
    sent = rf.encode_rules(rules, protocol, client_is_sender=client_is_sender)
    assert [r for t in sent for r in rf.parse_wire_rule(t, protocol)] == rules


@pytest.mark.parametrize("protocol", [29, 32])
def test_encode_keeps_one_sided_rules_home(protocol):
    pull_only = [r for t in ROUND_TRIP_PULL for r in rf.parse_rules(t)]
    push_only = [r for t in ROUND_TRIP_PUSH for r in rf.parse_rules(t)]
    assert rf.encode_rules(pull_only, protocol, client_is_sender=True) == []
    assert rf.encode_rules(push_only, protocol, client_is_sender=False) == []
    cvs = rf.encode_rules(rf.parse_rules("-C"), protocol, client_is_sender=True)
    assert [r for t in cvs for r in rf.parse_wire_rule(t, protocol)] == \
        rf.default_cvs_rules(protocol)


def test_encode_old_protocols():
    rules = [r for t in ["- *.o", "+ keep", "- + odd", "H hid"] for r in rf.parse_rules(t)]
    assert rf.encode_rules(rules, 28) == [b"*.o", b"+ keep", b"- + odd", b"hid"]
    parsed = [r for t in rf.encode_rules(rules, 28) for r in rf.parse_wire_rule(t, 28)]
    assert [r.text() for r in parsed] == [b"- *.o", b"+ keep", b"- + odd", b"- hid"]
    for text in ("-/ x", ": .r", "-! x", "-x x"):
        with pytest.raises(FilterError, match="too modern"):
            rf.encode_rules(rf.parse_rules(text), 28)
    with pytest.raises(FilterError, match="too modern"):
        rf.encode_rules(rf.parse_rules("-p x"), 29, client_is_sender=True)
    assert rf.encode_rules(rf.parse_rules("-p x"), 29) == [b"- x"]


def test_encode_delete_excluded_and_cvs():
    f = FilterList(["- *.o", "P keep", ": .r"], delete_excluded=True)
    assert f.encode(client_is_sender=False) == [b"-s *.o", b": .r"]
    assert f.encode(client_is_sender=True) == [b"-r keep", b": .r"]
    g = FilterList(["- x"], protocol=30)
    sent = g.encode(client_is_sender=True, cvs_exclude=True)
    assert sent[:3] == [b"- x", b":C .cvsignore", b"-p RCS"] and sent[-1] == b"-p .bzr/"
    assert g.encode(client_is_sender=False, cvs_exclude=True) == [b"- x"]
    assert FilterList(["-C"]).encode(client_is_sender=False) == [b"-C "]


@pytest.mark.parametrize("text,message", [
    (b"", "empty filter rule"),
    (b"- " + b"x" * 5200, "over-long filter rule"),
    (b"- " + b"x" * 4096, "over-long filter pattern"),
    (b"- a\0b", "NUL byte"),
    (b"-Z x", "invalid modifier 'Z'"),
    (b"- ", "unexpected end"),
    (b"+", "unexpected end"),
    (b"?? x", "Unknown filter rule"),
])
def test_hostile_wire_rules(text, message):
    with pytest.raises(FilterError, match=re.escape(message)):
        rf.parse_wire_rule(text, 32)


def test_wire_rules_below_29_are_old_style():
    assert [r.text() for r in rf.parse_wire_rule(b"- x", 28)] == [b"- x"]
    assert [r.text() for r in rf.parse_wire_rule(b"H x", 28)] == [b"- H x"]
    assert rf.parse_wire_rule(b"!", 28)[0].flags & Flag.CLEAR_LIST


def test_filter_list_on_wire():
    on = rf.filter_list_on_wire
    assert on(client_is_sender=False, protocol=27)
    assert not on(client_is_sender=True, protocol=31)
    assert on(client_is_sender=True, protocol=31, delete_mode=True)
    assert on(client_is_sender=True, protocol=31, delete_mode=True, delete_excluded=True)
    assert not on(client_is_sender=True, protocol=28, delete_mode=True, delete_excluded=True)
    assert on(client_is_sender=True, protocol=28, prune_empty_dirs=True)


def test_server_side_list_from_wire():
    f = FilterList(delete_excluded=True)
    for text in (b"- *.o", b":e .r", b"-r keep"):
        for rule in rf.parse_wire_rule(text, 31):
            f.add(rule)
    assert [r.text() for r in f.rules] == [b"-s *.o", b"- .r", b": .r", b"-r keep"]


def test_daemon_parameters():
    f = FilterList(root=b"sub")
    f.add_daemon_rules("- secret/ + *.c - sub/*.o", kind="filter")
    assert f.excluded(b"secret/x", False)
    assert f.excluded(b"secret", True)
    assert f.excluded(b"a.o", False) and not f.excluded(b"d/a.o", False)
    g = FilterList()
    g.add_daemon_rules("*.bak private/", kind="exclude")
    assert [r.text() for r in g.rules] == [b"- *.bak", b"- private/***"]


# --------------------------------------------------------------------------
# Agreement with stock rsync

def _filter_args_to_list(args, root: bytes, home: Path, protocol: int = 32,
                         sent: bool = True) -> FilterList:
    """Our FilterList for rsync's filter options, as a sending client has it
    before (sent=False) or after the list went to the server."""
    home_file = home / ".cvsignore"
    f = FilterList(root=root, protocol=protocol, delete_excluded="--delete-excluded" in args,
                   cvsignore=home_file.read_bytes() if home_file.exists() else b"",
                   read_file=lambda name: _read_or_none(Path(os.fsdecode(name))))
    for arg in args:
        if arg == "-F":
            f.add_F()
        elif arg in ("-C", "--delete-excluded"):
            continue
        else:
            opt, _, value = arg.partition("=")
            value = value.encode()
            if opt == "--exclude":
                f.add_exclude(value)
            elif opt == "--include":
                f.add_include(value)
            elif opt == "--filter":
                f.add(value)
            elif opt in ("--exclude-from", "--include-from"):
                f.add_from(Path(value.decode()).read_bytes(), include=opt == "--include-from",
                           name=value.decode())
            else:
                raise AssertionError(arg)
    if "-C" in args and sent:
        f.add_cvs_exclude(server=False, sender=True)
    return f


def _read_or_none(path: Path):
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def _reader(directory: Path):
    return lambda name: _read_or_none(directory / os.fsdecode(name))


def _walk_like_sender(f: FilterList, src: Path) -> set[bytes]:
    """The names rsync -r would send, as --out-format=%n prints them."""
    out = {b"./"}

    def walk(rel: bytes) -> None:
        here = src / os.fsdecode(rel) if rel else src
        state = f.enter_dir(rel, _reader(here))
        subdirs = []
        try:
            for entry in os.scandir(here):
                path = (rel + b"/" if rel else b"") + os.fsencode(entry.name)
                is_dir = entry.is_dir(follow_symlinks=False)
                if f.excluded(path, is_dir):
                    continue
                out.add(path + b"/" if is_dir else path)
                if is_dir:
                    subdirs.append(path)
            for sub in sorted(subdirs):
                walk(sub)
        finally:
            f.leave_dir(state)

    walk(b"")
    return out


def _make_tree(root: Path) -> Path:
    src = root / "src"
    files = {
        "a.c": "", "a.o": "", "b.txt": "", "with space.c": "", "with space.o": "",
        ".hidden": "", ".hidden.o": "", "README": "", "Makefile": "", "q1.c": "",
        "q[1].c": "", "st*r.c": "", "back\\slash.c": "", "core": "", "x~": "",
        ".rsync-filter": "- *.txt\n- Makefile\n",
        ".rules": "+ keep.o\n- *.o\n",
        "foo/bar/baz": "", "foo/bar/qux.c": "", "foo/bar.c": "", "foo/x.o": "",
        "foo/keep.o": "", "foo/.rsync-filter": "- bar.c\n+ x.o\n- /bar/qux.c\n",
        "foo/.cvsignore": "bar.c qux.c",
        "bar/q.c": "", "bar/bar": "", "bar/b.txt": "",
        "dir/inner.c": "", "dir/dir/deep.c": "",
        "sub/keep.o": "", "sub/drop.o": "", "sub/.rules": "!\n- keep.o\n",
        "sub/deeper/.rules": "- /anch.c\n", "sub/deeper/anch.c": "",
        "sub/deeper/x/anch.c": "", "sub/deeper/x/y.o": "",
        "a/b": "", "a/b.d/c": "", "a/bb/b": "",
        "deep/x/y/z.c": "", "deep/x/bar/w.c": "", "deep/x/bar/w.o": "",
        "nr/.nr": "nope\n", "nr/nope": "", "nr/child/nope": "",
        "ord/.rules": "+ *.o\n", "ord/deeper/z.o": "", "ord/deeper/.rules": "- keep.o\n",
        "ord/deeper/keep.o": "", "ord/deeper/most/keep.o": "", "ord/deeper/most/y.o": "",
    }
    for name, content in files.items():
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    (src / "empty").mkdir()
    (src.joinpath(os.fsdecode(b"caf\xe9.c"))).write_text("")
    return src


SENDER_CASES = [
    ["--exclude=*.o"],
    ["--include=*/", "--include=*.c", "--exclude=*"],
    ["--exclude=/foo"],
    ["--exclude=**/bar"],
    ["--exclude=bar/"],
    ["--exclude=foo/bar"],
    ["--exclude=foo/*/baz", "--exclude=/foo/**/qux.c"],
    ["--exclude=foo/***"],
    ["--exclude=deep/**"],
    ["--exclude=/deep/**/w.*"],
    ["--filter=- /a/b"],
    ["--filter=- a/b*"],
    ["--filter=-! */"],
    ["--filter=-! *.c", "--filter=+ */"],
    ["--exclude=*[0-9]*"],
    ["--exclude=q[1].c"],
    ["--exclude=q\\[1\\].c", "--exclude=st\\*r.c"],
    ["--exclude=back\\slash.c"],
    ["--exclude=back\\\\slash*"],
    ["--exclude=[[:upper:]]*"],
    ["--exclude=* *"],
    ["--exclude=.*"],
    ["--exclude=caf?.c"],
    ["--include=a.o", "--exclude=*.o"],
    ["--exclude=*.o", "--include=a.o"],
    ["--exclude=*.o", "--filter=!", "--exclude=*.c"],
    ["-F"],
    ["-F", "-F"],
    ["-F", "--exclude=*.o"],
    ["--filter=dir-merge .rules"],
    ["--filter=:e .rules", "--exclude=*.txt"],
    ["--filter=:n .rules"],
    ["--filter=: .rules", "--filter=- *.o", "--filter=+ keep.o"],
    ["--filter=- keep.o", "--filter=: .rules"],
    ["--filter=:- .nr"],
    ["--filter=:n- .nr"],
    ["--filter=:C"],
    ["-C"],
    ["-C", "--include=core"],
    ["--filter=-C", "--filter=+ *"],
    ["--filter=H *.c"],
    ["--filter=P *.c"],
    ["--filter=S a.c", "--filter=- *.c"],
    ["--filter=-p *.o"],
    ["--filter=-x *"],
    ["--filter=-/ {root}/foo"],
    ["--filter=-/ src/a.c"],
    ["--filter=merge {tmp}/merged"],
    ["--exclude-from={tmp}/excludes"],
    ["--include-from={tmp}/includes", "--exclude=*"],
    ["--filter=dir-merge,w- {tmp}/.ws"],
    ["--filter=dir-merge {tmp}/../nowhere/.rules"],
]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    base = tmp_path_factory.mktemp("filters")
    src = _make_tree(base)
    home = base / "home"
    home.mkdir()
    (home / ".cvsignore").write_text("*.txt\n")
    (base / "merged").write_text("# merged\n- *.o\ndir-merge .rules\n+ *.c\n- b*\n")
    (base / "excludes").write_bytes(b"; comment\n\n*.o\r\n+ a.c\n*.c\n/bar\n")
    (base / "includes").write_text("*/\n*.c\n- foo/\n")
    (base / ".rsync-filter").write_text("- README\n- /src/a.c\n")
    (base / ".ws").write_text("a.c  b.txt\nREADME\n")
    return base, src, home


def _rsync_names(args, src: Path, dst: Path, home: Path, extra=()) -> set[bytes]:
    rsync = need_rsync()
    env = dict(os.environ, HOME=str(home), LC_ALL="C")
    env.pop("CVSIGNORE", None)
    proc = subprocess.run([rsync, "-r", "-n", "-8", "--out-format=%n", *extra, *args,
                           f"{src}/", f"{dst}/"], capture_output=True, env=env)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return {line for line in proc.stdout.split(b"\n") if line}


@pytest.mark.parametrize("args", SENDER_CASES, ids=lambda a: " ".join(a))
def test_sender_file_set_matches_rsync(sandbox, args):
    base, src, home = sandbox
    real_src = Path(os.path.realpath(src))
    args = [a.replace("{root}", str(real_src)).replace("{tmp}", str(base)) for a in args]
    expected = _rsync_names(args, src, base / "nonexistent-dst", home)
    ours = _walk_like_sender(_filter_args_to_list(args, os.fsencode(real_src), home), src)
    assert sorted(ours) == sorted(expected)


DELETE_CASES = [
    ["--exclude=*.keep"],
    ["--filter=P *.keep"],
    ["--filter=-p *.keep"],
    ["--filter=H *.keep"],
    ["--exclude=*.keep", "--delete-excluded"],
    ["--filter=P *.keep", "--delete-excluded"],
    ["--filter=R top.keep", "--exclude=*.keep"],
    ["--filter=P gone/"],
    ["--filter=P /gone/sub"],
    ["--filter=- *.keep", "--filter=+ d/x/p.keep"],
    ["-C"],
]


def _model_deletions(f: FilterList, sent: set[bytes], dst: Path) -> set[bytes]:
    deleted: set[bytes] = set()

    def entries(rel: bytes):
        here = dst / os.fsdecode(rel) if rel else dst
        for entry in os.scandir(here):
            path = (rel + b"/" if rel else b"") + os.fsencode(entry.name)
            yield path, entry.is_dir(follow_symlinks=False)

    def remove_contents(rel: bytes) -> bool:
        state = f.enter_dir(rel, _reader(dst / os.fsdecode(rel)))
        emptied = True
        try:
            for path, is_dir in entries(rel):
                if f.protected(path, is_dir, ignore_perishable=True):
                    emptied = False
                elif is_dir and not remove_contents(path):
                    emptied = False
                else:
                    deleted.add(path + b"/" if is_dir else path)
        finally:
            f.leave_dir(state)
        return emptied

    def delete_in(rel: bytes) -> None:
        state = f.enter_dir(rel, _reader(dst / os.fsdecode(rel) if rel else dst))
        try:
            for path, is_dir in sorted(entries(rel)):
                if f.protected(path, is_dir):
                    continue
                if path in sent or path + b"/" in sent:
                    if is_dir and path + b"/" in sent:
                        delete_in(path)
                elif not is_dir:
                    deleted.add(path)
                elif remove_contents(path):
                    deleted.add(path + b"/")
        finally:
            f.leave_dir(state)

    delete_in(b"")
    return deleted


@pytest.mark.parametrize("args", DELETE_CASES, ids=lambda a: " ".join(a))
def test_receiver_deletions_match_rsync(tmp_path, args):
    rsync = need_rsync()
    src, dst = tmp_path / "src", tmp_path / "dst"
    for name in ("a", "d/b", "d/e/c", "top.keep"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text("")
    for name in ("zz", "top.keep", "other.keep", "d/x/y", "d/x/p.keep", "d/gone.o",
                 "gone/sub/f.keep", "gone/g", "gone/sub/h", "CVS/Entries", "d/core"):
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        (dst / name).write_text("")
    f = _filter_args_to_list(args, os.fsencode(os.path.realpath(src)), tmp_path)
    sent = _walk_like_sender(f, src)
    expected_deleted = _model_deletions(f, sent, dst)
    env = dict(os.environ, HOME=str(tmp_path), LC_ALL="C")
    env.pop("CVSIGNORE", None)
    proc = subprocess.run([rsync, "-r", "--delete", "--out-format=%n", *args,
                           f"{src}/", f"{dst}/"], capture_output=True, env=env)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    deleted = {line[len(b"deleting "):] for line in proc.stdout.split(b"\n")
               if line.startswith(b"deleting ")}
    assert sorted(expected_deleted) == sorted(deleted)


PARSE_ORACLE_CASES = [
    "- foo", "exclude,/ foo", "include,! bar/", "hide x", "show x", "protect x",
    "risk x", "H,p x", ":n- .r", ":+ .r", ":w .r", ":e .r", ":ew /.r", ":s .r",
    ":rp .r", "-x user.foo", "-px x", "-,sr x", "-/!p foo/", ":C", "- foo//",
    "Hs x", "HC", "-e x", "-n x", "-z x", "- ", "!", "! x", "clear", "clear,x",
    "c foo", "merge", "show,s x", ":!x .r", ".! x", "exclude", "dir-merge", "X foo",
    "-/,! foo", "-_foo", "exclude_foo", "-  leading",
]


@pytest.mark.parametrize("rule", PARSE_ORACLE_CASES)
def test_parsing_matches_rsync_debug_output(tmp_path, rule):
    rsync = need_rsync()
    (tmp_path / "src").mkdir()
    proc = subprocess.run([rsync, "-r", "-n", "--debug=FILTER2", f"--filter={rule}",
                           f"{tmp_path}/src/", f"{tmp_path}/dst/"], capture_output=True)
    output = (proc.stdout + proc.stderr).decode(errors="replace")
    theirs = re.findall(r"^\[client\] add_rule\((.*)\)(?: -- CAUTION.*)?$", output, re.M)
    try:
        ours = [r.text().decode() for r in FilterList([rule]).rules]
    except FilterError as exc:
        error = re.search(r"^(.*)\nrsync error: syntax", output, re.M)
        assert error, output
        assert str(exc) == error.group(1)
    else:
        assert proc.returncode == 0, output
        assert ours == theirs


CAPTURE_RELAY = textwrap.dedent("""\
    import os, subprocess, sys, threading
    server = subprocess.Popen(sys.argv[2:], stdin=subprocess.PIPE)
    def relay():
        with open(os.environ["CAPTURE_FILE"], "wb") as log:
            while data := os.read(0, 65536):
                log.write(data)
                log.flush()
                try:
                    server.stdin.write(data)
                    server.stdin.flush()
                except BrokenPipeError:
                    break
        server.stdin.close()
    threading.Thread(target=relay, daemon=True).start()
    sys.exit(server.wait())
    """)

WIRE_SENTINEL = "-sr SENTINEL.x"
WIRE_CASES = [
    ["--exclude=*.o", "--filter=H hid", "--filter=P prot", "--filter=+ inc/",
     "--filter=S sh", "--filter=R ri"],
    ["--filter=+p per", "--filter=-/ /abs", "--filter=-! */", "--exclude=- dash"],
    ["--filter=:n- .r", "--filter=dir-merge,e .x", "--filter=-sr both"],
    ["-C", "--exclude=x"],
    ["--filter=-C", "--filter=:C"],
    ["--delete-excluded", "--exclude=*.o", "--filter=P keep", "--filter=: .r"],
]


def _captured_filter_list(tmp_path, args, protocol, push):
    rsync = need_rsync()
    relay = tmp_path / "relay.py"
    relay.write_text(CAPTURE_RELAY)
    capture = tmp_path / "capture.bin"
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "f").write_text("")
    dst = tmp_path / "dst"
    ends = [f"{src}/", f"localhost:{dst}/"] if push else [f"localhost:{src}/", f"{dst}/"]
    env = dict(os.environ, CAPTURE_FILE=str(capture), HOME=str(tmp_path), LC_ALL="C")
    env.pop("CVSIGNORE", None)
    proc = subprocess.run(
        [rsync, "-r", "-n", f"--protocol={protocol}", "-e", f"{sys.executable} {relay}",
         *(["--delete"] if push else []), f"--filter={WIRE_SENTINEL}", *args, *ends],
        capture_output=True, env=env, timeout=120)
    if proc.returncode != 0:
        return None, proc.stderr.decode(errors="replace")
    data = capture.read_bytes()
    marker = b"SENTINEL.x"
    at = data.find(marker)
    assert at >= 0, data
    for start in range(at, max(at - 8, 4), -1):
        if struct.unpack_from("<i", data, start - 4)[0] == at + len(marker) - start:
            texts, _ = rf.decode_wire_list(data[start - 4:])
            return texts, None
    raise AssertionError(f"cannot frame the captured filter list: {data!r}")


@pytest.mark.parametrize("protocol", [27, 28, 29, 30, 31, 32])
@pytest.mark.parametrize("push", [False, True], ids=["pull", "push"])
@pytest.mark.parametrize("args", WIRE_CASES, ids=lambda a: " ".join(a))
def test_encode_matches_what_rsync_sends(tmp_path, args, protocol, push):
    sent, error = _captured_filter_list(tmp_path, args, protocol, push)
    f = _filter_args_to_list([f"--filter={WIRE_SENTINEL}", *args], b"", tmp_path, protocol,
                             sent=False)
    try:
        ours = f.encode(client_is_sender=push, cvs_exclude="-C" in args)
    except FilterError as exc:
        assert sent is None, f"rsync sent {sent} but we refused: {exc}"
        assert "too modern" in error and "too modern" in str(exc)
        return
    assert error is None, error
    assert ours == sent


DAEMON_FILTERS = {
    "filter": "- secret/ - /sub/*.o + *.c",
    "exclude": "*.bak private/ /a/y*",
}


@pytest.fixture
def daemon_module(tmp_path):
    rsync = need_rsync()
    module = tmp_path / "mod"
    for name in ("x.bak", "keep.c", "secret/s", "sub/private/p", "sub/y.o", "a/y.o",
                 "a/z.c", "sub/private.c", "sub/a/y.o", "private.bak/in"):
        (module / name).parent.mkdir(parents=True, exist_ok=True)
        (module / name).write_text("")
    identity = "uid = root\ngid = root\n" if os.geteuid() == 0 else ""
    conf = tmp_path / "rsyncd.conf"
    conf.write_text(f"use chroot = no\n{identity}[mod]\npath = {module}\nread only = yes\n"
                    + "".join(f"{k} = {v}\n" for k, v in DAEMON_FILTERS.items()))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon = subprocess.Popen([rsync, "--daemon", "--no-detach", f"--port={port}",
                               "--address=127.0.0.1", f"--config={conf}"])
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if daemon.poll() is not None:
                    pytest.fail("rsync --daemon exited at start-up")
                time.sleep(0.05)
        yield module, port
    finally:
        daemon.terminate()
        daemon.wait()


@pytest.mark.parametrize("subdir", ["", "sub"])
def test_daemon_parameters_match_rsyncd(tmp_path, daemon_module, subdir):
    module, port = daemon_module
    proc = subprocess.run([RSYNC, "-r", "-n", "--out-format=%n",
                           f"rsync://127.0.0.1:{port}/mod/{subdir + '/' if subdir else ''}",
                           f"{tmp_path}/out/"], capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    expected = {line for line in proc.stdout.split(b"\n") if line}
    f = FilterList(root=subdir)
    for kind, text in DAEMON_FILTERS.items():
        f.add_daemon_rules(text, kind=kind)
    assert sorted(_walk_like_sender(f, module / subdir)) == sorted(expected)
