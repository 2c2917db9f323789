#!/usr/bin/env python3
"""Profiles our daemon or client on a bench case with py-spy and prints the
functions with the most cumulative (inclusive) on-CPU time.

    python3 bench/profile.py daemon:A daemon:C client:A client:B --size 1G

Each SIDE:CASE is one transfer set up as bench/run.py sets it up, with our
program on SIDE run under `py-spy record` (`pip install py-spy`); our daemon
is started in inetd mode, so that it ends with its connection and its
profile includes its start (py-spy's stdout, which would be the socket, goes
to /dev/null: the daemon speaks on its stdin). The raw stacks are kept in
OUT/profile-SIDE-CASE.txt (flamegraph.pl reads them).
"""

import argparse
import collections
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run  # noqa: E402


def top_functions(path, n):
    """(total samples, top N by inclusive samples, top N by self samples),
    each [(function, inclusive, self)], of a py-spy raw file; importlib's own
    frames are left out of the inclusive ranking."""
    incl = collections.Counter()
    own = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count)
            frames = stack.split(";")
            total += count
            for fn in set(frames):
                if "<frozen importlib" not in fn:
                    incl[fn] += count
            own[frames[-1]] += count
    return (total, [(fn, c, own[fn]) for fn, c in incl.most_common(n)],
            [(fn, incl[fn], c) for fn, c in own.most_common(n)])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("specs", nargs="+", metavar="SIDE:CASE", help="daemon:A, client:B, ...")
    p.add_argument("--size", type=run.parse_size, default=run.GiB, help="the large file of A and C (default 1G)")
    p.add_argument("--files", type=int, default=20000, help="files in B and D (default 20000)")
    p.add_argument("--checksum", default="default", help="default or a --checksum-choice name")
    p.add_argument("--pure", action="store_true", help="with GOKR_RSYNC_PURE=1")
    p.add_argument("--rate", type=int, default=200, help="samples per second (default 200)")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--lines", action="store_true", help="rank source lines rather than whole functions")
    p.add_argument("--out", default=os.path.join(HERE, "out"))
    a = p.parse_args(argv)
    spy = shutil.which("py-spy")
    if not spy:
        sys.stderr.write("profile: py-spy not found (pip install py-spy)\n")
        return 1
    bench = run.Bench(run.parse_args(["--size", str(a.size), "--files", str(a.files), "--out", a.out,
                                      "--daemon-via", "connect-prog"]))
    run.become_subreaper()
    run.subprocess.run([run.PY, "-m", "compileall", "-q", "-l", run.ROOT], stdout=run.subprocess.DEVNULL)
    for spec in a.specs:
        side, _, case = spec.partition(":")
        if side not in ("daemon", "client") or case not in run.CASE_ARGS:
            p.error("not SIDE:CASE: %r" % spec)
        raw = os.path.join(bench.out, "profile-%s-%s.txt" % (side, case))
        spy_argv = [spy, "record", "--rate", str(a.rate)] + ([] if a.lines else ["--function"]) + [
            "--format", "raw", "--output", raw, "--"]
        if side == "daemon":
            spy_argv = ["sh", "-c", 'exec "$@" >/dev/null', "sh"] + spy_argv
        bench.wrap = {side: spy_argv}
        row = {"case": case, "side": side, "checksum": a.checksum, "pure": a.pure, "size": a.size}
        src, args, changed, dests = bench.setup(row)
        for path in (src, changed and os.path.dirname(changed)):
            if path:
                run.warm(path)
        bench.before_run(case, dests["ours"], changed)
        r = bench.transfer(side, True, src, args, dests["ours"], bench.env_for(True, a.pure), 3600)
        shutil.rmtree(bench.dst, ignore_errors=True)
        total, by_incl, by_self = top_functions(raw, a.top)
        print("\n## our %s, case %s (%s, %s checksum%s): wall %.2f s, our CPU %.2f s, %d samples at %d Hz\n" % (
            side, case, bench.describe(case, a.size), a.checksum, ", pure" if a.pure else "", r["wall"],
            r[("server" if side == "daemon" else "client") + "_cpu"], total, a.rate))
        for title, rows in (("by cumulative time", by_incl), ("by self time", by_self)):
            print("%s:\n\n| cumulative s | cumulative %% | self s | self %% | function |\n|---|---|---|---|---|" % title)
            for fn, c_, own in rows:
                print("| %.2f | %.0f | %.2f | %.0f | `%s` |" % (c_ / a.rate, 100 * c_ / total, own / a.rate,
                                                             100 * own / total, fn))
            print()
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
