"""rsync_compress: negotiation, levels and the skip-compress list."""

import rsync_compress as rc

METHODS = ["zstd", "lz4", "zlibx", "zlib"]


def test_available_and_pick():
    names = rc.available_compressions()
    assert names == [m for m in METHODS if m in names] and names[-2:] == ["zlibx", "zlib"]
    assert rc.available_compressions(server=True) == names + ["none"]
    ours = ["zstd", "lz4", "zlibx", "zlib"]
    assert rc.pick_compression(ours, "zlib zlibx lz4") == "lz4"
    assert rc.pick_compression(ours, "zlib zlibx lz4", server=True) == "zlib"
    assert rc.pick_compression(ours, "ZSTD none") == "zstd"
    assert rc.pick_compression(ours + ["none"], "none", server=True) == "none"
    assert rc.pick_compression(ours, "brotli") is None
    assert rc.pick_compression(ours, "") is None


def test_levels():
    lv = rc.compression_level
    assert [lv("zlib"), lv("zlib", -1), lv("zlib", 0), lv("zlib", 1), lv("zlib", 99), lv("zlib", -7)] == \
        [6, 6, None, 1, 9, 1]
    assert lv("zlibx", 3) == 3
    assert [lv("zstd"), lv("zstd", 0), lv("zstd", -1), lv("zstd", 22), lv("zstd", 99), lv("zstd", -10 ** 9)] == \
        [3, 3, -1, 22, 22, -131072]
    assert [lv("lz4"), lv("lz4", 0), lv("lz4", 5), lv("lz4", -5)] == [0, 0, 0, 0]
    assert [rc.skip_compression_level(m) for m in ("zlib", "zlibx", "zstd", "lz4")] == [0, 0, -131072, 0]


def test_skip_compress():
    default = rc.default_skip_compress()
    assert default.startswith("*.3g2 *.3gp *.7z ") and default.endswith(" *.zip *.zst")
    assert len(default.split()) == 96
    for name, skip in [(b"a.gz", True), (b"dir/B.JPG", True), (b"x.tar.gz", True), (b".gz", False),
                       (b"gz", False), (b"a.gz.txt", False), (b"a.", False), (b"d.gz/file", False),
                       (b"movie.mp4", True), (b"a.squashfs", True), (b"a.7z", True), (b"a.7zz", False)]:
        assert rc.skip_compress(name, default) is skip, name
    opt = rc.skip_compress_rules("gz/mp[34]/Z*/[x")
    assert [opt(n) for n in (b"a.gz", b"a.mp3", b"a.MP4", b"a.mp5", b"a.z*", b"a.za", b"a.[x", b"a.jpg")] == \
        [True, True, True, False, True, False, True, False]
    assert not rc.skip_compress_rules("")(b"a.gz")
    daemon = rc.skip_compress_rules("txt", daemon=True)
    assert daemon(b"a.txt") and daemon(b"a.gz")
    custom = rc.SkipCompress("*.t?t secret* *.log")
    assert [custom(n) for n in (b"A.TXT", b"a.tnt", b"SECRET-file", b"dir/secret", b"x.LOG", b"x.logs")] == \
        [True, True, True, True, True, False]
    assert rc.skip_compress(b"anything", "*.gz *") and not rc.skip_compress(b"a.gz", "")
