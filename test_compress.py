"""-z end to end: stock rsync pulling from and pushing to gokr-rsyncd, and
gokr-rsync against stock rsync daemons and over SSH, for every method,
whole files and deltas."""

import os

import pytest

from conftest import IS_ROOT, make_tree, run, snapshot
from test_client import ours, stats


@pytest.fixture(scope="module")
def src_tree(tmp_path_factory):
    """The standard tree with an 8 MiB large file: -z runs many transfers."""
    return make_tree(str(tmp_path_factory.mktemp("zsrc") / "tree"), big_size=8 << 20)

METHODS = [("-z",), ("--zc=zstd",), ("--zc=lz4",), ("--zc=zlibx",), ("--zc=zlib",),
           ("-z", "--protocol=27"), ("-z", "--protocol=30"), ("--zc=zstd", "--zl=19"),
           ("--zc=zlib", "--zl=1")]
IDS = [" ".join(m) for m in METHODS]


def tree_equal(a, b, ns=True):
    sa, sb = snapshot(a, ns=ns), snapshot(b, ns=ns)
    sa["<hardlinks>"] = sb["<hardlinks>"] = []
    return sa == sb


def change(path, n=5):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        for i in range(n):
            f.seek(size // (n + 1) * (i + 1))
            f.write(os.urandom(3000))


@pytest.fixture
def daemons(src_tree, our_daemon_factory, stock_daemon_factory, rsync_bin, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[module]]\nname = "m"\npath = "%s"\n[[module]]\nname = "in"\npath = "%s"\nwritable = true\n'
                   % (src_tree, inbox))
    d = our_daemon_factory({}, extra=["--gokr.config=%s" % cfg])
    d.inbox = inbox
    sinbox = tmp_path / "sinbox"
    sinbox.mkdir()
    s = stock_daemon_factory(rsync_bin, {"m": src_tree, "in": str(sinbox)}, read_only=False,
                             extra_conf="use chroot = yes\nmunge symlinks = no" if IS_ROOT else "munge symlinks = no")
    s.inbox = sinbox
    return d, s


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_stock_pulls_and_pushes_compressed(daemons, src_tree, rsync_bin, tmp_path, method):
    ourd, _ = daemons
    dst = tmp_path / "dst"
    run([rsync_bin, "-a", *method, ourd.url + "/m/", str(dst) + "/"])
    ns = "--protocol=27" not in method and "--protocol=30" not in method
    assert tree_equal(str(dst), src_tree, ns)
    change(dst / "big.bin")
    change(dst / "medium.bin")
    out = run([rsync_bin, "-a", *method, "--no-whole-file", "-I", "--stats", ourd.url + "/m/", str(dst) + "/"])
    s = stats(out.stdout.decode())
    assert s["matched"] > 6 << 20, s
    assert tree_equal(str(dst), src_tree, ns)
    run([rsync_bin, "-a", *method, src_tree + "/", ourd.url + "/in/"])
    assert tree_equal(str(ourd.inbox), src_tree, ns)
    change(ourd.inbox / "big.bin")
    s = stats(run([rsync_bin, "-a", *method, "--no-whole-file", "-I", "--stats", src_tree + "/",
                   ourd.url + "/in/"]).stdout.decode())
    assert s["matched"] > 6 << 20, s
    assert tree_equal(str(ourd.inbox), src_tree, ns)


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_we_pull_and_push_compressed(daemons, src_tree, tmp_path, method):
    _, stock = daemons
    dst = tmp_path / "dst"
    ours("-a", *method, stock.url + "/m/", str(dst) + "/")
    ns = "--protocol=27" not in method and "--protocol=30" not in method
    assert tree_equal(str(dst), src_tree, ns)
    change(dst / "big.bin")
    s = stats(ours("-a", *method, "--no-whole-file", "-I", "--stats", stock.url + "/m/", str(dst) + "/")
              .stdout.decode())
    assert s["matched"] > 6 << 20, s
    assert tree_equal(str(dst), src_tree, ns)
    ours("-a", *method, src_tree + "/", stock.url + "/in/")
    assert tree_equal(str(stock.inbox), src_tree, ns)
    change(stock.inbox / "big.bin")
    ours("-a", *method, "--no-whole-file", "-I", src_tree + "/", stock.url + "/in/")
    assert tree_equal(str(stock.inbox), src_tree, ns)


def test_compressed_327_and_ssh(tmp_path, src_tree, rsync327_bin, stock_daemon_factory, sshd, rsync_bin,
                                our_daemon_factory):
    d = our_daemon_factory({"m": src_tree})
    for method in (("-z",), ("--zc=zstd",), ("--zc=lz4",), ("--zc=zlibx",)):
        dst = tmp_path / ("327" + method[0])
        run([rsync327_bin, "-a", *method, d.url + "/m/", str(dst) + "/"])
        assert tree_equal(str(dst), src_tree)
    s = stock_daemon_factory(rsync327_bin, {"m": src_tree})
    dst = tmp_path / "from327"
    ours("-a", "--zc=zstd", s.url + "/m/", str(dst) + "/")
    assert tree_equal(str(dst), src_tree)
    for method in (("-z",), ("--zc=lz4",)):
        dst = tmp_path / ("ssh" + method[0])
        ours("-a", *method, "-e", sshd.rsh, "--rsync-path=%s" % rsync_bin, "root@127.0.0.1:%s/" % src_tree,
             str(dst) + "/")
        assert tree_equal(str(dst), src_tree)
        back = tmp_path / ("sshpush" + method[0])
        ours("-a", *method, "-e", sshd.rsh, "--rsync-path=%s" % rsync_bin, src_tree + "/",
             "root@127.0.0.1:%s/" % back)
        assert tree_equal(str(back), src_tree)


def test_compressed_text_really_compresses(daemons, tmp_path, rsync_bin):
    ourd, _ = daemons
    text = tmp_path / "text"
    text.mkdir()
    (text / "words.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 50000)
    run([rsync_bin, "-a", "-z", str(text) + "/", ourd.url + "/in/"])
    out = run([rsync_bin, "-a", "-z", "--stats", ourd.url + "/in/words.txt", str(tmp_path / "w.txt")]).stdout.decode()
    received = int(out.split("Total bytes received: ")[1].split()[0].replace(",", ""))
    assert received < 200_000
    assert (tmp_path / "w.txt").read_text() == (text / "words.txt").read_text()
