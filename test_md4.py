"""MD4 against RFC 1320's test suite, through every backend rsync_md4 offers."""
import os
import random

import pytest

import rsync_md4

RFC1320 = [
    (b"", "31d6cfe0d16ae931b73c59d7e0c089c0"),
    (b"a", "bde52cb31de33e46245e05fbdbd6fb24"),
    (b"abc", "a448017aaf21d8525fc10ae87aa6729d"),
    (b"message digest", "d9130a8164549fe818874806e1c7014b"),
    (b"abcdefghijklmnopqrstuvwxyz", "d79e1c308aa5bbcdeea8ed63df412da9"),
    (b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
     "043f8582f241db351ce627e153e7f0e4"),
    (b"1234567890" * 8, "e33b4ddc9c38f2199c3e7b164fcc0536"),
]


def _hashlib_md4():
    new = rsync_md4._hashlib_factory()
    if new is None:
        pytest.skip("hashlib has no md4 here (OpenSSL 3 without the legacy provider)")
    return new


def _pycryptodome_md4():
    new = rsync_md4._pycryptodome_factory()
    assert new is not None, "pycryptodome is a requirement (requirements.txt)"
    return new


@pytest.fixture(params=["hashlib", "pycryptodome", "python"])
def new(request):
    if request.param == "hashlib":
        return _hashlib_md4()
    if request.param == "pycryptodome":
        return _pycryptodome_md4()
    return rsync_md4.PureMD4


@pytest.mark.parametrize("data,expected", RFC1320)
def test_rfc1320_vectors(new, data, expected):
    h = new(data)
    assert h.hexdigest() == expected
    assert h.digest() == bytes.fromhex(expected)
    assert h.digest_size == 16
    assert h.block_size == 64


def test_default_backend():
    assert rsync_md4.BACKEND in rsync_md4.BACKENDS
    assert list(rsync_md4.BACKENDS)[-1] == "python"
    for data, expected in RFC1320:
        assert rsync_md4.md4(data).hexdigest() == expected
    h = rsync_md4.md4()
    h.update(b"abc")
    assert h.hexdigest() == RFC1320[2][1]


def test_incremental_update_matches_one_shot(new):
    rng = random.Random(1320)
    data = os.urandom(5000)
    whole = rsync_md4.PureMD4(data).digest()
    for _ in range(20):
        h = new()
        pos = 0
        while pos < len(data):
            step = rng.choice([0, 1, 3, 63, 64, 65, 127, 128, 500])
            h.update(data[pos:pos + step])
            pos += step
        assert h.digest() == whole
    h = new()
    h.update(bytearray(data[:100]))
    h.update(memoryview(data)[100:])
    assert h.digest() == whole


@pytest.mark.parametrize("size", [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000])
def test_backends_agree_at_padding_edges(new, size):
    data = bytes(range(256)) * 4
    assert new(data[:size]).digest() == rsync_md4.PureMD4(data[:size]).digest()
    assert new(data[:size]).digest() == _pycryptodome_md4()(data[:size]).digest()


def test_copy_is_independent(new):
    h = new(b"message ")
    c = h.copy()
    h.update(b"digest")
    assert h.hexdigest() == "d9130a8164549fe818874806e1c7014b"
    assert c.hexdigest() == rsync_md4.PureMD4(b"message ").hexdigest()
    c.update(b"digest")
    assert c.hexdigest() == "d9130a8164549fe818874806e1c7014b"
    h.digest()
    h.update(b"")
    assert h.hexdigest() == "d9130a8164549fe818874806e1c7014b"


def test_imports_with_stdlib_only():
    """Without pycryptodome the module still imports and falls back."""
    import subprocess
    import sys
    code = (
        "import sys; sys.modules['Crypto'] = None\n"
        "import rsync_md4\n"
        "assert 'pycryptodome' not in rsync_md4.BACKENDS\n"
        "assert rsync_md4.BACKEND in ('hashlib', 'python')\n"
        "print(rsync_md4.md4(b'abc').hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.abspath(__file__)),
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == RFC1320[2][1]
