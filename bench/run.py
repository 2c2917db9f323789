#!/usr/bin/env python3
"""gokr-rsyncd and gokr-rsync against stock rsync, side by side, in one run.

Every transfer is a pull `rsync://localhost/m/` whose daemon the client
starts for that one connection through RSYNC_CONNECT_PROG (inetd mode). The
daemon is put in the background of that command, so it is re-parented to
this script (a child subreaper): the client and the daemon are both reaped
here with wait4(), whose rusage gives each side's CPU time (user+sys) and
peak RSS (ru_maxrss: the largest single process of that side's tree, which
for stock rsync's client is the bigger of its generator and receiver). Wall
time is the client's, from spawn to exit. bench/README.md says more.
"""

import argparse
import ctypes
import filecmp
import json
import math
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable
# Run as modules, as the installed gokr-rsyncd and gokr-rsync are: from
# their compiled bytecode (`python3 client.py` compiles client.py anew each
# time, some 20 ms); PYTHONPATH in Bench.env finds them.
DAEMON = ["-m", "daemon"]
CLIENT = ["-m", "client"]
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

CASE_ARGS = {
    "A": ["-a"],
    "B": ["-a"],
    "C": ["-a", "--no-whole-file", "-I"],
    "D": ["-a"],
    "E": ["-az"],
}
CASE_TITLES = {
    "A": "one large random file",
    "B": "many small files",
    "C": "delta: 100 scattered 4 KiB changes",
    "D": "no-op re-sync of B",
    "E": "compressible text, -z",
}
WALL_BAR = {"A": 1.1, "C": 1.1, "B": 1.5, "D": 1.5}
RSS_RATIO_BAR = 1.2
RSS_SMALL_BAR = 100 * MiB
CHANGES, CHANGE_LEN = 100, 4 * KiB
TEXT_FILES = 8


class BenchError(Exception):
    pass


class NotListening(BenchError):
    pass


def parse_size(text):
    """`1G`, `256M`, `64KiB`, `1048576` → bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError("not a size: %r" % text)
    scale = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": 1 << 40}[m.group(2).upper()]
    n = int(float(m.group(1)) * scale)
    if n <= 0:
        raise argparse.ArgumentTypeError("size must be positive: %r" % text)
    return n


def fmt_size(n):
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale:
            v = n / scale
            return ("%d %s" if v == int(v) else "%.1f %s") % (v, unit)
    return "%d B" % n


# ----------------------------------------------------------------------------
# Data sets, made once per parameter set and reused.


def _stamp_ok(out, name, params):
    try:
        with open(os.path.join(out, "data", name + ".json")) as f:
            return json.load(f) == params
    except (OSError, ValueError):
        return False


def _stamp(out, name, params):
    with open(os.path.join(out, "data", name + ".json"), "w") as f:
        json.dump(params, f)


def _dataset(out, name, params, make):
    """The directory of data set NAME, (re)made when its parameters changed."""
    path = os.path.join(out, "data", name)
    if not _stamp_ok(out, name, params):
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        t = time.monotonic()
        make(path)
        _stamp(out, name, params)
        log("made %s in %.1f s" % (path, time.monotonic() - t))
    return path


def make_large(path, size, seed=1):
    rng = random.Random(seed)
    with open(os.path.join(path, "big.bin"), "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(rng.randbytes(n))
            left -= n


def make_changed(path, original, seed=2):
    """A copy of ORIGINAL with CHANGES blocks of CHANGE_LEN rewritten, one
    at a random place in each of CHANGES equal stripes."""
    dst = os.path.join(path, "big.bin")
    shutil.copyfile(original, dst)
    size = os.path.getsize(dst)
    stripe = size // CHANGES
    if stripe < 2 * CHANGE_LEN:
        raise BenchError("the large file is too small for %d changes of %d bytes" % (CHANGES, CHANGE_LEN))
    rng = random.Random(seed)
    fd = os.open(dst, os.O_WRONLY)
    try:
        for i in range(CHANGES):
            os.pwrite(fd, rng.randbytes(CHANGE_LEN), i * stripe + rng.randrange(stripe - CHANGE_LEN))
    finally:
        os.close(fd)


def make_small(path, files, seed=3):
    """FILES files of 1–8 KiB, 100 to a directory."""
    rng = random.Random(seed)
    dirs = max(1, math.ceil(files / 100))
    for d in range(dirs):
        os.mkdir(os.path.join(path, "d%03d" % d))
    for i in range(files):
        with open(os.path.join(path, "d%03d" % (i % dirs), "f%05d.bin" % i), "wb") as f:
            f.write(rng.randbytes(rng.randint(KiB, 8 * KiB)))


WORDS = ("the of and to in is that for it as was with be by on not he this are or his from "
         "at which but have an they you were her she there been one all we their has would "
         "when if so no will more can out other into time some could them these may then do "
         "first any my now such like our over man me even most made after also did many "
         "before must through back years where much your way well down should because each "
         "just those people how too little state good very make world still own see men "
         "work long here get both between life being under never day same another know while "
         "last might us great old year off come since against go came right used take three "
         "rsync daemon client checksum block delta sender receiver generator module file").split()


def make_text(path, size, seed=4):
    """TEXT_FILES files of English-like lines that compress about 3:1."""
    rng = random.Random(seed)
    paragraphs = []
    for _ in range(4096):
        lines = []
        for _ in range(rng.randint(3, 12)):
            words = rng.choices(WORDS, k=rng.randint(6, 16))
            lines.append(" ".join(words).capitalize() + ".")
        paragraphs.append(("\n".join(lines) + "\n\n").encode())
    per_file = size // TEXT_FILES
    for i in range(TEXT_FILES):
        with open(os.path.join(path, "t%d.txt" % i), "wb") as f:
            n = 0
            while n < per_file:
                b = b"%d: " % n + rng.choice(paragraphs)
                b = b[:per_file - n]
                f.write(b)
                n += len(b)


def warm(path):
    """Reads every file under PATH once, so both sides start from a warm page cache."""
    for dirpath, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(dirpath, name), "rb", buffering=0) as f:
                while f.read(4 * MiB):
                    pass


# ----------------------------------------------------------------------------
# Running one transfer.


def become_subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        raise BenchError("prctl(PR_SET_CHILD_SUBREAPER): %s" % os.strerror(ctypes.get_errno()))


class _Alarm(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Alarm()


def _wait4(pid, deadline):
    """wait4(PID) until DEADLINE; retries while PID is not (yet) our child,
    as a daemon is until its parent shell has exited."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Alarm()
        old = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, left)
        try:
            return os.wait4(pid, 0)
        except ChildProcessError:
            pass
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        time.sleep(0.005)


def _reap_all(deadline):
    """Reaps every child left, as (cpu, maxrss) of each: a listener's
    connection process it had not reaped before it exited."""
    got = []
    while time.monotonic() < deadline:
        try:
            pid, _, ru = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.01)
            continue
        got.append((ru.ru_utime + ru.ru_stime, ru.ru_maxrss))
    return got


def _background(argv, pidfile, redirect=""):
    """A shell command that starts ARGV in the background and writes its pid
    to PIDFILE: the shell exits at once, so ARGV's process is re-parented to
    us and is a fork of the small shell rather than of this big Python, whose
    peak RSS would otherwise show in its ru_maxrss."""
    return "%s%s & echo $! >%s" % (shlex.join(argv), redirect, shlex.quote(pidfile))


def connect_prog(server_argv, pidfile):
    """RSYNC_CONNECT_PROG for SERVER_ARGV; a background job's standard input
    would be /dev/null, so the socket is passed on as fd 3."""
    return "exec 3<&0; " + _background(server_argv, pidfile, " <&3 3<&-")


def _read_pid(path, deadline):
    while True:
        try:
            with open(path) as f:
                return int(f.read())
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                return None
            time.sleep(0.005)


def _tail(path, n=2000):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


def _kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
    _reap_all(time.monotonic() + 5)


def _start(argv, pidfile, env, errfile, deadline):
    """Starts ARGV through a launcher shell in a new session; returns
    (session, pid of ARGV's process)."""
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_OPEN, 1, errfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
               (os.POSIX_SPAWN_DUP2, 1, 2)]
    group = os.posix_spawnp("sh", ["sh", "-c", _background(argv, pidfile)], env,
                            file_actions=actions, setsid=True)
    _wait4(group, deadline)
    pid = _read_pid(pidfile, min(deadline, time.monotonic() + 5))
    if pid is None:
        _kill_group(group)
        raise BenchError("could not start %s:\n%s" % (shlex.join(argv), _tail(errfile)))
    return group, pid


def _listening(port):
    want = ":%04X" % port
    try:
        with open("/proc/net/tcp") as f:
            return any(fields[1].endswith(want) and fields[3] == "0A"
                       for fields in (line.split() for line in f) if len(fields) > 3)
    except OSError:
        return False


def _wait_listening(port, pid, deadline, errfile):
    while not _listening(port):
        if os.waitpid(pid, os.WNOHANG)[0] or time.monotonic() > deadline:
            raise NotListening("the daemon did not listen on port %d:\n%s" % (port, _tail(errfile)))
        time.sleep(0.01)


def _busy(pid):
    """Whether a listener still serves: a connection process (stock rsync)
    or a connection thread (gokr-rsyncd)."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            if f.read().strip():
                return True
        return len(os.listdir("/proc/%d/task" % pid)) > 1
    except OSError:
        time.sleep(0.2)
        return False


def _stop_listener(pid, deadline):
    """Ends a TCP daemon once its connection is over; (cpu, maxrss) of it and
    its connection processes."""
    end = min(deadline, time.monotonic() + 10)
    while _busy(pid) and time.monotonic() < end:
        time.sleep(0.005)
    os.kill(pid, signal.SIGTERM)
    _, _, ru = _wait4(pid, deadline)
    got = [(ru.ru_utime + ru.ru_stime, ru.ru_maxrss)] + _reap_all(min(deadline, time.monotonic() + 5))
    return sum(c for c, _ in got), max(m for _, m in got)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_on_free_port(build, env, tmp, timeout, tcp, **kw):
    """run_transfer of BUILD(port) → (client argv, server argv); on TCP a few
    ports are tried, as another program may bind a free port before the daemon."""
    for attempt in range(3):
        port = free_port() if tcp else None
        c, s = build(port)
        try:
            return run_transfer(c, s, env, tmp, timeout, port, **kw)
        except NotListening:
            if attempt == 2:
                raise


def run_transfer(client_argv, server_argv, env, tmp, timeout, port=None, server_code=True):
    """One pull; returns a dict of wall, CPU and peak RSS of both sides.
    With PORT, SERVER_ARGV is a TCP daemon listening there; else the client
    starts it per connection through RSYNC_CONNECT_PROG. SERVER_CODE: the
    server must exit 0 too."""
    cpidfile = os.path.join(tmp, "client.pid")
    spidfile = os.path.join(tmp, "server.pid")
    errfile = os.path.join(tmp, "transfer.log")
    for p in (cpidfile, spidfile, errfile):
        if os.path.exists(p):
            os.unlink(p)
    deadline = time.monotonic() + timeout
    groups = []
    try:
        if port:
            group, spid = _start(server_argv, spidfile, env, errfile, deadline)
            groups.append(group)
            _wait_listening(port, spid, deadline, errfile)
        else:
            env = dict(env, RSYNC_CONNECT_PROG=connect_prog(server_argv, spidfile))
        os.sync()
        t0 = time.perf_counter()
        group, cpid = _start(client_argv, cpidfile, env, errfile, deadline)
        groups.append(group)
        _, cstatus, cru = _wait4(cpid, deadline)
        wall = time.perf_counter() - t0
        ccode = os.waitstatus_to_exitcode(cstatus)
        if port:
            scode = 0
            scpu, srss = _stop_listener(spid, deadline)
        else:
            spid = _read_pid(spidfile, min(deadline, time.monotonic() + 5))
            if spid is None:
                raise BenchError("the client (exit code %d) never started the server: %s\n%s" % (
                    ccode, shlex.join(client_argv), _tail(errfile)))
            _, sstatus, sru = _wait4(spid, deadline)
            scode = os.waitstatus_to_exitcode(sstatus)
            scpu, srss = sru.ru_utime + sru.ru_stime, sru.ru_maxrss
    except _Alarm:
        for g in groups:
            _kill_group(g)
        raise BenchError("transfer timed out after %.0f s: %s" % (timeout, shlex.join(client_argv))) from None
    except BenchError:
        for g in groups:
            _kill_group(g)
        raise
    _reap_all(time.monotonic() + 1)
    if ccode or (scode and server_code):
        raise BenchError("transfer failed (client %d, server %d): %s\n%s"
                         % (ccode, scode, shlex.join(client_argv), _tail(errfile)))
    return {
        "wall": wall,
        "client_cpu": cru.ru_utime + cru.ru_stime,
        "server_cpu": scpu,
        "client_rss": cru.ru_maxrss * KiB,
        "server_rss": srss * KiB,
    }


def interpreter_start(env, runs):
    """Median wall and CPU seconds of `PY -c pass`: the floor under every
    start-up of ours, whatever our code does."""
    walls, cpus = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        pid = os.spawnve(os.P_NOWAIT, PY, [PY, "-c", "pass"], env)
        _, status, ru = os.wait4(pid, 0)
        walls.append(time.perf_counter() - t0)
        if os.waitstatus_to_exitcode(status):
            raise BenchError("%s -c pass exited with %d" % (PY, os.waitstatus_to_exitcode(status)))
        cpus.append(ru.ru_utime + ru.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def same_tree(src, dst):
    """Whether DST has every file of SRC with the same bytes."""
    for dirpath, _, files in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        for name in files:
            a = os.path.join(dirpath, name)
            b = os.path.join(dst, rel, name)
            if not os.path.isfile(b) or not filecmp.cmp(a, b, shallow=False):
                return False
    return True


def fresh_dir(path):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)


# ----------------------------------------------------------------------------
# The benchmark.


class Bench:
    """Data sets, commands and runs. `wrap` maps "daemon" or "client" to a
    command prefix for our program on that side (bench/profile.py's profiler)."""

    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(args.out)
        self.dst = os.path.abspath(args.dst) if args.dst else os.path.join(self.out, "dst")
        self.freed = self.dst.rstrip(os.sep) + ".freed"
        self.discarded = 0
        self.tmp = os.path.join(self.out, "tmp")
        self.rsync = shutil.which("rsync")
        if not self.rsync:
            raise BenchError("stock rsync is not installed")
        os.makedirs(os.path.join(self.out, "data"), exist_ok=True)
        os.makedirs(self.tmp, exist_ok=True)
        env = dict(os.environ)
        for k in ("GOKR_RSYNC_PURE", "RSYNC_CONNECT_PROG", "RSYNC_RSH", "RSYNC_PASSWORD"):
            env.pop(k, None)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        self.env = env
        self.notes = []
        self.sets = {}
        self.wrap = {}

    # Data.

    def large(self, size):
        name = "large-%d" % size
        if name not in self.sets:
            self.sets[name] = _dataset(self.out, name, {"size": size},
                                       lambda p: make_large(p, size))
        return self.sets[name]

    def changed(self, size):
        name = "changed-%d" % size
        if name not in self.sets:
            orig = os.path.join(self.large(size), "big.bin")
            self.sets[name] = _dataset(self.out, name, {"size": size, "of": name.replace("changed", "large"),
                                                        "changes": CHANGES},
                                       lambda p: make_changed(p, orig))
        return self.sets[name]

    def small(self):
        files = self.args.files
        name = "small-%d" % files
        if name not in self.sets:
            self.sets[name] = _dataset(self.out, name, {"files": files}, lambda p: make_small(p, files))
        return self.sets[name]

    def text(self):
        size = self.args.text_size
        name = "text-%d" % size
        if name not in self.sets:
            self.sets[name] = _dataset(self.out, name, {"size": size}, lambda p: make_text(p, size))
        return self.sets[name]

    def source(self, case, size):
        if case in ("A", "C"):
            return self.large(size)
        if case in ("B", "D"):
            return self.small()
        return self.text()

    def describe(self, case, size):
        if case in ("A", "C"):
            return fmt_size(size) + " file"
        if case in ("B", "D"):
            return "%d files" % self.args.files
        return fmt_size(self.args.text_size) + " text"

    def rsyncd_conf(self, path):
        conf = path + ".rsyncd.conf"
        with open(conf, "w") as f:
            f.write("use chroot = no\nreverse lookup = no\nuid = %d\ngid = %d\n"
                    "log file = %s\n[m]\npath = %s\nread only = yes\n"
                    % (os.getuid(), os.getgid(), os.path.join(self.tmp, "rsyncd.log"), path))
        return conf

    # Commands.

    def server(self, ours, src, port=None):
        if ours:
            tcp = ["--gokr.listen=127.0.0.1:%d" % port] if port else []
            return self.wrap.get("daemon", []) + [PY, *DAEMON, "--daemon"] + tcp + ["--gokr.modulemap=m=" + src]
        tcp = ["--no-detach", "--address=127.0.0.1", "--port=%d" % port] if port else []
        return [self.rsync, "--daemon"] + tcp + ["--config=" + self.rsyncd_conf(src)]

    def client(self, ours, args, dest, port=None):
        prog = self.wrap.get("client", []) + [PY, *CLIENT] if ours else [self.rsync]
        url = "rsync://127.0.0.1:%d/m/" % port if port else "rsync://localhost/m/"
        return prog + args + [url, dest + "/"]

    def transfer(self, side, ours_run, src, args, dest, env, timeout):
        """One run of SIDE, with ours on that side or not."""
        via = self.args.client_via if side == "client" else self.args.daemon_via
        ours_daemon = ours_run and side == "daemon"
        ours_client = ours_run and side == "client"

        def build(port):
            return self.client(ours_client, args, dest, port), self.server(ours_daemon, src, port)
        return run_on_free_port(build, env, self.tmp, timeout, via == "tcp")

    def env_for(self, ours_run, pure):
        return dict(self.env, GOKR_RSYNC_PURE="1") if ours_run and pure else self.env

    # Case E needs -z on our side.

    def accepts_z(self, side):
        probe = os.path.join(self.out, "data", "probe-z")
        if not os.path.isdir(probe):
            os.makedirs(probe)
            make_text(probe, 64 * KiB)
        dest = os.path.join(self.tmp, "probe-dst")
        fresh_dir(dest)
        try:
            self.transfer(side, True, probe, ["-az"], dest, self.env, 60)
            return same_tree(probe, dest)
        except BenchError:
            return False
        finally:
            shutil.rmtree(dest, ignore_errors=True)

    def startup(self):
        """What one connection costs before any transfer: a module list,
        our daemon started in inetd mode and our client, vs stock."""
        src = self.small()
        lines = []
        for side in ("daemon", "client"):
            got = {"ours": [], "stock": []}
            for _ in range(self.args.runs):
                for who in got:
                    prog = [PY, *CLIENT] if side == "client" and who == "ours" else [self.rsync]

                    def build(port):
                        url = "rsync://127.0.0.1:%d/" % port if port else "rsync://localhost/"
                        return prog + [url], self.server(side == "daemon" and who == "ours", src, port)
                    got[who].append(run_on_free_port(build, self.env, self.tmp, 60, side == "client",
                                                     server_code=False))
            med = {who: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for who, rs in got.items()}
            k = side_key(side, "cpu")
            lines.append("Start-up of our %s: a module list (`%s rsync://HOST/`) takes %.2f s wall and "
                         "%.2f s CPU of our %s, vs %.2f s and %.3f s with stock rsync (medians of %d)." % (
                             side, "rsync" if side == "daemon" else "client.py", med["ours"]["wall"],
                             med["ours"][k], side, med["stock"]["wall"], med["stock"][k], self.args.runs))
        lines.append("Of those, the Python interpreter's own start (`%s -c pass`, with this machine's site "
                     "packages) takes %.2f s wall and %.2f s CPU (median of %d)." % (
                         os.path.basename(PY), *interpreter_start(self.env, self.args.runs), self.args.runs))
        return lines

    # Rows.

    def rows(self, pure):
        size = self.args.pure_size if pure else self.args.size
        out = []
        for case in self.args.cases:
            for side in ("daemon", "client"):
                for cc in (["default", "md4"] if case in ("A", "C") else ["default"]):
                    out.append({"case": case, "side": side, "checksum": cc, "pure": pure, "size": size,
                                "data": self.describe(case, size)})
        return out

    def run_row(self, row):
        """Runs ROW; a failure is kept in row["error"] for the table."""
        try:
            row["runs"] = self._run_row(row)
        except BenchError as e:
            row["error"] = str(e)
            log("  %s %s %s failed: %s" % (row["case"], row["side"], row["checksum"], e))
        if row["case"] in ("B", "D"):
            self.discard(self.dst)
        else:
            shutil.rmtree(self.dst, ignore_errors=True)
        return row

    def discard(self, path):
        """Moves a tree of many inodes aside instead of deleting it: ext4
        skips inodes freed in the last minutes one by one when it allocates,
        so deleting B's 20,000 files makes the next runs' file creation
        slow by a varying amount. The trees go once the table is done."""
        if not os.path.lexists(path):
            return
        os.makedirs(self.freed, exist_ok=True)
        self.discarded += 1
        try:
            os.rename(path, os.path.join(self.freed, str(self.discarded)))
        except OSError:
            shutil.rmtree(path, ignore_errors=True)

    def clean_up(self):
        shutil.rmtree(self.freed, ignore_errors=True)

    def setup(self, row):
        """(source, client args, C's changed copy or None, destination of ours and of stock)."""
        case, size = row["case"], row["size"]
        src = self.source(case, size)
        args = list(CASE_ARGS[case])
        if row["checksum"] != "default":
            args.append("--checksum-choice=" + row["checksum"])
        changed = os.path.join(self.changed(size), "big.bin") if case == "C" else None
        dests = {}
        for who in ("ours", "stock"):
            if case == "D":
                dests[who] = os.path.join(self.dst, "D-" + who)
                fresh_dir(dests[who])
                subprocess.run([self.rsync, "-a", src + "/", dests[who] + "/"], check=True)
            else:
                dests[who] = os.path.join(self.dst, "run")
        return src, args, changed, dests

    def before_run(self, case, dest, changed):
        """An empty destination, C's basis in it; D's stays as it is."""
        if case == "B":
            self.discard(dest)
            os.makedirs(dest)
        elif case != "D":
            fresh_dir(dest)
        if changed:
            os.link(changed, os.path.join(dest, "big.bin"))

    def _run_row(self, row):
        case, side = row["case"], row["side"]
        src, args, changed, dests = self.setup(row)
        runs = {"ours": [], "stock": []}
        for i in range(self.args.runs):
            for who in ("ours", "stock"):
                ours_run = who == "ours"
                dest = dests[who]
                self.before_run(case, dest, changed)
                r = self.transfer(side, ours_run, src, args, dest, self.env_for(ours_run, row["pure"]),
                                  self.args.timeout)
                if changed and os.stat(os.path.join(dest, "big.bin")).st_ino == os.stat(changed).st_ino:
                    raise BenchError("the receiver wrote into the basis file; %s is spoiled" % changed)
                if i == 0 and not same_tree(src, dest):
                    raise BenchError("%s %s %s: %s differs from %s" % (case, side, who, dest, src))
                runs[who].append(r)
                log("  %s %-6s %-7s %-5s run %d: %.2f s" % (case, side, row["checksum"], who, i + 1, r["wall"]))
        if case in ("A", "C"):
            row["rss_ref"] = self._rss_ref(row)
        return runs

    def _rss_ref(self, row):
        """Our peak RSS in one run with a quarter of the large file, for the
        bar that wants it flat across file sizes."""
        ref = dict(row, size=ref_size(row["size"]))
        src, args, changed, dests = self.setup(ref)
        self.before_run(row["case"], dests["ours"], changed)
        r = self.transfer(row["side"], True, src, args, dests["ours"], self.env_for(True, row["pure"]),
                          self.args.timeout)
        return {"size": ref["size"], "rss": r[side_key(row["side"])]}

    def run(self):
        become_subreaper()
        a = self.args
        impl = {p: delta_impl(p) for p in (False, True)}
        plan = [(False, self.rows(False))]
        if not a.no_pure:
            plan.append((True, self.rows(True)))
        if "E" in a.cases:
            for side in ("daemon", "client"):
                if not self.accepts_z(side):
                    self.notes.append("E (%s side) skipped: our %s does not accept -z yet."
                                      % (side, "server" if side == "daemon" else "client"))
                    for _, rows in plan:
                        rows[:] = [r for r in rows if not (r["case"] == "E" and r["side"] == side)]
        for _, rows in plan:
            for r in rows:
                for size in (r["size"], ref_size(r["size"])) if r["case"] in ("A", "C") else (r["size"],):
                    self.source(r["case"], size)
                    if r["case"] == "C":
                        self.changed(size)
        subprocess.run([PY, "-m", "compileall", "-q", "-l", ROOT], stdout=subprocess.DEVNULL)
        try:
            self.notes[:0] = self.startup()
        except BenchError as e:
            self.notes.append("Start-up not measured: %s" % e)
        log("warming the page cache")
        for path in self.sets.values():
            warm(path)
        # B's rows run last: for minutes after writing its trees the
        # machine runs slower (D's CPU times, ours and stock's, were about
        # 1.8x those of D run first), which would land on the rows after it.
        order = [(pure, row) for pure, rows in plan for row in rows]
        order.sort(key=lambda item: item[1]["case"] == "B")
        for pure, row in order:
            log("%s %s %s, ours with rsync_delta %s" % (row["case"], row["side"], row["checksum"], impl[pure]))
            self.run_row(row)
        results = [row for _, rows in plan for row in rows]
        version = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                                 capture_output=True, text=True).stdout.strip()
        info = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "version": version or "unknown",
            "rsync": subprocess.run([self.rsync, "--version"], capture_output=True, text=True).stdout.split("\n")[0],
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "runs": a.runs,
            "impl": impl,
            "smoke": a.smoke,
            "client_via": a.client_via,
            "daemon_via": a.daemon_via,
        }
        return info, results


def ref_size(size):
    return max(MiB, size // 4)


def side_key(side, what="rss"):
    """The result key of our program on SIDE."""
    return ("server_" if side == "daemon" else "client_") + what


def delta_impl(pure):
    env = dict(os.environ)
    env.pop("GOKR_RSYNC_PURE", None)
    if pure:
        env["GOKR_RSYNC_PURE"] = "1"
    p = subprocess.run([PY, "-c", "import rsync_delta; print(rsync_delta.IMPLEMENTATION)"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    return p.stdout.strip() or "unknown"


# ----------------------------------------------------------------------------
# Report.


def summarize(row):
    s = {}
    for who, runs in row["runs"].items():
        walls = [r["wall"] for r in runs]
        s[who] = {
            "wall": statistics.median(walls), "min": min(walls), "max": max(walls),
            **{k: statistics.median(r[k] for r in runs)
               for k in ("client_cpu", "server_cpu", "client_rss", "server_rss")},
        }
    s["ratio"] = s["ours"]["wall"] / s["stock"]["wall"]
    return s


def bar_text(row, s):
    """The issue's bar for this row, or "" where it sets none."""
    case, side = row["case"], row["side"]
    parts = []
    if case in WALL_BAR:
        ok = s["ratio"] <= WALL_BAR[case]
        parts.append("wall ≤ %.1f: %s" % (WALL_BAR[case], "yes" if ok else "no"))
    ours = s["ours"][side_key(side)]
    if case in ("A", "C") and "rss_ref" in row:
        k = ours / row["rss_ref"]["rss"]
        parts.append("RSS vs %s: %.2f× (≤ 1.2: %s)" % (fmt_size(row["rss_ref"]["size"]), k,
                                                     "yes" if k <= RSS_RATIO_BAR else "no"))
    elif case == "B":
        ok = ours < RSS_SMALL_BAR
        parts.append("RSS < 100 MiB: %s" % ("yes" if ok else "no"))
    return "; ".join(parts)


HEADER = ("| case | data | side | checksum | ours | wall s, ours | wall s, stock | ours/stock "
          "| CPU s client, ours / stock | CPU s server, ours / stock "
          "| peak RSS MiB client, ours / stock | peak RSS MiB server, ours / stock | bar |")


def table(info, results):
    lines = [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    for row in results:
        if "error" in row:
            lines.append("| %s | %s | %s | %s | %s |%s %s |" % (
                row["case"], row["data"], row["side"], row["checksum"],
                "pure" if row["pure"] else info["impl"][False], " failed |" * 7,
                row["error"].splitlines()[0][:200].replace("|", "/")))
            continue
        s = summarize(row)
        o, t = s["ours"], s["stock"]
        wall = lambda x: "%.2f (%.2f–%.2f)" % (x["wall"], x["min"], x["max"])  # noqa: E731
        mib = lambda b: "%.0f" % (b / MiB)  # noqa: E731
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %.2f | %.2f / %.2f | %.2f / %.2f | %s / %s | %s / %s | %s |" % (
            row["case"], row["data"], row["side"], row["checksum"],
            "pure" if row["pure"] else info["impl"][False], wall(o), wall(t), s["ratio"],
            o["client_cpu"], t["client_cpu"], o["server_cpu"], t["server_cpu"],
            mib(o["client_rss"]), mib(t["client_rss"]), mib(o["server_rss"]), mib(t["server_rss"]),
            bar_text(row, s)))
    return "\n".join(lines)


def via(how):
    if how == "tcp":
        return "a fresh listener on TCP 127.0.0.1 per run (its start not in the wall time)"
    return "started by the client for its one connection through RSYNC_CONNECT_PROG (inetd mode)"


def report(info, results, notes):
    cases = sorted({r["case"] for r in results})
    text = [
        "# gokr-rsync vs stock rsync%s" % (" (smoke run: sizes too small to mean anything)" if info["smoke"] else ""),
        "",
        "%s; gokr-rsync %s; %s; Python %s; %d CPUs (%s); %d runs per row, alternating ours and stock; %s." % (
            info["date"], info["version"], info["rsync"], info["python"], info["cpus"], info["machine"], info["runs"],
            "rsync_delta: %s, pure rows: %s" % (info["impl"][False], info["impl"][True])),
        "",
        "Each row is a pull `rsync ARGS rsync://HOST/m/ DEST/`. Daemon side: the stock rsync client "
        "pulls from our daemon vs from stock `rsync --daemon`, %s. Client side: our client vs the stock "
        "client, pulling from stock `rsync --daemon`, %s. Wall: median (min–max) of the client's run time. "
        "CPU (user+sys) and peak RSS (ru_maxrss of the side's biggest process): medians, from wait4() of "
        "the client and of the daemon (a listener with its connection process or thread, its start "
        "included). The data was read once before the runs (warm page cache, the same for both); `sync` "
        "before every run; the destination starts empty, except C (the changed copy, hard-linked in) and "
        "D (an up-to-date copy). ours = the delta search our processes used: c (the C library) or pure "
        "(GOKR_RSYNC_PURE=1)." % (via(info["daemon_via"]), via(info["client_via"])),
        "",
    ]
    for c in cases:
        text.append("- %s: %s; rsync args `%s`" % (c, CASE_TITLES[c], " ".join(CASE_ARGS[c])))
    text += ["", table(info, results), "",
             "The bar (from the issue, printed, not asserted): wall ratio ≤ 1.1 for A and C, ≤ 1.5 for "
             "B and D, both sides; our peak RSS the same within 20% for 256 MiB and 1 GiB files (here: "
             "the median of our rows' runs vs one more run of ours with a quarter of the file), under "
             "100 MiB for B."]
    if notes:
        text += [""] + ["- " + n for n in notes]
    return "\n".join(text) + "\n"


def chart(results, path):
    """A bar chart of the wall ratios, when matplotlib is importable."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    results = [r for r in results if "error" not in r]
    if not results:
        return False
    labels = ["%s %s %s%s" % (r["case"], r["side"], r["checksum"], " (pure, %s)" % r["data"] if r["pure"] else "")
              for r in results]
    ratios = [summarize(r)["ratio"] for r in results]
    colors = ["tab:orange" if r["pure"] else "tab:blue" for r in results]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(results) + 2), 5))
    ax.bar(range(len(ratios)), ratios, color=colors)
    ax.set_xticks(range(len(ratios)), labels, rotation=60, ha="right", fontsize=8)
    for y in (1.0, 1.1, 1.5):
        ax.axhline(y, color="grey", lw=0.8, ls="-" if y == 1.0 else "--")
    ax.set_yscale("log")
    ax.set_ylabel("wall time, ours / stock (log)")
    ax.set_title("gokr-rsync vs stock rsync (blue: C library, orange: pure Python)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=parse_size, default=GiB, help="the large file of A and C (default 1G)")
    p.add_argument("--pure-size", type=parse_size, help="the large file for the pure-Python rows (default: --size)")
    p.add_argument("--files", type=int, default=20000, help="files in B and D (default 20000)")
    p.add_argument("--text-size", type=parse_size, default=256 * MiB, help="the text of E (default 256M)")
    p.add_argument("--runs", type=int, default=5, help="runs per row and side (default 5)")
    p.add_argument("--cases", default="A,B,C,D,E", help="which of A,B,C,D,E (default all)")
    p.add_argument("--out", help="data and results (default bench/out, or bench/out/smoke with --smoke)")
    p.add_argument("--dst", help="where the transfers write (default OUT/dst); a tmpfs here takes the file "
                   "system's inode allocation out of B and D (C needs the data's file system)")
    p.add_argument("--no-pure", action="store_true", help="leave out the pure-Python rows")
    p.add_argument("--timeout", type=float, default=600, help="seconds one transfer may take (default 600)")
    p.add_argument("--daemon-via", choices=("tcp", "connect-prog"), default="tcp",
                   help="how daemon-side rows reach the daemons: a fresh TCP listener per run, or one "
                        "started per connection in inetd mode (default tcp)")
    p.add_argument("--client-via", choices=("tcp", "connect-prog"), default="tcp",
                   help="the same for client-side rows (default tcp)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes and one run: checks the machinery only")
    a = p.parse_args(argv)
    if a.smoke:
        a.size, a.files, a.text_size, a.runs, a.timeout = 4 * MiB, 200, 2 * MiB, 1, 120
    a.pure_size = a.pure_size or a.size
    a.out = a.out or os.path.join(HERE, "out", "smoke" if a.smoke else "")
    a.cases = [c.strip().upper() for c in a.cases.split(",") if c.strip()]
    bad = [c for c in a.cases if c not in CASE_ARGS]
    if bad or not a.cases:
        p.error("unknown case(s): %s" % ",".join(bad))
    if a.runs < 1 or a.files < 1:
        p.error("--runs and --files must be positive")
    return a


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    bench = None
    try:
        bench = Bench(args)
        info, results = bench.run()
        text = report(info, results, bench.notes)
        with open(os.path.join(bench.out, "results.md"), "w") as f:
            f.write(text)
        with open(os.path.join(bench.out, "results.json"), "w") as f:
            json.dump({"info": info, "notes": bench.notes, "rows": results}, f, indent=1)
        if chart(results, os.path.join(bench.out, "results.png")):
            text += "\nChart: %s\n" % os.path.join(bench.out, "results.png")
        sys.stdout.write(text)
        sys.stdout.flush()
        return 0
    except BenchError as e:
        log("bench: %s" % e)
        return 1
    finally:
        if bench is not None:
            bench.clean_up()


if __name__ == "__main__":
    sys.exit(main())
