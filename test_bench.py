"""bench/run.py --smoke: it runs, and its table has a row per case and side
whose numbers parse. No timing is asserted."""

import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
NUM = r"\d+(?:\.\d+)?"
WALL = re.compile(r"^(%s) \((%s)–(%s)\)$" % (NUM, NUM, NUM))
PAIR = re.compile(r"^(%s) / (%s)$" % (NUM, NUM))


def _rows(text):
    header = None
    rows = []
    for line in text.splitlines():
        if not line.startswith("| "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set(line) <= set("|-"):
            rows.append(dict(zip(header, cells)))
    return rows


def test_smoke(tmp_path, rsync_bin):
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, os.path.join(HERE, "bench", "run.py"), "--smoke", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    text = (out / "results.md").read_text()
    assert text == p.stdout[:len(text)]
    rows = _rows(text)
    seen = set()
    for r in rows:
        assert WALL.match(r["wall s, ours"]), r
        assert WALL.match(r["wall s, stock"]), r
        float(r["ours/stock"])
        for key in ("CPU s client, ours / stock", "CPU s server, ours / stock",
                    "peak RSS MiB client, ours / stock", "peak RSS MiB server, ours / stock"):
            assert PAIR.match(r[key]), (key, r)
        assert r["side"] in ("daemon", "client")
        assert r["ours"] in ("c", "python", "pure")
        seen.add((r["case"], r["side"], r["ours"] == "pure"))
    for case in "ABCD":
        for side in ("daemon", "client"):
            for pure in (False, True):
                assert (case, side, pure) in seen, (case, side, pure)
    for side in ("daemon", "client"):
        assert ("E", side, False) in seen or "E (%s side) skipped" % side in text
    assert (out / "results.json").exists()
    assert "the Python interpreter's own start" in text
    # The destinations moved aside during the runs are gone at the end.
    assert not (out / "dst.freed").exists() and not (out / "dst").exists()
