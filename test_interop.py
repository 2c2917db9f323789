"""Stock rsync against gokr-rsyncd: pulls over every protocol, compared with
what a stock rsync daemon serving the same tree gives the same client."""

import os
import re

import pytest

from conftest import IS_ROOT, diff_snapshots, run, snapshot

PROTOCOLS = [27, 28, 29, 30, 31, 32]


@pytest.fixture
def daemons(src_tree, our_daemon_factory, stock_daemon_factory, rsync_bin):
    ours = our_daemon_factory({"m": src_tree})
    stock = stock_daemon_factory(rsync_bin, {"m": src_tree})
    return ours, stock


def pull(client, url, dst, *flags, check=True):
    return run([client, *flags, url, dst], check=check)


def stats(output):
    text = output.decode()
    def num(label):
        m = re.search(label + r": ([\d,]+)", text)
        return int(m.group(1).replace(",", "")) if m else None
    return {"literal": num("Literal data"), "matched": num("Matched data"),
            "files": num("Number of regular files transferred")}


CASES = [("3.5.0", p, ("-a",)) for p in PROTOCOLS]
if IS_ROOT:
    CASES += [("3.5.0", p, ("-aHD", "--numeric-ids")) for p in PROTOCOLS]
    CASES += [("3.5.0", p, ("-aHD",)) for p in (27, 32)]
CASES += [("3.2.7", 32, ("-a",)), ("3.2.7", 32, ("-aHD",))]


@pytest.mark.parametrize("version,protocol,flags", CASES,
                         ids=["%s-p%d-%s" % (v, p, "".join(f)) for v, p, f in CASES])
def test_pull_equals_stock_daemon(daemons, tmp_path, rsync_bin, rsync327_bin, src_tree, version,
                                  protocol, flags):
    """The same client pulling the same tree from our daemon and from stock
    rsync's ends with byte- and metadata-identical trees, and the data is
    the source's."""
    ours, stock = daemons
    client = rsync_bin if version == "3.5.0" else rsync327_bin
    proto = ("--protocol=%d" % protocol,) if protocol != 32 else ()
    a, b = str(tmp_path / "ours"), str(tmp_path / "stock")
    pa = pull(client, ours.url + "/m/", a + "/", *flags, *proto, "--stats")
    pull(client, stock.url + "/m/", b + "/", *flags, *proto)
    ns = protocol >= 31
    sa, sb = snapshot(a, ns=ns), snapshot(b, ns=ns)
    assert sa == sb, diff_snapshots(sa, sb)
    src = snapshot(src_tree, ns=ns)
    for rel, desc in sa.items():
        if rel in ("<hardlinks>", "."):
            continue
        assert "sha256" not in desc or desc["sha256"] == src[rel]["sha256"], rel
    if "-H" in "".join(flags):
        assert sa["<hardlinks>"] == src["<hardlinks>"]
        assert sa["<hardlinks>"], "the tree has hard links"
    assert stats(pa.stdout)["files"] and stats(pa.stdout)["literal"] > 60 << 20


def test_second_pull_moves_no_data(daemons, tmp_path, rsync_bin):
    ours, _ = daemons
    dst = str(tmp_path / "d")
    pull(rsync_bin, ours.url + "/m/", dst + "/", "-a")
    again = stats(pull(rsync_bin, ours.url + "/m/", dst + "/", "-a", "--stats").stdout)
    assert again["files"] == 0 and again["literal"] == 0


@pytest.mark.parametrize("protocol", [27, 30, 32])
def test_delta_moves_about_the_changed_bytes(daemons, tmp_path, rsync_bin, src_tree, protocol):
    ours, _ = daemons
    dst = str(tmp_path / "d")
    pull(rsync_bin, ours.url + "/m/big.bin", dst, "-a")
    size = os.path.getsize(dst)
    changed = 0
    with open(dst, "r+b") as f:
        for i in range(20):
            f.seek((size // 21) * (i + 1))
            f.write(os.urandom(4096))
            changed += 4096
    out = pull(rsync_bin, ours.url + "/m/big.bin", dst, "-a", "--no-whole-file", "-I", "--stats",
               "--protocol=%d" % protocol).stdout
    s = stats(out)
    block = 8192
    assert s["literal"] <= changed + 20 * 2 * block, s
    assert s["literal"] >= changed, s
    assert s["matched"] >= size - changed - 20 * 2 * block, s
    assert snapshot(dst) == snapshot(os.path.join(src_tree, "big.bin"))


@pytest.mark.parametrize("choice", ["xxh128", "xxh3", "xxh64", "md5", "md4", "sha1"])
def test_checksum_choice_and_c(daemons, tmp_path, rsync_bin, src_tree, choice):
    """Each checksum works for delta and for -c, which must notice a file
    whose content changed while its size and mtime did not."""
    ours, _ = daemons
    dst = str(tmp_path / "d")
    pull(rsync_bin, ours.url + "/m/", dst + "/", "-a", "--checksum-choice=" + choice)
    target = os.path.join(dst, "medium.bin")
    st = os.stat(target)
    with open(target, "r+b") as f:
        f.seek(1000)
        f.write(b"X" * 100)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    quick = stats(pull(rsync_bin, ours.url + "/m/", dst + "/", "-a", "--stats",
                       "--checksum-choice=" + choice).stdout)
    assert quick["files"] == 0
    out = stats(pull(rsync_bin, ours.url + "/m/", dst + "/", "-ac", "--no-whole-file", "--stats",
                     "--checksum-choice=" + choice).stdout)
    assert out["files"] == 1 and out["matched"] > 500_000, out
    assert snapshot(dst)["medium.bin"] == snapshot(src_tree)["medium.bin"]


FILTERS = [
    ["--exclude=*.o"],
    ["--include=*/", "--include=*.c", "--include=*.txt", "--exclude=*"],
    ["--exclude=/foo"],
    ["--exclude=foo/"],
    ["--exclude=**/b"],
    ["--exclude=a/**/*.txt"],
    ["--filter=- /a/b/c", "--filter=+ a/***", "--filter=- *"],
    ["--exclude=[a-f]*", "--include=*"],
    ["--exclude=*.bin", "--exclude=?ifo"],
    ["-F"],
    ["-FF", "--exclude=*.bin"],
    ["-C"],
    ["--filter=dir-merge .rsync-filter", "--exclude=big*"],
]


@pytest.mark.parametrize("flt", FILTERS, ids=[" ".join(f) for f in FILTERS])
def test_filters_select_the_same_files_as_stock(daemons, tmp_path, rsync_bin, flt):
    ours, stock = daemons
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    pull(rsync_bin, ours.url + "/m/", a + "/", "-a", *flt)
    pull(rsync_bin, stock.url + "/m/", b + "/", "-a", *flt)
    sa, sb = snapshot(a), snapshot(b)
    assert sorted(sa) == sorted(sb)
    assert sa == sb, diff_snapshots(sa, sb)


def test_subdirectory_and_single_file(daemons, tmp_path, rsync_bin):
    ours, stock = daemons
    for i, path in enumerate(("a", "a/", "a/b/c/deep.txt", "foo/bar/", "", "rel-link")):
        a, b = str(tmp_path / "a" / str(i)), str(tmp_path / "b" / str(i))
        os.makedirs(a)
        os.makedirs(b)
        pull(rsync_bin, ours.url + "/m/" + path, a + "/", "-a")
        pull(rsync_bin, stock.url + "/m/" + path, b + "/", "-a")
        sa, sb = snapshot(a), snapshot(b)
        if path and not path.endswith("/"):
            del sa["."], sb["."]
        assert sa == sb, (path, diff_snapshots(sa, sb))


def test_list_modules(our_daemon_factory, tmp_path, rsync_bin, src_tree):
    d = our_daemon_factory({"m": src_tree, "other": str(tmp_path)})
    out = run([rsync_bin, d.url + "/"]).stdout.decode()
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert names == ["m", "other"]


def test_unknown_module(our_daemon_factory, tmp_path, rsync_bin, src_tree):
    d = our_daemon_factory({"m": src_tree})
    p = run([rsync_bin, "-a", d.url + "/nope/", str(tmp_path / "x")], check=False)
    assert p.returncode == 5
    assert b"Unknown module 'nope'" in p.stderr


def test_acl_denies(tmp_path, our_daemon_factory, rsync_bin, src_tree):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('[[module]]\nname = "m"\npath = "%s"\nacl = ["deny 127.0.0.0/8", "allow all"]\n'
                   '[[module]]\nname = "ok"\npath = "%s"\nacl = ["allow 127.0.0.1/32", "deny all"]\n'
                   % (src_tree, src_tree))
    d = our_daemon_factory({}, extra=["--gokr.config=%s" % cfg])
    p = run([rsync_bin, "-a", d.url + "/m/", str(tmp_path / "x")], check=False)
    assert p.returncode == 5 and b"access denied" in p.stderr
    p = run([rsync_bin, "-a", d.url + "/ok/foo.txt", str(tmp_path / "y")])
    assert open(tmp_path / "y", "rb").read() == b"foo\n"


@pytest.mark.parametrize("flag", ["-X", "-A", "--remove-source-files"])
def test_refused_option(daemons, tmp_path, rsync_bin, flag):
    """Options we do not implement are refused with stock rsyncd's code 4 and
    a message naming them, never ignored."""
    ours, _ = daemons
    p = run([rsync_bin, "-a", flag, ours.url + "/m/foo.txt", str(tmp_path / "x")], check=False)
    assert p.returncode == 4, p.stderr
    assert b"not supported" in p.stderr
    assert not os.path.exists(tmp_path / "x")


def test_dotdot_and_symlink_escapes(tmp_path, our_daemon_factory, rsync_bin):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("do not serve")
    mod = tmp_path / "mod"
    mod.mkdir()
    (mod / "inside").write_text("ok")
    os.symlink(str(outside), mod / "outdir")
    os.symlink("../outside/secret", mod / "outfile")
    d = our_daemon_factory({"m": str(mod)})
    for path in ("../", "../outside/secret", "outdir/", "outdir/secret", "sub/../../outside/"):
        dst = tmp_path / ("dst" + path.replace("/", "_"))
        p = run([rsync_bin, "-a", d.url + "/m/" + path, str(dst)], check=False)
        # As in stock's daemon, ".." stops at the module's top: "../" is
        # the module itself, "../outside/secret" is "outside/secret".
        assert p.returncode != 0 or path == "../", path
        found = [f for _, _, fs in os.walk(dst) for f in fs] if dst.exists() else []
        assert "secret" not in found, path
        if path == "../":
            assert "inside" in found
    dst = tmp_path / "whole"
    run([rsync_bin, "-a", d.url + "/m/", str(dst)])
    assert os.readlink(dst / "outdir") == str(outside)
    assert os.path.islink(dst / "outfile")
    assert sorted(os.listdir(dst)) == ["inside", "outdir", "outfile"]


def test_pull_64mib_timing_report(daemons, tmp_path, rsync_bin, src_tree, capsys):
    """Not a timing assertion: records how long a 64 MiB pull takes from our
    daemon and from stock rsyncd, for the issue note."""
    import time
    ours, stock = daemons
    times = {}
    for name, d in (("ours", ours), ("stock", stock), ("ours2", ours), ("stock2", stock)):
        dst = str(tmp_path / name)
        t = time.monotonic()
        pull(rsync_bin, d.url + "/m/big.bin", dst, "-a")
        times[name] = time.monotonic() - t
        assert snapshot(dst) == snapshot(os.path.join(src_tree, "big.bin"))
    with capsys.disabled():
        print("\n64 MiB pull: ours %.2fs/%.2fs, stock %.2fs/%.2fs" % (
            times["ours"], times["ours2"], times["stock"], times["stock2"]))


def test_checksum_choice_none(daemons, tmp_path, rsync_bin, src_tree):
    """--checksum-choice=none: whole files with one-byte zero sums, from our
    daemon to the stock client and from a stock daemon to our client; with
    -c both sides refuse it as stock does (code 4)."""
    from conftest import client_cmd
    ours, stock = daemons
    for client, daemon in (([rsync_bin], ours), (client_cmd(), stock)):
        dst = str(tmp_path / ("d%d" % len(os.listdir(tmp_path))))
        out = stats(run(client + ["-aH", "--no-W", "--stats", "--checksum-choice=none",
                                  daemon.url + "/m/", dst + "/"]).stdout)
        assert out["matched"] == 0 and out["files"] > 0
        assert snapshot(dst) == snapshot(src_tree)
        p = run(client + ["-ac", "--checksum-choice=none", daemon.url + "/m/", dst + "/"], check=False)
        assert p.returncode == 4 and b"Invalid checksum-choice for --checksum: none" in p.stderr, p.stderr


GLOBS = ["m/*.bin", "m/[ab]*", "m/*/*.txt", "m/a*/", "m/../", "m/a/../foo.txt", "m/nomatch*",
         "m/?/b", "m/[!a-e]*", "m/missing", "m/a/../../../etc/"]


def test_wildcards_and_dotdot_in_paths(tmp_path, our_daemon_factory, stock_daemon_factory, rsync_bin, src_tree):
    """Path arguments are expanded as the stock daemon expands them
    (wildcards within the module, `..` never climbing out of it) and errors
    name the module: the stock client lists and pulls the same from both
    (stock, chrooted, shows names from "/")."""
    ours = our_daemon_factory({"m": src_tree})
    # Chrooted, as ours is when root: a symlink to /etc/passwd or out of
    # the module points at nothing, so no wildcard matches it.
    stock = stock_daemon_factory(rsync_bin, {"m": src_tree}, extra_conf="use chroot = yes" if IS_ROOT else "")
    for path in GLOBS:
        got = []
        for d in (ours, stock):
            p = run([rsync_bin, "-r", "%s/%s" % (d.url, path)], check=False)
            # Where stock's client noticed the end differs from run to run.
            err = re.sub(rb" at \S+ \[\w+=[\d.]+\]", b"", p.stderr).replace(b' "/', b' "')
            got.append((p.returncode, p.stdout, re.sub(rb"rsync: \[Receiver\] read error[^\n]*\n?", b"", err)))
        assert got[0] == got[1], (path, got)
        if path.endswith("*.bin"):
            assert got[0][0] == 0 and got[0][1].count(b"\n") >= 2
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    run([rsync_bin, "-a", ours.url + "/m/*.bin", ours.url + "/m/a/*", a + "/"])
    run([rsync_bin, "-a", stock.url + "/m/*.bin", stock.url + "/m/a/*", b + "/"])
    sa, sb = snapshot(a), snapshot(b)
    del sa["."], sb["."]
    assert sa == sb, diff_snapshots(sa, sb)
