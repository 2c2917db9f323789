"""The receiving side of rsync (generator.c, receiver.c, and main.c's
do_server_recv), used by the client to download and by the server to
accept uploads.

The generator walks the file list, decides what is missing or changed, and
asks the sender for it with the block sums of the local copy; the receiver
rebuilds each file from the sender's tokens into a temporary file, checks
the whole-file sum and renames it into place. They run as two threads: the
generator writes requests while the receiver reads data, as rsync's two
processes do. Everything below the destination is reached through
directory descriptors opened with O_NOFOLLOW.
"""

import collections
import ctypes
import errno
import functools
import os
import queue
import random
import stat
import struct
import threading
import time

import rsync_delta
import rsync_flist
from rsync import (
    DROP_EVERY,
    Demux,
    _I32,
    _SUM_HEAD,
    IOERR_DEL_LIMIT,
    IOERR_GENERAL,
    ITEM_BASIS_TYPE_FOLLOWS,
    ITEM_IS_NEW,
    ITEM_LOCAL_CHANGE,
    ITEM_MISSING_DATA,
    ITEM_REPORT_GROUP,
    ITEM_REPORT_OWNER,
    ITEM_REPORT_PERMS,
    ITEM_REPORT_SIZE,
    ITEM_REPORT_CHANGE,
    ITEM_REPORT_TIME,
    ITEM_TRANSFER,
    ITEM_XNAME_FOLLOWS,
    MAX_BLOCK_SIZE,
    MAX_NAME_LEN,
    MAX_PATH,
    MSG_DELETED,
    MSG_ERROR_XFER,
    MSG_INFO,
    MSG_WARNING,
    NDX_DEL_STATS,
    NDX_DONE,
    OLD_MAX_BLOCK_SIZE,
    O_DIR,
    O_NOFOLLOW,
    ProtocolError,
    RERR_DEL_LIMIT,
    RERR_FILEIO,
    RERR_FILESELECT,
    RERR_PARTIAL,
    RERR_PROTOCOL,
    RsyncError,
    _compress,
    _drop_pages,
    _errtext,
    _show,
    gid_by_name,
    open_dir_beneath,
    split_path,
    uid_by_name,
    write_all_vectored,
)
from rsync_flist import (
    FLAG_CONTENT_DIR,
    FLAG_DIR_CREATED,
    FLAG_HLINKED,
    FLAG_HLINK_FIRST,
    FlistDecoder,
    _is_device,
    _is_special,
    sort_file_list,
)

BLOCK_SIZE = 700
BLOCKSUM_BIAS = 10
SUM_LENGTH = 16
SHORT_SUM_LENGTH = 2


def sum_sizes_sqroot(length, protocol, xfer_len, block_size=0, full_sums=False):
    """(blength, s2length, count, remainder) for a basis of `length` bytes,
    as rsync's generator sizes them: blocks of about sqrt(length), and strong
    sums just long enough for the file (full length in the redo phase)."""
    max_s2 = min(SUM_LENGTH, xfer_len)
    if block_size:
        blength = block_size
    elif length <= BLOCK_SIZE * BLOCK_SIZE:
        blength = BLOCK_SIZE
    else:
        max_blength = OLD_MAX_BLOCK_SIZE if protocol < 30 else MAX_BLOCK_SIZE
        c, l = 1, length
        while True:
            l >>= 2
            if not l:
                break
            c <<= 1
        if c >= max_blength:
            blength = max_blength
        else:
            blength = 0
            while True:
                blength |= c
                if length < blength * blength:
                    blength &= ~c
                c >>= 1
                if c < 8:
                    break
            blength = max(blength, BLOCK_SIZE)
    if full_sums:
        s2length = max_s2
    else:
        b = BLOCKSUM_BIAS
        l = length
        while True:
            l >>= 1
            if not l:
                break
            b += 2
        c = blength
        while True:
            c >>= 1
            if not c or not b:
                break
            b -= 1
        s2length = (b + 1 - 32 + 7) // 8
        s2length = min(max(s2length, SHORT_SUM_LENGTH), max_s2)
    remainder = length % blength
    count = length // blength + (remainder != 0)
    return blength, s2length, count, remainder


_WHOLE = (0, 0, 0, 0)  # the sum head of a file asked for without a basis
_NO_STAT = object()


def _tmpname(name):
    """get_tmpname: `.NAME.XXXXXX` beside the target, within NAME_MAX."""
    base = name[:MAX_NAME_LEN - 8]
    if base.startswith(b"."):
        base = base[1:] if len(base) > 1 else base
    return b"." + base + b".%06x" % random.getrandbits(24)


class DestTree:
    """The destination, opened by descriptor: every directory is entered
    one component at a time with O_NOFOLLOW, so nothing is ever written
    through a symlink, whatever the sender or a local race puts there.
    Each thread keeps its own last directory open."""

    def __init__(self, rootfd):
        self.rootfd = rootfd
        self._local = threading.local()
        self._all = []
        self._lock = threading.Lock()

    def _cache(self):
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = [None, -1, None]
            with self._lock:
                self._all.append(c)
        return c

    def dir(self, parts):
        parts = tuple(parts)
        c = self._cache()
        if parts == c[0]:
            return c[1]
        fd = open_dir_beneath(self.rootfd, parts)
        if c[1] >= 0:
            os.close(c[1])
        c[0], c[1], c[2] = parts, fd, None
        return fd

    def locate(self, name):
        """(fd of the parent directory, leaf) of a relative wire name; the
        fd is the tree's, valid until this thread's next call."""
        parent, _, leaf = name.rpartition(b"/")
        c = self._cache()
        if parent != c[2]:
            self.dir(parent.split(b"/") if parent else ())
            c[2] = parent
        return c[1], leaf

    def invalidate(self):
        c = self._cache()
        if c[1] >= 0:
            os.close(c[1])
        c[0], c[1], c[2] = None, -1, None

    def split(self, name):
        """(parent parts, leaf) of a relative wire name."""
        if name == b".":
            return (), b"."
        parts = name.split(b"/")
        return tuple(parts[:-1]), parts[-1]

    def lstat(self, name):
        try:
            if name == b".":
                return os.stat(self.rootfd)
            dfd, leaf = self.locate(name)
            return os.stat(leaf, dir_fd=dfd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def close(self):
        with self._lock:
            for c in self._all:
                if c[1] >= 0:
                    os.close(c[1])
                c[0], c[1] = None, -1


_WR_FAILURE = struct.Struct("<qii")
_WR_OPEN, _WR_WRITE, _WR_ATTRS, _WR_RENAME = 1, 2, 3, 4


def _c_writer():
    """The C library with its writer thread's functions declared, or None."""
    lib = rsync_delta._lib
    try:
        if lib is None or lib.wr_abi_version() != 1:
            return None
        lib.wr_failure_size.restype = ctypes.c_size_t
        if lib.wr_failure_size() != _WR_FAILURE.size:
            return None
    except AttributeError:
        return None
    vp, i32, i64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64
    lib.wr_start.restype, lib.wr_start.argtypes = vp, [ctypes.c_uint]
    lib.wr_submit.restype = ctypes.c_int
    lib.wr_submit.argtypes = [vp, i64, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, i64,
                              i32, i32, i32, i32, i64, i64]
    lib.wr_drain.restype, lib.wr_drain.argtypes = i32, [vp, vp, i32]
    lib.wr_stop.restype, lib.wr_stop.argtypes = None, [vp]
    return lib


class Writer:
    """The writer thread of contrib/rsync_writer.c: puts verified small
    files in place (temp file, data, owner, mode, times, rename) beside
    the Python that receives the next ones."""

    BATCH = 256

    def __init__(self, lib):
        self.lib = lib
        self.handle = lib.wr_start(random.getrandbits(32))
        if not self.handle:
            raise OSError(errno.ENOMEM, "cannot start the writer thread")
        self.failures = ctypes.create_string_buffer(self.BATCH * _WR_FAILURE.size)

    def submit(self, tag, dfd, tmp, leaf, data, uid, gid, mode, mtime):
        """Queues a file (mtime as (seconds, nanoseconds) or None): 0, or
        the errno that kept it from being queued."""
        sec, nsec = mtime if mtime is not None else (0, 0)
        return self.lib.wr_submit(self.handle, tag, dfd, tmp, leaf, data, len(data), uid, gid, mode,
                                  mtime is not None, sec, nsec)

    def drain(self):
        """Waits for every queued file: [(tag, stage, errno)] of what failed."""
        failed = []
        while True:
            n = self.lib.wr_drain(self.handle, self.failures, self.BATCH)
            failed += _WR_FAILURE.iter_unpack(ctypes.string_at(self.failures, n * _WR_FAILURE.size))
            if n < self.BATCH:
                return failed

    def stop(self):
        """Lets the queued files be put in place and ends the thread."""
        if self.handle:
            self.lib.wr_stop(self.handle)
            self.handle = None


_QuickStat = collections.namedtuple("_QuickStat", "st_mode st_size st_mtime_ns st_uid st_gid")
_new_quick = tuple.__new__  # (a _QuickStat without the Python-level __new__ call)


class StatPrefetch:
    """The generator's lstat of each regular file in the list, made while
    the rest of the list is still coming (time a client spends waiting for
    the sender to walk its tree), as rsync's generator does it with
    incremental recursion. The results (what the quick check needs of each,
    or None for a missing file) count only if the destination the receiver
    then opens is the directory looked at (see `matches`); a file whose
    prefetched state does not show it unchanged is stat'ed again."""

    def __init__(self, destfd):
        self.fd = destfd
        self.tree = DestTree(destfd)
        self.done = 0
        self.stats = {}
        self.missing = set()
        self.lstat = rsync_flist.CLstat() if rsync_flist._fl_lstat is not None else self._lstat

    LIMIT = 200_000  # entries looked at ahead: the rest are stat'ed by the generator

    def __call__(self, entries):
        stats, missing, tree = self.stats, self.missing, self.tree
        runs = []  # (parent, names, leaves) of consecutive files in one directory
        parent_of_run, run_leaves = None, []
        for i in range(self.done, min(len(entries), self.LIMIT)):
            e = entries[i]
            if e.mode & 0o170000 != stat.S_IFREG:
                continue
            name = e.name
            parent, _, leaf = name.rpartition(b"/")
            if parent != parent_of_run or len(run_leaves) >= self.RUN:
                run_names, run_leaves = [], []
                runs.append((parent, run_names, run_leaves))
                parent_of_run = parent
            run_names.append(name)
            run_leaves.append(leaf)
        self.done = len(entries)
        for parent, names, leaves in runs:
            if parent not in missing:
                try:
                    dfd, _ = tree.locate(names[0])
                except (FileNotFoundError, NotADirectoryError):
                    missing.add(parent)
                except OSError:
                    continue
            if parent in missing:
                for name in names:
                    stats[name] = None
                continue
            for name, (err, st) in zip(names, self.lstat(dfd, leaves)):
                if not err:
                    stats[name] = _new_quick(_QuickStat, st)
                elif err == errno.ENOENT or err == errno.ENOTDIR:
                    stats[name] = None

    RUN = 4096

    @staticmethod
    def _lstat(dfd, leaves):
        """Without the C library: what rsync_flist.CLstat returns."""
        out = []
        for leaf in leaves:
            try:
                st = os.stat(leaf, dir_fd=dfd, follow_symlinks=False)
            except OSError as err:
                out.append((err.errno, None))
                continue
            out.append((0, (st.st_mode, st.st_size, st.st_mtime_ns, st.st_uid, st.st_gid)))
        return out

    def matches(self, destfd):
        a, b = os.fstat(self.fd), os.fstat(destfd)
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    def close(self):
        self.tree.close()
        os.close(self.fd)


class ReceiverError(RsyncError):
    pass


class Receiver:
    """Generator and receiver of one session, writing below `dest`.

    `log(kind, entry, iflags, extra)` reports what happened, for -v/-i
    output: kind is "item" (an itemized change), "xfer" (a file received),
    "delete", "skip" or "error" text; for "skip", iflags is the -v count
    from which rsync shows it."""

    def __init__(self, sess, entries, unsorted, destfd, local_name=None, filters=None, out=None,
                 progress=None):
        self.sess = sess
        self.opts = sess.opts
        self.entries = entries
        self.unsorted = unsorted
        self.tree = DestTree(destfd)
        self.local_name = local_name
        self.filters = filters
        self.out = out or (lambda kind, e, iflags, extra: None)
        self.progress = progress
        self.expect = collections.deque()
        self.expect_lock = threading.Lock()
        self.expect_cond = threading.Condition(self.expect_lock)
        self.to_gen = queue.Queue()
        self.gen_error = None
        self.io_error = 0
        self.errors = 0
        self.redo_done = set()
        self.dir_fix = []
        self.made_dirs = set()  # directories this run created: nothing to lstat in them
        self.new_owners = {}
        self.writer = None
        self.leaders = {}
        self.followers = []
        self.hl_group = {}  # ndx -> its hard-link group's members, in list order
        self.hl_led = set()  # ids of the groups whose leader was found at the destination
        self.del_stats = [0, 0, 0, 0, 0]
        self.deleted_count = 0
        self.skipped_deletes = 0
        self.am_root = os.geteuid() == 0
        self.tokens = None
        if sess.compression:
            self.tokens = _compress().TokenReader(sess.compression, sess.inp.read,
                                                     protocol=sess.protocol)
        self.uid_map = {}
        self.gid_map = {}
        self.stats = sess.stats
        self._setup_hardlinks()

    # -- names and the local file system

    def warn(self, text, partial=True):
        if partial:
            self.io_error |= IOERR_GENERAL
        self.out("error", None, 0, text)

    def _setup_hardlinks(self):
        if not self.opts.hard_links:
            return
        groups = {}
        p = self.sess.protocol
        for e in self.unsorted:
            if p >= 30:
                if e.hl_first >= 0:
                    key = id(self.unsorted[e.hl_first])
                elif e.flags & FLAG_HLINK_FIRST:
                    key = id(e)
                else:
                    continue
            else:
                if e.hl_dev == -1 or not (e.flags & FLAG_HLINKED or p < 28):
                    continue
                key = (e.hl_dev, e.hl_ino)
            groups.setdefault(key, []).append(e)
        for members in groups.values():
            if len(members) < 2:
                continue
            members.sort(key=lambda x: x.ndx)
            leader = members[-1]
            if leader.is_dir():
                continue
            group = [m for m in members if not m.is_dir()]
            for m in group:
                self.hl_group[m.ndx] = group
                if m is not leader:
                    self.leaders[m.ndx] = leader

    def target(self, e):
        if self.local_name is not None:
            return self.local_name
        return e.name

    def map_ids(self, users, groups):
        """match_uid/match_gid: sender ids to ours, by name unless --numeric-ids."""
        opts = self.opts
        if opts.numeric_ids:
            return
        for uid, name in users.items():
            mine = uid_by_name(os.fsdecode(name))
            if mine is not None:
                self.uid_map[uid] = mine
        for gid, name in groups.items():
            mine = gid_by_name(os.fsdecode(name))
            if mine is not None:
                self.gid_map[gid] = mine

    def _may_chgrp(self, gid):
        """match_gid's FLAG_SKIP_GROUP: without root, only groups we are in."""
        if self.am_root:
            return True
        groups = getattr(self, "_groups", None)
        if groups is None:
            groups = self._groups = set(os.getgroups()) | {os.getegid()}
        return gid in groups

    def want_uid(self, e):
        return self.uid_map.get(e.uid, e.uid)

    def want_gid(self, e):
        return self.gid_map.get(e.gid, e.gid)

    # -- the generator

    def _send_request(self, ndx, iflags, head=None, sums=None):
        """ndx + iflags (+ sum head and sums); the receiver will see the echo."""
        sess = self.sess
        with self.expect_cond:
            self.expect.append((ndx, iflags, head))
        sess.write_ndx_and_attrs(ndx, iflags)
        if head is not None:
            sess.write_sum_head(*head)
            if sums:
                sess.out.write_parts(sums)
        self._pace()

    def _end_deletions(self):
        """From 31: NDX_DEL_STATS with the deletion counts (with --delete),
        then the NDX_DONE that ends the deleting phase."""
        out = self.sess.out
        if self.opts.delete:
            out.ndx(NDX_DEL_STATS)
            for v in self.del_stats:
                out.varint(v)
        self._mark(NDX_DONE)
        out.ndx(NDX_DONE)

    FLUSH_AFTER = 0.005

    def _pace(self):
        """The generator sends what it has at least every few milliseconds,
        so the sender is never left waiting for requests we have made."""
        now = time.monotonic()
        if now - self._flushed >= self.FLUSH_AFTER:
            self.sess.out.flush()
            self._flushed = now

    _flushed = 0.0

    def _itemize(self, e, st, iflags):
        """The itemized flags of an entry against its local state; sent to the
        sender for the echo from 29 on (so -v lines keep the list's order),
        logged here below 29."""
        opts = self.opts
        if st is not None:
            keep_time = opts.times and not (e.is_dir() and opts.omit_dir_times) and \
                not (e.is_link() and opts.omit_link_times)
            if e.is_reg() and e.size != st.st_size:
                iflags |= ITEM_REPORT_SIZE
            if keep_time:
                if not self._same_mtime(e, st):
                    iflags |= ITEM_REPORT_TIME
            elif iflags & (ITEM_TRANSFER | ITEM_LOCAL_CHANGE):
                iflags |= ITEM_REPORT_TIME
            if not e.is_link():
                if opts.perms and (st.st_mode & 0o7777) != (e.mode & 0o7777):
                    iflags |= ITEM_REPORT_PERMS
                elif not opts.perms and opts.executability and \
                        bool(st.st_mode & 0o111) != bool(e.mode & 0o111):
                    iflags |= ITEM_REPORT_PERMS
            if opts.owner and self.am_root and self.want_uid(e) != st.st_uid:
                iflags |= ITEM_REPORT_OWNER
            if opts.group and self._may_chgrp(self.want_gid(e)) and self.want_gid(e) != st.st_gid:
                iflags |= ITEM_REPORT_GROUP
        else:
            iflags |= ITEM_IS_NEW
        return iflags & 0xFFFF

    def _report(self, e, iflags, xname=None):
        significant = iflags & ~(ITEM_BASIS_TYPE_FOLLOWS | ITEM_XNAME_FOLLOWS | ITEM_LOCAL_CHANGE)
        if not (significant or self.opts.verbose > 1 or self.opts.itemize > 1 or xname):
            return
        if self.sess.protocol >= 29:
            if xname is not None:
                iflags |= ITEM_XNAME_FOLLOWS
            with self.expect_cond:
                self.expect.append((e.ndx, iflags, ("xname", xname)))
            self.sess.write_ndx_and_attrs(e.ndx, iflags, xname=xname)
            self._pace()
        else:
            self.log_item(e, iflags, xname)

    def log_item(self, e, iflags, xname=None):
        """maybe_log_item for items that were not transferred."""
        significant = iflags & ~(ITEM_BASIS_TYPE_FOLLOWS | ITEM_XNAME_FOLLOWS | ITEM_LOCAL_CHANGE)
        local_change = iflags & ITEM_LOCAL_CHANGE and significant
        itemizing = self.opts.itemize
        see = itemizing and (significant or xname or itemizing > 1)
        if see or local_change or xname or (e.is_dir() and significant):
            self.out("item", e, iflags, xname)
        if iflags & ITEM_IS_NEW:
            self.stats.created_files += 1
            kind = _kind(e)
            self.created[kind] = self.created.get(kind, 0) + 1

    created = None

    def generate(self):
        """generate_files: runs in its own thread."""
        try:
            self._generate()
        except BaseException as e:
            self.gen_error = e
            with self.expect_cond:
                self.expect.append(("error", 0, None))
                self.expect_cond.notify_all()
            try:
                self.sess.transport.shutdown_write()
            except Exception:
                pass

    def _generate(self):
        sess, opts = self.sess, self.opts
        p = sess.protocol
        out = sess.out
        if opts.list_only:
            for e in self.entries:
                self.out("list", e, 0, None)
        else:
            self._generate_entries()
        self._mark(NDX_DONE)
        out.ndx(NDX_DONE)
        out.flush()
        dones = 0
        while dones < 1:
            msg = self._next_msg()
            if msg[0] == "redo":
                e = self.entries[msg[1]]
                self._recv_generator(e, full_sums=True)
                out.flush()
            elif msg[0] == "done":
                dones += 1
        self._mark(NDX_DONE)
        out.ndx(NDX_DONE)
        out.flush()
        while dones < 2:
            if self._next_msg()[0] == "done":
                dones += 1
        self._finish_hardlinks()
        if p >= 29:
            self._mark(NDX_DONE)
            out.ndx(NDX_DONE)
        early_delete = opts.delete_mode not in ("after", "delay")
        if p >= 31 and early_delete:
            self._end_deletions()
        out.flush()
        if p >= 29:
            while dones < 3:
                if self._next_msg()[0] == "done":
                    dones += 1
        if opts.delete and not early_delete and not opts.list_only:
            for e in self.entries:
                if e.is_dir() and e.flags & FLAG_CONTENT_DIR:
                    self._delete_in_dir(e)
        if p >= 31 and not early_delete:
            self._end_deletions()
            out.flush()
        if p >= 31:
            while dones < 4:
                if self._next_msg()[0] == "done":
                    dones += 1
        self._touch_up_dirs()
        if self.skipped_deletes:
            self.out("warning", None, 0, "Deletions stopped due to --max-delete limit (%d skipped)"
                     % self.skipped_deletes)
            self.io_error |= IOERR_DEL_LIMIT
        out.ndx(NDX_DONE)
        out.flush()

    def _generate_entries(self):
        """generate_files' first pass: deletions before or during, and
        recv_generator for each entry."""
        opts, p = self.opts, self.sess.protocol
        self._unchanged = self._unchanged_test()
        if opts.delete and opts.delete_mode in (None, "before") and p < 30 or opts.delete_mode == "before":
            for e in self.entries:
                if e.is_dir() and e.flags & FLAG_CONTENT_DIR:
                    self._delete_in_dir(e)
        during = opts.delete and (opts.delete_mode == "during" or (opts.delete_mode is None and p >= 30))
        unchanged = self._unchanged
        quick = unchanged is not None and self.daemon_filters is None and self.local_name is None
        new_whole = quick and not (opts.existing or opts.dry_run or opts.max_size is not None
                                   or opts.min_size is not None)
        lstat, made_dirs = self.tree.lstat, self.made_dirs
        prefetched = self.prefetched if self.prefetched is not None else {}
        self.prefetched = None
        for e in self.entries:
            if during and e.is_dir() and e.flags & FLAG_CONTENT_DIR:
                self._delete_in_dir(e)
            try:
                if quick and e.mode & 0o170000 == stat.S_IFREG:
                    # The common cases of a re-sync and of a first copy,
                    # without the calls of the general path: an unchanged
                    # file ends here, and one in a directory made in this
                    # run is asked for whole.
                    if e.name.rpartition(b"/")[0] not in made_dirs:
                        st = prefetched.pop(e.name, _NO_STAT)
                        if st is not None:
                            if st is not _NO_STAT and unchanged(e, st):
                                continue
                            st = lstat(e.name)
                            if st is not None and unchanged(e, st):
                                continue
                        self._recv_generator(e, full_sums=False, st=st)
                    elif new_whole:
                        self._send_request(e.ndx, ITEM_TRANSFER | ITEM_IS_NEW, _WHOLE)
                    else:
                        self._recv_generator(e, full_sums=False)
                    continue
                self._recv_generator(e, full_sums=False)
            except OSError as err:
                self.warn('rsync: [generator] %s "%s": %s' % ("recv_generator", _show(e.name), _errtext(err)))

    def _next_msg(self):
        msg = self.to_gen.get()
        if msg[0] == "abort":
            raise RsyncError("receiver stopped", RERR_PARTIAL)
        return msg

    def _mark(self, ndx):
        with self.expect_cond:
            self.expect.append((ndx, 0, None))

    daemon_filters = None
    daemon_prefix = b""

    def _daemon_excluded(self, name, is_dir):
        return self.daemon_filters is not None and self.daemon_filters.excluded(
            self.daemon_prefix + name, is_dir)

    _NOT_YET = object()
    prefetched = None  # {name: lstat or None} made while the list came (StatPrefetch)

    def _recv_generator(self, e, full_sums, st=_NOT_YET):
        """recv_generator: decides for one entry and acts or asks; `st` is
        the entry's lstat when the caller has made it already."""
        opts, sess = self.opts, self.sess
        name = self.target(e)
        if st is self._NOT_YET:
            if e.name != b"." and self._daemon_excluded(e.name, e.is_dir()):
                self.warn("ERROR: daemon refused to receive %s \"%s\"" % (
                    "directory" if e.is_dir() else "file", _show(e.name)))
                return
            if not full_sums and name.rpartition(b"/")[0] in self.made_dirs:
                st = None
            else:
                st = self.tree.lstat(name)
            if st is not None and self._unchanged is not None and self._unchanged(e, st):
                return
        if opts.existing and st is None and e.name != b".":
            # Nothing new of any kind; what is below a directory not made
            # is missing too, and skipped in its turn.
            if opts.verbose > 1:
                self.out("skip", e, 2, 'not creating new %s "%s"' % (
                    "directory" if e.is_dir() else "file", _show(name)))
            self._skipped_leader(e)
            return
        if e.is_dir():
            return self._gen_dir(e, name, st)
        if e.ndx in self.leaders:
            group = self.hl_group.get(e.ndx)
            if group is None or id(group) in self.hl_led or st is None or not stat.S_ISREG(st.st_mode) \
                    or not e.is_reg():
                self.followers.append(e)
                return
            # hard_link_check: the first member the destination already has
            # leads its group (kept, or updated in place of being sent anew),
            # and the others, before and after it, are linked to it.
            self.hl_led.add(id(group))
            for m in group:
                if m is not e:
                    self.leaders[m.ndx] = e
            del self.leaders[e.ndx]
        if e.is_link():
            if not opts.links:
                self.out("skip", e, 0, "skipping non-regular file \"%s\"" % _show(e.name))
                return
            return self._gen_symlink(e, name, st)
        if _is_device(e.mode) or _is_special(e.mode):
            if not ((_is_device(e.mode) and opts.devices and self.am_root)
                    or (_is_special(e.mode) and opts.specials)):
                self.out("skip", e, 0, "skipping non-regular file \"%s\"" % _show(e.name))
                return
            return self._gen_special(e, name, st)
        if not e.is_reg():
            return
        if st is not None and not stat.S_ISREG(st.st_mode):
            if not self._make_way(name, st, e):
                return
            st = None
        if opts.existing and st is None:  # a non-file made way for it
            return
        if opts.ignore_existing and st is not None:
            return
        if opts.max_size is not None and e.size > opts.max_size:
            return
        if opts.min_size is not None and e.size < opts.min_size:
            return
        if st is not None and opts.update and int(st.st_mtime) > e.mtime and not full_sums:
            return
        if st is not None and not full_sums and self._quick_check_ok(e, name, st):
            iflags = self._itemize(e, st, 0)
            self._set_attrs(e, name, st)
            self._report(e, iflags)
            return
        iflags = self._itemize(e, st, ITEM_TRANSFER | (ITEM_REPORT_CHANGE if opts.checksum else 0))
        if opts.dry_run:
            with self.expect_cond:
                self.expect.append((e.ndx, iflags, None))
            sess.write_ndx_and_attrs(e.ndx, iflags)
            self._pace()
            return
        if st is None or opts.whole_file or st.st_size == 0:
            self._send_request(e.ndx, iflags, _WHOLE if st is None or opts.whole_file
                               else (0, BLOCK_SIZE if not opts.block_size else opts.block_size,
                                     0, 0))
            return
        self._send_sums(e, name, st, iflags, full_sums)

    _unchanged = None

    def _unchanged_test(self):
        """The generator's common case in a test of its own: a regular file
        that passes the quick check and whose permissions, owner, group and
        time already match, so that itemizing and set_file_attrs would find
        nothing to do or report. None when the options need the full path
        for every file."""
        opts = self.opts
        if (opts.checksum or opts.ignore_times or opts.hard_links or not opts.times or opts.modify_window
                or opts.verbose > 1 or opts.itemize > 1 or (opts.executability and not opts.perms)):
            return None
        nsec = self.sess.protocol >= 31
        perms = opts.perms
        owner = opts.owner and self.am_root
        group = opts.group
        uid_map, gid_map, may_chgrp = self.uid_map, self.gid_map, self._may_chgrp

        def unchanged(e, st):
            if st.st_mode & 0o170000 != stat.S_IFREG or e.mode & 0o170000 != stat.S_IFREG \
                    or st.st_size != e.size or st.st_mtime_ns != e.mtime * 1_000_000_000 + (e.nsec if nsec else 0):
                return False
            if perms and (st.st_mode ^ e.mode) & 0o7777:
                return False
            if owner and uid_map.get(e.uid, e.uid) != st.st_uid:
                return False
            if group:
                gid = gid_map.get(e.gid, e.gid)
                if gid != st.st_gid and may_chgrp(gid):
                    return False
            return True
        return unchanged

    def _quick_check_ok(self, e, name, st):
        opts = self.opts
        if st.st_size != e.size:
            return False
        if opts.checksum:
            if e.sum is None:
                return False
            return self._local_checksum(name, st) == e.sum[:self.sess.checksums.file_len]
        if opts.size_only:
            return True
        if opts.ignore_times:
            return False
        return self._same_mtime(e, st)

    def _same_mtime(self, e, st):
        """same_mtime: equal seconds, or within --modify-window of each other."""
        window = self.opts.modify_window
        if window > 0:
            return abs(int(st.st_mtime) - e.mtime) <= window
        return int(st.st_mtime) == e.mtime

    def _local_checksum(self, name, st):
        parent, leaf = self.tree.split(name)
        fd = os.open(leaf, os.O_RDONLY | O_NOFOLLOW, dir_fd=self.tree.dir(parent))
        try:
            return self.sess.checksums.file_checksum(fd, st.st_size)
        finally:
            os.close(fd)

    def _send_sums(self, e, name, st, iflags, full_sums):
        """generate_and_send_sums over the local copy, mapped read-only and
        summed a window at a time, so its pages do not pile up in memory."""
        sess = self.sess
        sess.out.flush()
        parent, leaf = self.tree.split(name)
        try:
            fd = os.open(leaf, os.O_RDONLY | O_NOFOLLOW, dir_fd=self.tree.dir(parent))
        except OSError:
            self._send_request(e.ndx, iflags, _WHOLE)
            return
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                self._send_request(e.ndx, iflags, _WHOLE)
                return
            blength, s2length, count, remainder = sum_sizes_sqroot(
                size, sess.protocol, sess.checksums.xfer_len, self.opts.block_size, full_sums)
            strong = sess.checksums.strong
            pack = struct.Struct("<I").pack
            parts = []
            step = max(1, DROP_EVERY // blength) * blength
            with rsync_delta.SafeMap(fd, size) as safe:
                mv = safe.view()
                window = None
                try:
                    for start in range(0, size, step):
                        window = mv[start:start + step]
                        sum1s = rsync_delta.block_checksum1s(window, blength)
                        sums = bytearray()
                        for i in range(len(sum1s)):
                            sums += pack(sum1s[i])
                            sums += strong(window[i * blength:(i + 1) * blength])[:s2length]
                        parts.append(sums)
                        window = None
                        _drop_pages(safe.buf, 0, start + step)
                finally:
                    window = None
                    mv.release()
        finally:
            os.close(fd)
        self._send_request(e.ndx, iflags, (count, blength, s2length, remainder), parts)

    def _make_way(self, name, st, e):
        """delete_item with DEL_MAKE_ROOM: removes a local entry of the wrong
        type for entry `e`. A directory goes only if empty, or with
        --delete/--force with its contents, which are reported deleted (it
        is not). False, after rsync's messages, when it cannot go."""
        parent, leaf = self.tree.split(name)
        dfd = self.tree.dir(parent)
        try:
            if stat.S_ISDIR(st.st_mode):
                if self.opts.delete or self.opts.force:
                    self._delete_children(dfd, leaf, name)
                if not self.opts.dry_run:
                    os.rmdir(leaf, dir_fd=dfd)
            elif not self.opts.dry_run:
                os.unlink(leaf, dir_fd=dfd)
            return True
        except OSError as err:
            if err.errno == errno.ENOTEMPTY:
                self.out("skip", e, 0, "cannot delete non-empty directory: %s" % _show(name))
            else:
                self.warn('rsync: [generator] delete_file: %s(%s) failed: %s' % (
                    "rmdir" if stat.S_ISDIR(st.st_mode) else "unlink", _show(name), _errtext(err)))
            self.warn("could not make way for new %s: %s" % (_KIND_WORDS[_kind(e)], _show(name)))
            return False

    def _gen_dir(self, e, name, st):
        opts = self.opts
        if st is not None and not stat.S_ISDIR(st.st_mode):
            if not self._make_way(name, st, e):
                return
            st = None
        created = st is None or e.flags & FLAG_DIR_CREATED
        iflags = self._itemize(e, None if created else st, ITEM_LOCAL_CHANGE if created else 0)
        if st is None and not opts.dry_run:
            parent, leaf = self.tree.split(name)
            try:
                os.mkdir(leaf, 0o700, dir_fd=self.tree.dir(parent))
            except OSError as err:
                self.warn('rsync: [generator] recv_generator: mkdir "%s" failed: %s'
                          % (_show(name), _errtext(err)))
                return
            self.made_dirs.add(name)
        if not opts.dry_run:
            self._set_attrs(e, name, None if created else st)
            if not self.am_root:
                self._keep_writable(name)
            self.dir_fix.append(e)
        self._report(e, iflags)

    def _keep_writable(self, name):
        """A directory we are to fill, whose mode (as the sender's) would shut
        us out, gets rwx for its owner until _touch_up_dirs puts the mode
        back (dir_tweaking, as rsync's generator does it)."""
        parent, leaf = self.tree.split(name)
        try:
            fd = self.tree.rootfd if leaf == b"." else \
                os.open(leaf, O_DIR | O_NOFOLLOW, dir_fd=self.tree.dir(parent))
        except OSError:
            return
        try:
            mode = os.fstat(fd).st_mode
            if mode & 0o700 != 0o700:
                os.fchmod(fd, (mode & 0o7777) | 0o700)
        except OSError:
            pass
        finally:
            if fd != self.tree.rootfd:
                os.close(fd)

    def _gen_symlink(self, e, name, st):
        opts = self.opts
        target = e.link or b""
        if opts.safe_links and unsafe_symlink(target, e.name):
            self.out("skip", e, 1, "ignoring unsafe symlink \"%s\" -> \"%s\"" % (_show(e.name), _show(target)))
            return
        if st is not None and stat.S_ISLNK(st.st_mode):
            parent, leaf = self.tree.split(name)
            try:
                cur = os.fsencode(os.readlink(leaf, dir_fd=self.tree.dir(parent)))
            except OSError:
                cur = None
            if cur == target:
                iflags = self._itemize(e, st, 0)
                self._set_attrs(e, name, st)
                self._report(e, iflags)
                return
        iflags = self._itemize(e, st, ITEM_LOCAL_CHANGE)
        if not opts.dry_run:
            what = 'symlink "%s" -> "%s"' % (_show(name), _show(target))
            if not self._replace_with(name, st, what,
                                      lambda tmp, dfd: os.symlink(target, tmp, dir_fd=dfd), e):
                return
            self._set_attrs(e, name, None)
        self._report(e, iflags, None)

    def _gen_special(self, e, name, st):
        opts = self.opts
        if st is not None and stat.S_IFMT(st.st_mode) == stat.S_IFMT(e.mode):
            same = True
            if _is_device(e.mode):
                same = st.st_rdev == os.makedev(e.rdev_major, e.rdev_minor)
            if same:
                iflags = self._itemize(e, st, 0)
                self._set_attrs(e, name, st)
                self._report(e, iflags)
                return
        iflags = self._itemize(e, st, ITEM_LOCAL_CHANGE)
        if not opts.dry_run:
            def create(tmp, dfd):
                if stat.S_ISFIFO(e.mode):
                    os.mkfifo(tmp, 0o600, dir_fd=dfd)
                else:
                    os.mknod(tmp, stat.S_IFMT(e.mode) | 0o600,
                             os.makedev(e.rdev_major, e.rdev_minor), dir_fd=dfd)
            if not self._replace_with(name, st, 'mknod "%s"' % _show(name), create, e):
                return
            self._set_attrs(e, name, None)
        self._report(e, iflags)

    def _replace_with(self, name, st, what, create, e):
        """Makes the non-file entry under a temporary name with create(tmp,
        dir_fd) and renames it over name; a directory in the way is deleted
        first. False (after a warning) when that fails."""
        if st is not None and stat.S_ISDIR(st.st_mode):
            if not self._make_way(name, st, e):
                return False
        parent, leaf = self.tree.split(name)
        dfd = self.tree.dir(parent)
        tmp = _tmpname(leaf)
        try:
            create(tmp, dfd)
            os.rename(tmp, leaf, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError as err:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            self.warn("rsync: [generator] %s failed: %s" % (what, _errtext(err)))
            return False
        return True

    def _wanted_owner(self, e):
        """(uid, gid) e's file is to have; -1 for one left as it is."""
        opts = self.opts
        want_uid = self.uid_map.get(e.uid, e.uid) if opts.owner and self.am_root else -1
        want_gid = -1
        if opts.group:
            want_gid = self.gid_map.get(e.gid, e.gid)
            if not (self.am_root or self._may_chgrp(want_gid)):
                want_gid = -1
        return want_uid, want_gid

    def _set_attrs(self, e, name, st, fd=None, new_owner=None, replaced=_NOT_YET):
        """set_file_attrs: ownership, permissions, then times; on an open fd
        when there is one, else by name without following links. A file
        just created (st None) may come with the (uid, gid) it was created
        with, so that a chown that would change nothing is left out.
        `replaced`: the lstat of the file that a received one (on `fd`)
        replaces, None if there was none; by default the one at `name`."""
        opts = self.opts
        if opts.dry_run:
            return
        if fd is None:
            parent, leaf = self.tree.split(name)
            dfd = self.tree.dir(parent) if leaf != b"." else None
        else:
            leaf = None
        is_link = e.mode & 0o170000 == stat.S_IFLNK
        try:
            want_uid, want_gid = self._wanted_owner(e)
            if want_uid != -1 or want_gid != -1:
                owner = (st.st_uid, st.st_gid) if st is not None else new_owner
                if owner is None or (want_uid != -1 and owner[0] != want_uid) or \
                        (want_gid != -1 and owner[1] != want_gid):
                    if fd is not None:
                        os.fchown(fd, want_uid, want_gid)
                    elif leaf == b".":
                        os.fchown(self.tree.rootfd, want_uid, want_gid)
                    else:
                        os.chown(leaf, want_uid, want_gid, dir_fd=dfd, follow_symlinks=False)
            if not is_link and (opts.perms or st is None or opts.executability):
                mode = e.mode & 0o7777
                if not opts.perms:
                    # dest_mode: a new file gets the sender's permission
                    # bits under our umask, an existing one keeps its own
                    # (-E gives or takes its execute bits as the sender's).
                    # A file received into a temp file (st None) replaces
                    # the regular file there, if any, which counts as existing.
                    old = st
                    if st is None and fd is not None and e.is_reg():
                        old = self.tree.lstat(name) if replaced is self._NOT_YET else replaced
                    if old is None or (st is None and not stat.S_ISREG(old.st_mode)):
                        mode = e.mode & 0o777 & ~_umask()
                    else:
                        mode = old.st_mode & 0o7777
                        if opts.executability and e.is_reg():
                            if not e.mode & 0o111:
                                mode &= ~0o111
                            elif not mode & 0o111:
                                mode |= (mode & 0o444) >> 2
                if st is None or (st.st_mode & 0o7777) != mode:
                    if fd is not None:
                        os.fchmod(fd, mode)
                    elif leaf == b".":
                        os.fchmod(self.tree.rootfd, mode)
                    else:
                        os.chmod(leaf, mode, dir_fd=dfd)
            if opts.times and not (opts.omit_dir_times and e.is_dir()) and \
                    not (is_link and opts.omit_link_times):
                ns = e.mtime * 1_000_000_000 + (e.nsec if self.sess.protocol >= 31 else 0)
                # With -c times are set exactly (ATTRS_ACCURATE_TIME), else
                # a time within --modify-window is left alone.
                if st is None or (st.st_mtime_ns != ns if not opts.modify_window or opts.checksum
                                  else not self._same_mtime(e, st)):
                    if fd is not None:
                        os.utime(fd, ns=(ns, ns))
                    elif leaf == b".":
                        os.utime(self.tree.rootfd, ns=(ns, ns))
                    else:
                        os.utime(leaf, ns=(time.time_ns(), ns) if not is_link else (ns, ns),
                                 dir_fd=dfd, follow_symlinks=False)
        except OSError as err:
            self.warn('rsync: [generator] failed to set attributes on "%s": %s' % (_show(name), _errtext(err)))

    def _touch_up_dirs(self):
        """Directory times (which the files made in them changed) and the
        permissions _keep_writable widened, once their contents are written."""
        for e in reversed(self.dir_fix):
            name = self.target(e)
            st = self.tree.lstat(name)
            if st is None or not stat.S_ISDIR(st.st_mode):
                continue
            self._set_attrs(e, name, st)

    def _skipped_leader(self, e):
        """handle_skipped_hlink: when the member of a hard-link group that was
        to be transferred is skipped, the latest member waiting for it is
        generated in its place, and the others wait for that one."""
        waiting = [f for f in self.followers if self.leaders[f.ndx] is e]
        if not waiting:
            return
        new = waiting[-1]
        self.followers = [f for f in self.followers if f is not new]
        del self.leaders[new.ndx]
        for f in waiting[:-1]:
            self.leaders[f.ndx] = new
        self._recv_generator(new, full_sums=False)

    def _finish_hardlinks(self):
        """Links each follower to its group's leader (the first member the
        destination had, else the last in list order, which was transferred),
        walking each group backwards as rsync does."""
        for e in sorted(self.followers, key=lambda f: (self.leaders[f.ndx].ndx, -f.ndx)):
            leader = self.leaders[e.ndx]
            name, lname = self.target(e), self.target(leader)
            st = self.tree.lstat(name)
            lst = self.tree.lstat(lname)
            if lst is None:
                continue
            if st is not None and (st.st_dev, st.st_ino) == (lst.st_dev, lst.st_ino):
                continue
            iflags = self._itemize(e, st, ITEM_LOCAL_CHANGE)
            if not self.opts.dry_run:
                lparent, lleaf = self.tree.split(lname)
                parent, leaf = self.tree.split(name)
                try:
                    lfd = open_dir_beneath(self.tree.rootfd, lparent)
                    try:
                        dfd = self.tree.dir(parent)
                        tmp = _tmpname(leaf)
                        os.link(lleaf, tmp, src_dir_fd=lfd, dst_dir_fd=dfd, follow_symlinks=False)
                        os.rename(tmp, leaf, src_dir_fd=dfd, dst_dir_fd=dfd)
                    finally:
                        os.close(lfd)
                except OSError as err:
                    self.warn('rsync: [generator] link "%s" => %s failed: %s'
                              % (_show(name), _show(lname), _errtext(err)))
                    continue
            self._report(e, iflags, lname)

    def _delete_in_dir(self, d):
        """delete_in_dir: removes what the directory holds and the list does
        not, in reverse name order, never following a symlink."""
        if self.opts.dry_run and self.tree.lstat(self.target(d)) is None:
            return
        prefix = b"" if d.name == b"." else d.name + b"/"
        wanted = self._children(d.name)
        name = self.target(d)
        parts = () if name == b"." else tuple(name.split(b"/"))
        try:
            dfd = self.tree.dir(parts)
        except OSError:
            return
        try:
            names = sorted(os.fsencode(n) for n in os.listdir(dfd))
        except OSError:
            return
        for leaf in reversed(names):
            if leaf in wanted:
                continue
            rel = prefix + leaf
            try:
                st = os.stat(leaf, dir_fd=dfd, follow_symlinks=False)
            except OSError:
                continue
            if self.filters is not None and self.filters.protected(rel, stat.S_ISDIR(st.st_mode)):
                continue
            if self._daemon_excluded(rel, stat.S_ISDIR(st.st_mode)):
                continue
            self._delete_entry(dfd, leaf, rel, st)

    def _children(self, dirname):
        cache = getattr(self, "_child_cache", None)
        if cache is None:
            cache = self._child_cache = {}
            for e in self.entries:
                if e.name == b".":
                    continue
                parent, _, leaf = e.name.rpartition(b"/")
                cache.setdefault(parent or b".", set()).add(leaf)
        return cache.get(dirname, set())

    def _delete_children(self, dfd, leaf, rel):
        """delete_dir_contents: everything below directory `leaf`, deepest
        first, in reverse name order, each reported."""
        sub = os.open(leaf, O_DIR | O_NOFOLLOW, dir_fd=dfd)
        try:
            for child in sorted((os.fsencode(n) for n in os.listdir(sub)), reverse=True):
                try:
                    cst = os.stat(child, dir_fd=sub, follow_symlinks=False)
                except OSError:
                    continue
                self._delete_entry(sub, child, rel + b"/" + child, cst)
        finally:
            os.close(sub)

    def _delete_entry(self, dfd, leaf, rel, st):
        if stat.S_ISDIR(st.st_mode):
            try:
                self._delete_children(dfd, leaf, rel)
            except OSError:
                return
        limit = self.opts.max_delete
        if limit is not None and (limit <= 0 or self.deleted_count >= limit):
            self.skipped_deletes += 1
            return
        self.deleted_count += 1
        kind = 1 if stat.S_ISDIR(st.st_mode) else 2 if stat.S_ISLNK(st.st_mode) else \
            3 if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else \
            4 if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode) else 0
        if not self.opts.dry_run:
            try:
                if stat.S_ISDIR(st.st_mode):
                    os.rmdir(leaf, dir_fd=dfd)
                else:
                    os.unlink(leaf, dir_fd=dfd)
            except OSError as err:
                self.warn('rsync: [generator] delete_file: %s "%s" failed: %s'
                          % ("rmdir" if kind == 1 else "unlink", _show(rel), _errtext(err)))
                return
        self.del_stats[kind] += 1
        self.stats.deleted_files += 1
        self.out("delete", None, 0, rel + (b"/" if kind == 1 else b""))

    # -- the receiver

    def run(self, after_files=None):
        """recv_files, in the calling thread, with the generator alongside;
        then `after_files` (a client reads the sender's stats there) and the
        end of the conversation."""
        self.created = {}
        # Only the generator writes now: the receiving thread must never
        # block on a send (the sender may be blocked sending to us), so its
        # reads no longer flush our output first.
        raw = self.sess.raw
        raw.before_block = None
        gen = threading.Thread(target=self.generate, name="generator", daemon=True)
        gen.start()
        try:
            self._receive()
            self._writes_done()
            if after_files:
                after_files()
            self.to_gen.put(("done",))
            if self.sess.protocol >= 31:
                ndx = self.sess.inp.ndx()
                while ndx == NDX_DEL_STATS:
                    for _ in range(5):
                        self.sess.inp.varint()
                    ndx = self.sess.inp.ndx()
                if ndx != NDX_DONE:
                    raise ProtocolError("Invalid packet at end of run (%d)" % ndx, RERR_PROTOCOL)
                self._pop_expected(NDX_DONE)
                self.to_gen.put(("done",))
        except BaseException:
            self.to_gen.put(("abort",))
            try:
                self.sess.transport.shutdown_write()
            except Exception:
                pass
            raise
        finally:
            if self.writer is not None:
                self.writer.stop()
            gen.join(timeout=10)
        if self.gen_error is not None:
            raise self.gen_error

    def _new_owner(self, parent, fd):
        """The (uid, gid) the files we create in directory `parent` (its wire
        name) get (our
        ids, or the directory's group where it is set-group-ID), learnt from
        the first one with fstat and then remembered; None when no owner
        or group is to be kept."""
        if not ((self.opts.owner and self.am_root) or self.opts.group):
            return None
        owner = self.new_owners.get(parent)
        if owner is None:
            st = os.fstat(fd)
            owner = self.new_owners[parent] = (st.st_uid, st.st_gid)
        return owner

    def _pop_expected(self, ndx):
        with self.expect_cond:
            while not self.expect:
                self.expect_cond.wait()
            want = self.expect.popleft()
        if want[0] == "error":
            raise self.gen_error or RsyncError("generator failed")
        if want[0] != ndx:
            raise ProtocolError("the sender answered index %d where %s was requested"
                                % (ndx, want[0]), RERR_PROTOCOL)
        return want

    def _receive(self):
        sess = self.sess
        p = sess.protocol
        inp = sess.inp
        phase = 0
        max_phase = 2 if p >= 29 else 1
        n = len(self.entries)
        sess.on_no_send = self._no_send
        opts = self.opts
        lean = self.tokens is None and not (opts.inplace or opts.sparse or self.progress)
        whole_messages = lean and p >= 30 and not opts.dry_run and isinstance(inp.src, Demux)
        if whole_messages and opts.perms and self.writer is None:
            lib = _c_writer()
            if lib is not None:
                try:
                    self.writer = Writer(lib)
                except OSError:
                    pass
        while True:
            if whole_messages and self._take_whole_message(n, phase):
                continue
            ndx = inp.ndx()
            if ndx == NDX_DONE:
                self._pop_expected(NDX_DONE)
                phase += 1
                if phase > max_phase:
                    break
                self._writes_done()
                self.to_gen.put(("done",))
                continue
            if ndx == NDX_DEL_STATS:
                for i in range(5):
                    inp.varint()
                continue
            if ndx < 0 or ndx >= n:
                raise ProtocolError("Invalid file index: %d (%d - %d)" % (ndx, NDX_DONE, n - 1),
                                    RERR_PROTOCOL)
            iflags = inp.shortint() if p >= 29 else ITEM_TRANSFER
            xname = None
            if iflags & ITEM_BASIS_TYPE_FOLLOWS:
                raise ProtocolError("unrequested basis type from the sender", RERR_PROTOCOL)
            if iflags & ITEM_XNAME_FOLLOWS:
                xname = inp.vstring()
            want = self._pop_expected(ndx)
            if p < 29:
                iflags = want[1] | ITEM_MISSING_DATA
            elif want[1] != iflags:
                raise ProtocolError("the sender changed the item flags of index %d" % ndx, RERR_PROTOCOL)
            if isinstance(want[2], tuple) and want[2][0] == "xname" and want[2][1] != xname:
                raise ProtocolError("the sender changed the name echoed for index %d" % ndx, RERR_PROTOCOL)
            if xname is not None and not (isinstance(want[2], tuple) and want[2][0] == "xname"):
                raise ProtocolError("unrequested name from the sender for index %d" % ndx, RERR_PROTOCOL)
            e = self.entries[ndx]
            if not iflags & ITEM_TRANSFER:
                self.log_item(e, iflags, xname)
                continue
            if not e.is_reg():
                raise ProtocolError("received request to transfer non-regular file: %d" % ndx,
                                    RERR_PROTOCOL)
            if phase == 2:
                raise ProtocolError("got transfer request in phase 2", RERR_PROTOCOL)
            redoing = phase == 1
            self._count_transfer(e, iflags, redoing)
            if self.opts.dry_run:
                self.out("xfer", e, iflags, None)
                continue
            head = sess.read_sum_head()
            if head != want[2]:
                raise ProtocolError("the sender's sum header for index %d differs from ours" % ndx,
                                    RERR_PROTOCOL)
            if head[0] == 0 and lean and e.size <= self.LEAN_SIZE:
                self._receive_literal(e, iflags, head, redoing)
            else:
                self._receive_file(e, iflags, head, redoing)

    def _no_send(self, ndx):
        """MSG_NO_SEND: the sender could not open a file we asked for."""
        with self.expect_cond:
            for i, w in enumerate(self.expect):
                if w[0] == ndx:
                    del self.expect[i]
                    break

    LEAN_SIZE = 1 << 20

    def _receive_literal(self, e, iflags, head, redoing):
        """_receive_file for the common case, kept lean: a file of up to
        LEAN_SIZE bytes sent whole (no basis blocks) and uncompressed, its
        data written as it comes to a new temp file beside the target,
        then verified, given its attributes and renamed into place."""
        name = self.target(e)
        try:
            dfd, leaf = self.tree.locate(name)
        except OSError:
            return self._receive_file(e, iflags, head, redoing)
        opened = self._open_tmp(dfd, leaf)
        if opened is None:
            return self._receive_file(e, iflags, head, redoing)
        tmp, fd = opened
        sess = self.sess
        src = sess.inp.src
        h = sess.checksums.file_hasher()
        total = 0
        try:
            while True:
                t = src.int32()
                if t <= 0:
                    if t == 0:
                        break
                    raise ProtocolError("block index %d out of range (0 blocks)" % -(t + 1))
                if t > (1 << 24):
                    raise ProtocolError("literal run of %d bytes is too long" % t)
                total += t
                while t:
                    data = src.take(t)
                    t -= len(data)
                    h.update(data)
                    _write_out(fd, data)
            data = None
            self.stats.literal_data += total
            verified = src.read(sess.checksums.xfer_len) == h.digest()
        except BaseException:
            self._drop_tmp(dfd, leaf, tmp, fd, redoing)
            raise
        self._place_tmp(e, iflags, name, dfd, leaf, tmp, fd, verified, redoing)

    def _open_tmp(self, dfd, leaf):
        """A new temp file beside `leaf`: (its name, fd), or None if it
        cannot be made (the general path then reports it)."""
        for _ in range(100):
            tmp = _tmpname(leaf)
            try:
                return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW, 0o600, dir_fd=dfd)
            except FileExistsError:
                continue
            except OSError:
                return None
        return None

    def _drop_tmp(self, dfd, leaf, tmp, fd, redoing):
        """A temp file whose transfer failed: closed, and removed, or with
        --partial (not when redoing) put in the target's place."""
        os.close(fd)
        try:
            if self.opts.partial and not redoing:
                os.rename(tmp, leaf, src_dir_fd=dfd, dst_dir_fd=dfd)
            else:
                os.unlink(tmp, dir_fd=dfd)
        except OSError:
            pass

    def _failed_verification(self, e, name, redoing):
        """A received file whose sum does not match: a warning and a redo
        request, or on the redo itself an error."""
        if redoing:
            self.warn("ERROR: %s failed verification -- update discarded." % _show(name))
        else:
            self.out("error", e, 0, "WARNING: %s failed verification -- update discarded (will try again)."
                     % _show(name))
            self.to_gen.put(("redo", e.ndx))

    def _count_transfer(self, e, iflags, redoing):
        stats = self.stats
        if iflags & ITEM_IS_NEW and not redoing:
            stats.created_files += 1
            self.created["reg"] = self.created.get("reg", 0) + 1
        stats.xferred_files += 1
        stats.total_transferred_size += e.size

    def _place_tmp(self, e, iflags, name, dfd, leaf, tmp, fd, verified, redoing):
        """finish_transfer for a new temp file holding all the data: if its
        sum verified, attributes and the rename into place; else a redo."""
        if not verified:
            self._failed_verification(e, name, redoing)
            self._drop_tmp(dfd, leaf, tmp, fd, redoing)
            return
        try:
            self._set_attrs(e, name, None, fd=fd, new_owner=self._new_owner(name.rpartition(b"/")[0], fd))
            os.rename(tmp, leaf, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            self._drop_tmp(dfd, leaf, tmp, fd, redoing)
            raise
        os.close(fd)
        self.out("xfer", e, iflags, None)

    def _take_whole_message(self, n, phase):
        """The common case of a first copy, in one go: a small file's whole
        message (index, item flags, sum head, literal tokens, file sum) when
        it sits complete in the current input frame, read from the buffer
        in place. Returns False having consumed nothing for anything else,
        which the general path then reads and checks."""
        inp = self.sess.inp
        demux = inp.src
        raw = demux.raw
        start = raw.pos
        stop = start + min(demux.left, raw.end - start)
        if stop - start < 23:
            return False
        buf = raw.buf
        b = buf[start]
        if b == 0 or b >= 0xFE:
            return False
        ndx = inp.prev_positive + b
        iflags = buf[start + 1] | buf[start + 2] << 8
        if ndx >= n or iflags & (ITEM_BASIS_TYPE_FOLLOWS | ITEM_XNAME_FOLLOWS) or not iflags & ITEM_TRANSFER \
                or _SUM_HEAD.unpack_from(buf, start + 3) != _WHOLE:
            return False
        pos = start + 19
        pieces = []
        while True:
            if pos + 4 > stop:
                return False
            t = _I32.unpack_from(buf, pos)[0]
            pos += 4
            if t == 0:
                break
            if t < 0 or t > (1 << 24) or pos + t > stop:
                return False
            pieces.append((pos, t))
            pos += t
        xlen = self.sess.checksums.xfer_len
        e = self.entries[ndx]
        if pos + xlen > stop or e.mode & 0o170000 != stat.S_IFREG or e.size > self.LEAN_SIZE or phase == 2:
            return False
        name = self.target(e)
        try:
            dfd, leaf = self.tree.locate(name)
        except OSError:
            return False
        if self.writer is not None and len(pieces) <= 1:
            with self.expect_cond:
                if not self.expect or self.expect[0] != (ndx, iflags, _WHOLE):
                    return False
                self.expect.popleft()
            demux.left -= pos + xlen - start
            raw.pos = pos + xlen
            inp.prev_positive = ndx
            self._write_behind(e, iflags, name, dfd, leaf,
                               raw.view[pieces[0][0]:pieces[0][0] + pieces[0][1]] if pieces else b"",
                               buf[pos:pos + xlen], phase == 1)
            return True
        opened = self._open_tmp(dfd, leaf)
        if opened is None:
            return False
        tmp, fd = opened
        with self.expect_cond:
            if not self.expect or self.expect[0] != (ndx, iflags, _WHOLE):
                self._drop_tmp(dfd, leaf, tmp, fd, True)
                return False
            self.expect.popleft()
        demux.left -= pos + xlen - start
        raw.pos = pos + xlen
        inp.prev_positive = ndx
        redoing = phase == 1
        self._count_transfer(e, iflags, redoing)
        stats = self.stats
        checksums = self.sess.checksums
        view = raw.view
        try:
            if len(pieces) == 1:
                off, t = pieces[0]
                data = view[off:off + t]
                _write_out(fd, data)
                stats.literal_data += t
                verified = buf[pos:pos + xlen] == checksums.file_digest(data)
                data = None
            else:
                h = checksums.file_hasher()
                for off, t in pieces:
                    h.update(view[off:off + t])
                    _write_out(fd, view[off:off + t])
                    stats.literal_data += t
                verified = buf[pos:pos + xlen] == h.digest()
        except BaseException:
            self._drop_tmp(dfd, leaf, tmp, fd, redoing)
            raise
        self._place_tmp(e, iflags, name, dfd, leaf, tmp, fd, verified, redoing)
        return True

    def _write_behind(self, e, iflags, name, dfd, leaf, data, digest, redoing):
        """A file received whole, verified here and handed to the writer
        thread (or, if it cannot take it, put in place here)."""
        self._count_transfer(e, iflags, redoing)
        self.stats.literal_data += len(data)
        if digest != self.sess.checksums.file_digest(data):
            self._failed_verification(e, name, redoing)
            return
        data = bytes(data)
        uid, gid = self._wanted_owner(e)
        mtime = (e.mtime, e.nsec if self.sess.protocol >= 31 else 0) if self.opts.times else None
        if self.writer.submit(e.ndx, dfd, _tmpname(leaf), leaf, data, uid, gid, e.mode & 0o7777, mtime):
            opened = self._open_tmp(dfd, leaf)
            if opened is None:
                self.warn('rsync: [receiver] mkstemp "%s" failed' % _show(name))
                return
            tmp, fd = opened
            try:
                _write_out(fd, data)
            except BaseException:
                self._drop_tmp(dfd, leaf, tmp, fd, redoing)
                raise
            self._place_tmp(e, iflags, name, dfd, leaf, tmp, fd, True, redoing)
            return
        self.out("xfer", e, iflags, None)

    def _writes_done(self):
        """Waits for the writer thread, and reports what it could not do."""
        if self.writer is None:
            return
        for ndx, stage, err in self.writer.drain():
            name = _show(self.target(self.entries[ndx]))
            why = _errtext(OSError(err, os.strerror(err)))
            if stage == _WR_ATTRS:
                self.warn('rsync: [generator] failed to set attributes on "%s": %s' % (name, why))
            elif stage == _WR_OPEN:
                self.warn('rsync: [receiver] mkstemp "%s" failed: %s' % (name, why))
            elif stage == _WR_WRITE:
                self.warn('rsync: [receiver] write failed on "%s": %s' % (name, why))
            else:
                self.warn('rsync: [receiver] rename into "%s" failed: %s' % (name, why))

    def _receive_file(self, e, iflags, head, redoing):
        """receive_data + finish_transfer for one file."""
        sess, opts = self.sess, self.opts
        count, blength, s2length, remainder = head
        name = self.target(e)
        parent, leaf = self.tree.split(name)
        h = sess.checksums.file_hasher()
        inp = sess.inp
        basis_fd = -1
        basis_mm = None
        fd = -1
        tmp = None
        ok = False
        dfd = -1
        failed = None
        replaced = self._NOT_YET
        try:
            try:
                dfd = self.tree.dir(parent)
                if count:
                    try:
                        basis_fd = os.open(leaf, os.O_RDONLY | O_NOFOLLOW, dir_fd=dfd)
                        bsize = os.fstat(basis_fd).st_size
                        if bsize:
                            basis_mm = rsync_delta.SafeMap(basis_fd, bsize)
                    except OSError:
                        basis_mm = None
                if opts.inplace:
                    if not opts.perms:
                        replaced = self.tree.lstat(name)
                    fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | O_NOFOLLOW, 0o600, dir_fd=dfd)
                else:
                    for _ in range(100):
                        tmp = _tmpname(leaf)
                        try:
                            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW, 0o600,
                                         dir_fd=dfd)
                            break
                        except FileExistsError:
                            continue
            except OSError as err:
                tmp = None
                failed = 'rsync: [receiver] mkstemp "%s" failed: %s' % (_show(name), _errtext(err))
            offset = 0
            copied = 0
            bview = basis_mm.view() if basis_mm is not None else None
            chunk = None
            sparse = opts.sparse and not opts.inplace
            batch = _WriteBatch(fd, inp.src) if failed is None and not opts.inplace and not sparse else None
            zipped = self.tokens
            if zipped is not None:
                zipped.begin_file(max_block=count)
                batch = None
            try:
                while True:
                    if zipped is not None:
                        kind, value = zipped.next()
                        if kind == "end":
                            break
                        if kind == "literal":
                            t = len(value)
                        else:
                            t = -(value + 1)
                    else:
                        if batch is not None:
                            batch.before_read(4)
                        t = inp.int32()
                        if t == 0:
                            break
                    if t > 0:
                        if t > (1 << 24):
                            raise ProtocolError("literal run of %d bytes is too long" % t)
                        left = t
                        while left:
                            if zipped is not None:
                                data, left = value, 0
                            else:
                                if batch is not None:
                                    batch.before_read(1)
                                data = inp.take(left)
                                left -= len(data)
                            if failed is None:
                                h.update(data)
                                if batch is not None:
                                    batch.add(data)
                                elif opts.inplace:
                                    os.pwrite(fd, data, offset)
                                elif sparse:
                                    _write_sparse(fd, data)
                                else:
                                    _write_out(fd, data)
                            offset += len(data)
                        data = value = None
                        self.stats.literal_data += t
                    else:
                        i = -(t + 1)
                        if i >= count:
                            raise ProtocolError("block index %d out of range (%d blocks)" % (i, count))
                        start = i * blength
                        blen = remainder if (i == count - 1 and remainder) else blength
                        if failed is not None:
                            if zipped is not None and bview is not None and start + blen <= len(bview):
                                zipped.block_data(bview[start:start + blen])
                            elif zipped is not None:
                                zipped.block_data(bytes(blen))
                            offset += blen
                            continue
                        if bview is None or start + blen > len(bview):
                            raise ProtocolError("the basis file changed during the transfer", RERR_FILEIO)
                        chunk = bview[start:start + blen]
                        h.update(chunk)
                        copied += blen
                        if copied >= DROP_EVERY:
                            copied = 0
                            _drop_pages(basis_mm.buf, 0, len(bview))
                        if zipped is not None:
                            zipped.block_data(chunk)
                        if batch is not None:
                            batch.add(chunk)
                        elif opts.inplace:
                            if start != offset:
                                os.pwrite(fd, chunk, offset)
                        elif sparse:
                            _write_sparse(fd, chunk)
                        else:
                            _write_out(fd, chunk)
                        offset += blen
                        self.stats.matched_data += blen
                    if self.progress:
                        self.progress(e, offset)
                if batch is not None:
                    batch.flush()
            finally:
                chunk = None
                if batch is not None:
                    batch.pending = None
                if bview is not None:
                    bview.release()
            digest = inp.read(sess.checksums.xfer_len)
            if failed is not None:
                self.warn(failed)
                return
            if opts.inplace or sparse:
                os.ftruncate(fd, offset)
            if digest != h.digest():
                self._failed_verification(e, name, redoing)
                return
            self._set_attrs(e, name, None, fd=fd,
                            new_owner=None if opts.inplace else self._new_owner(name.rpartition(b"/")[0], fd),
                            replaced=replaced)
            if not opts.inplace:
                os.rename(tmp, leaf, src_dir_fd=dfd, dst_dir_fd=dfd)
                tmp = None
            ok = True
            self.out("xfer", e, iflags, None)
        finally:
            if basis_mm is not None:
                basis_mm.close()
            if basis_fd >= 0:
                os.close(basis_fd)
            if fd >= 0:
                os.close(fd)
            if tmp is not None:
                try:
                    if opts.partial and not ok and not redoing:
                        os.rename(tmp, leaf, src_dir_fd=dfd, dst_dir_fd=dfd)
                    else:
                        os.unlink(tmp, dir_fd=dfd)
                except OSError:
                    pass


def unsafe_symlink(target, name):
    """unsafe_symlink: an absolute target, or one whose ".." climb above the
    top of the transfer from where the link sits."""
    if not target or target.startswith(b"/"):
        return True
    depth = name.count(b"/")
    for part in target.split(b"/"):
        if part == b"..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in (b"", b"."):
            depth += 1
    return False




def _kind(e):
    """The kind of an entry, as rsync's stats count them."""
    return "dir" if e.is_dir() else "link" if e.is_link() else "dev" if _is_device(e.mode) \
        else "special" if _is_special(e.mode) else "reg"


_KIND_WORDS = {"dir": "directory", "link": "symlink", "dev": "device file", "special": "special file",
               "reg": "regular file"}

_ZEROS = bytes(1 << 16)


_SPARSE_PIECE = 1024


def _write_sparse(fd, data):
    """--sparse as rsync's write_sparse does it, a KiB at a time: the zeros
    that end one piece and begin another are seeked over, not written, so a
    run of zeros spanning whole pieces leaves a hole."""
    mv = memoryview(data).cast("B")
    n = len(mv)
    piece, zeros = _SPARSE_PIECE, _ZEROS
    first = bytes(mv[:piece])
    out = len(first) - len(first.lstrip(b"\0"))  # mv[out:] is not written or seeked over yet
    if out:
        os.lseek(fd, out, os.SEEK_CUR)
    i = 0
    while i < n:
        window = bytes(mv[i:i + len(zeros)])
        at = window.find(zeros[:piece]) if len(window) >= piece else -1
        while at >= 0 and at % piece:
            at = window.find(zeros[:piece], at - at % piece + piece)
        if at < 0:
            i += len(window)
            continue
        i += at
        j = i + piece
        while j < n:
            w = bytes(mv[j:j + len(zeros)])
            if w == zeros[:len(w)]:
                j += len(w)
                continue
            nz = len(w) - len(w.lstrip(b"\0"))
            j += nz - nz % piece  # the whole pieces of zeros only
            break
        j = min(j, n)
        before = max(out, i - piece)
        start = before + len(bytes(mv[before:i]).rstrip(b"\0"))
        after = bytes(mv[j:j + piece])
        end = j + len(after) - len(after.lstrip(b"\0"))
        if start > out:
            _write_out(fd, mv[out:start])
        os.lseek(fd, end - start, os.SEEK_CUR)
        out = end
        i = j
    if out < n:
        last = bytes(mv[max(out, n - piece):])
        end = n - (len(last) - len(last.rstrip(b"\0")))
        _write_out(fd, mv[out:end])
        os.lseek(fd, n - end, os.SEEK_CUR)


def _write_out(fd, data):
    mv = memoryview(data)
    while mv:
        n = os.write(fd, mv)
        mv = mv[n:]


class _WriteBatch:
    """Collects views of received data and writes them with one writev, as
    long as the input buffer they point into has not been refilled."""

    LIMIT = 1 << 20

    def __init__(self, fd, src):
        self.fd = fd
        self.src = src
        self.pending = []
        self.size = 0

    def before_read(self, n):
        if self.pending and self.src.pending() < n:
            self.flush()

    def add(self, view):
        self.pending.append(view)
        self.size += len(view)
        if self.size >= self.LIMIT or len(self.pending) >= 512:
            self.flush()

    def flush(self):
        if len(self.pending) == 1:
            _write_out(self.fd, self.pending[0])
        else:
            write_all_vectored(functools.partial(os.writev, self.fd), self.pending)
        self.pending = []
        self.size = 0


_UMASK = None


def _umask():
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


# ----------------------------------------------------------------------------
# The receiving server (main.c do_server_recv) and where received files go.


def open_destination(basefd, dest, entries, confined, created=None):
    """get_local_name: a lone non-directory sent to a name that is not a
    directory is written under that name; otherwise the destination is a
    directory, created (one level) when missing. Returns (dirfd, local_name);
    `created(path)` is told when the directory had to be made."""
    if isinstance(dest, str):
        dest = os.fsencode(dest)
    parts = split_path(dest) if confined else None

    def full_fname(path):
        """A name in a message, from / outside a module, as rsync shows it."""
        return path if confined or path.startswith(b"/") else os.path.join(os.getcwd().encode(), path)
    if confined and dest.startswith(b"/"):
        dest = dest.lstrip(b"/")

    def lookup():
        try:
            if confined:
                if not parts:
                    return os.stat(basefd)
                pfd = open_dir_beneath(basefd, parts[:-1])
                try:
                    return os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False)
                finally:
                    os.close(pfd)
            return os.stat(dest or b".", dir_fd=basefd)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise RsyncError('rsync: [Receiver] ERROR: cannot stat destination "%s": %s'
                             % (_show(full_fname(dest)), _errtext(e)), RERR_FILESELECT) from None

    def open_dir():
        if confined:
            return open_dir_beneath(basefd, parts)
        return os.open(dest or b".", O_DIR, dir_fd=basefd)

    st = lookup()
    if st is not None and stat.S_ISDIR(st.st_mode):
        return open_dir(), None
    solo = len(entries) == 1 and not entries[0].is_dir()
    if st is not None and not solo:
        raise RsyncError("ERROR: destination must be a directory when copying more than 1 file",
                         RERR_FILESELECT)
    if solo and not dest.endswith(b"/"):
        if confined:
            if not parts:
                raise RsyncError("ERROR: cannot write a file over the module's root", RERR_FILESELECT)
            return open_dir_beneath(basefd, parts[:-1]), parts[-1]
        head, _, leaf = dest.rstrip(b"/").rpartition(b"/")
        return os.open(head or (b"/" if dest.startswith(b"/") else b"."), O_DIR, dir_fd=basefd), leaf
    try:
        if confined:
            pfd = open_dir_beneath(basefd, parts[:-1])
            try:
                os.mkdir(parts[-1], 0o777, dir_fd=pfd)
            finally:
                os.close(pfd)
        else:
            os.mkdir(dest, 0o777, dir_fd=basefd)
    except OSError as e:
        raise RsyncError('rsync: [Receiver] mkdir "%s" failed: %s'
                         % (_show(full_fname(dest.rstrip(b"/") or b"/")), _errtext(e)), RERR_FILEIO) from None
    if entries and entries[0].name == b".":
        entries[0].flags |= FLAG_DIR_CREATED
    if created:
        created(dest.rstrip(b"/") or b"/")
    return open_dir(), None


def recv_file_list(sess, check=None, between=None):
    """recv_file_list: entries (sorted, with indexes), the list as it came,
    and the sender's user and group names."""
    opts = sess.opts
    dec = FlistDecoder(sess.inp, opts, sess.protocol, sess.xfer_flags_as_varint,
                       sess.checksums.file_len, sess.id0_names)
    start = sess.raw.total
    dec.recv_entries(check, between)
    users, groups = ({}, {}) if opts.numeric_ids else dec.recv_id_lists()
    io_error = dec.io_error
    if sess.protocol < 30:
        io_error |= sess.inp.int32()
    sess.remote_io_error |= io_error
    unsorted = list(dec.entries)
    entries = list(dec.entries)
    sort_file_list(entries, sess.protocol)
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        seen = set()
        for name in names:
            if name in seen:
                raise ProtocolError("duplicate name in file list: %s" % _show(name), RERR_PROTOCOL)
            seen.add(name)
    sess.stats.flist_size = sess.raw.total - start
    return entries, unsorted, users, groups


def list_line(e, size_text, width, show, links):
    """list_file_entry: mode, size (SIZE_TEXT right-aligned in WIDTH), mtime
    and the name (through SHOW), with a link's target when links are kept."""
    line = "%s %*s %s %s" % (stat.filemode(e.mode), width, size_text,
                             time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(e.mtime)), show(e.name))
    if links and e.is_link():
        line += " -> " + show(e.link or b"")
    return line


def serve_receiver(sess, paths, root, confined, filters, log, daemon_filters=None):
    """do_server_recv: the sender's list, then generator and receiver writing
    below the destination; errors and deletions are reported to the client."""
    opts = sess.opts
    dest = paths[1] if len(paths) > 1 else "."
    entries, unsorted, users, groups = recv_file_list(sess)
    if not entries:
        return 0
    rootfd = os.open(root, O_DIR)

    def created(path):
        log("created directory %s" % _show(path))
        if opts.verbose or "%i" in (opts.log_format or ""):
            sess.send_text(MSG_INFO, "created directory %s" % _show(path))
    try:
        if opts.list_only:  # nothing is asked for or written, not even the destination
            destfd, local_name = os.dup(rootfd), None
        else:
            destfd, local_name = open_destination(rootfd, dest, entries, confined, created)
    finally:
        os.close(rootfd)
    p = sess.protocol

    def send(tag, text):
        """A message line to the client: the generator writes, the receiving
        thread leaves it for the generator to write."""
        text = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
        text = text if text.endswith(b"\n") else text + b"\n"
        if threading.current_thread().name == "generator":
            sess.out.msg(tag, text)
        else:
            sess.out.msg_later(tag, text)

    def out(kind, e, iflags, extra):
        if kind in ("error", "warning"):
            log(extra)
            tag = MSG_ERROR_XFER if kind == "error" else MSG_WARNING
            if p < 30:
                tag = MSG_ERROR_XFER if kind == "error" else MSG_INFO
            send(tag, extra)
        elif kind == "list":
            send(MSG_INFO, list_line(e, "{:,}".format(e.size), 14,
                                     lambda b: b.decode("utf-8", "surrogateescape"), opts.links))
        elif kind == "skip" and opts.verbose >= iflags and not opts.quiet:
            send(MSG_INFO, extra)
        elif kind == "delete" and p >= 29:
            name = extra[:-1] + b"\0" if extra.endswith(b"/") else extra
            sess.out.msg(MSG_DELETED, name[:MAX_PATH])
    receiver = Receiver(sess, entries, unsorted, destfd, local_name, filters, out=out)
    if daemon_filters is not None:
        prefix = b"/".join(split_path(os.fsencode(dest))) + b"/" if split_path(os.fsencode(dest)) else b""
        receiver.daemon_filters = daemon_filters
        receiver.daemon_prefix = prefix
    receiver.map_ids(users, groups)
    try:
        receiver.run()
    finally:
        receiver.tree.close()
        os.close(destfd)
    sess.out.flush()
    log("received %d files, %d bytes of data" % (sess.stats.xferred_files,
                                                  sess.stats.literal_data + sess.stats.matched_data))
    code = 0
    if receiver.io_error & IOERR_DEL_LIMIT:
        code = RERR_DEL_LIMIT
    if receiver.io_error & IOERR_GENERAL:
        code = RERR_PARTIAL
    return code
