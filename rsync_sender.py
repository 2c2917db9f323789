"""The sending side: the file list from the sender's arguments, then each
file the generator asks for.

On the wire the sender first writes the file list (flist encoding in
rsync_flist.FlistEncoder), then loops: it reads an index and item flags from the
generator, for a transfer also the block-sum header and the sums of the
receiver's basis file, and answers with the same index and flags, the sum
header, the tokens (literal runs and matched block numbers, or compressed
tokens) and the whole-file checksum. NDX_DONE ends each phase; the server
sender then writes its stats and reads the generator's goodbye.
"""

import errno
import os
import stat
import struct
import sys
import time

import rsync_delta
from rsync import (
    CHUNK_SIZE,
    DROP_EVERY,
    DirCache,
    FNAMECMP_FNAME,
    IOERR_GENERAL,
    IOERR_VANISHED,
    ITEM_IS_NEW,
    ITEM_TRANSFER,
    MAX_PATH,
    MSG_ERROR_XFER,
    MSG_INFO,
    MSG_NO_SEND,
    MSG_WARNING,
    NDX_DEL_STATS,
    NDX_DONE,
    O_DIR,
    O_NOATIME,
    O_NOFOLLOW,
    ProtocolError,
    RERR_FILESELECT,
    RERR_PROTOCOL,
    RERR_SYNTAX,
    RsyncError,
    _compress,
    _drop_pages,
    _errtext,
    _group_name,
    _show,
    _I32,
    _user_name,
    open_dir_beneath,
    split_path,
)
from rsync_flist import (
    FLAG_CONTENT_DIR,
    FLAG_MOUNT_DIR,
    FLAG_TOP_DIR,
    FileEntry,
    FlistEncoder,
    _is_device,
    _is_special,
    sort_file_list,
)

_ZERO_TOKEN = _I32.pack(0)
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


class Base:
    """A directory the sender sends from (the part of an argument before its
    last component), held open by descriptor."""

    def __init__(self, fd, shown):
        self.fd = fd
        self.shown = shown
        self.dirs = DirCache(fd)

    def open_file(self, rel, noatime=False):
        parts = rel.split(b"/")
        dfd = self.dirs.get(parts[:-1])
        flags = os.O_RDONLY | O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | os.O_NONBLOCK
        if noatime and O_NOATIME:
            try:
                return os.open(parts[-1], flags | O_NOATIME, dir_fd=dfd)
            except PermissionError:
                pass
        return os.open(parts[-1], flags, dir_fd=dfd)

    def close(self):
        self.dirs.close()
        os.close(self.fd)



class FileListBuilder:
    """send_file_list: turns the sender's arguments into sorted entries.

    `root` is the directory the arguments are relative to (a module, or the
    current directory over a remote shell); `confined` refuses symlinks in the
    arguments' own paths, as a daemon must. Errors on single files are
    reported through `warn(tag, text)` and set `io_error`, and the rest of the
    tree is still listed."""

    def __init__(self, opts, protocol, rootfd, confined, filters=None, warn=None,
                 file_checksum=None, root_shown="", daemon_filters=None, module=None):
        self.opts = opts
        self.protocol = protocol
        self.rootfd = rootfd
        self.confined = confined
        self.filters = filters
        self.warn = warn or (lambda tag, text: None)
        self.file_checksum = file_checksum
        self.root_shown = root_shown
        self.module = module
        self.daemon_filters = daemon_filters
        self.entries = []
        self.bases = []
        self.io_error = 0
        self.users = {}
        self.groups = {}
        self.filesystem_dev = None

    def _excluded(self, name, is_dir):
        if self.daemon_filters is not None and self._daemon_excluded(name, is_dir):
            return True
        return self.filters is not None and self.filters.excluded(name, is_dir)

    def _daemon_excluded(self, name, is_dir):
        """The module's own rules match the path inside the module."""
        return self.daemon_filters.excluded(self._module_path(name), is_dir)

    def _module_path(self, name):
        prefix = getattr(self, "_prefix", b"")
        return prefix + name if prefix else name

    def add_arg(self, arg):
        """One argument, with rsync's trailing-slash and "." semantics."""
        if isinstance(arg, str):
            arg = os.fsencode(arg)
        if arg.startswith(b"/") and self.confined:
            arg = arg.lstrip(b"/")
        if not arg or arg.endswith(b"/"):
            dotdir = True
            head, fn = arg.rstrip(b"/"), b"."
        else:
            head, _, fn = arg.rpartition(b"/")
            if fn == b"..":
                raise RsyncError("path contains '..': %s" % _show(arg), RERR_FILESELECT)
            dotdir = fn == b"."
        absolute = arg.startswith(b"/")
        try:
            if self.confined:
                fd = open_dir_beneath(self.rootfd, split_path(head))
            else:
                path = head if head or not absolute else b"/"
                fd = os.open(path or b".", O_DIR, dir_fd=self.rootfd if not absolute else None)
        except OSError as e:
            self.io_error |= IOERR_GENERAL
            self.warn(MSG_ERROR_XFER, 'rsync: [sender] change_dir %s failed: %s'
                      % (self._where(head), _errtext(e)))
            return
        base = Base(fd, self._shown(head))
        self.bases.append(base)
        self._prefix = b"/".join(split_path(head)) + b"/" if self.confined and split_path(head) else b""
        try:
            st = os.stat(fn, dir_fd=fd, follow_symlinks=dotdir or self.opts.copy_links)
        except OSError as e:
            if e.errno != errno.ENOENT:
                self.io_error |= IOERR_GENERAL
            self.warn(MSG_ERROR_XFER, 'rsync: [sender] link_stat %s failed: %s'
                      % (self._where(head + b"/" + fn if head else fn), _errtext(e)))
            return
        name = fn
        if self.daemon_filters is not None and self._arg_daemon_excluded(head, fn, st):
            self.warn(MSG_ERROR_XFER, 'rsync: [sender] link_stat %s failed: No such file or directory (2)'
                      % self._where(head + b"/" + fn if head else fn))
            return
        if not dotdir and self._excluded(name, stat.S_ISDIR(st.st_mode)):
            return
        if stat.S_ISDIR(st.st_mode) and not (self.opts.recurse or self.opts.dirs):
            self.warn(MSG_INFO, "skipping directory %s" % _show(name))
            return
        if self.opts.one_file_system:
            self.filesystem_dev = st.st_dev
        if self.opts.recurse or (self.opts.dirs and dotdir):
            flags = FLAG_TOP_DIR | FLAG_CONTENT_DIR
        else:
            flags = 0
        e = self._make(name, st, base, name if name != b"." else b"", fd, fn, flags)
        if e is None:
            return
        if stat.S_ISDIR(st.st_mode) and (self.opts.recurse or (self.opts.dirs and dotdir)):
            try:
                dfd = os.open(fn, O_DIR | (0 if dotdir else O_NOFOLLOW), dir_fd=fd)
            except OSError as err:
                self.io_error |= IOERR_GENERAL
                self.warn(MSG_ERROR_XFER, 'rsync: [sender] opendir %s failed: %s'
                          % (self._where(name), _errtext(err)))
                return
            parts = None
            if self.confined:
                parts = tuple(split_path(head)) + (() if dotdir else (fn,))
            self._walk(dfd, base, b"" if name == b"." else name, parts)

    def _arg_daemon_excluded(self, head, fn, st):
        """path_is_daemon_excluded: a requested path inside an excluded
        directory (or excluded itself) is treated as missing."""
        parts = split_path(head) + ([fn] if fn != b"." else [])
        for i in range(1, len(parts) + 1):
            is_dir = i < len(parts) or stat.S_ISDIR(st.st_mode)
            if self.daemon_filters.excluded(b"/".join(parts[:i]), is_dir):
                return True
        return False

    def _where(self, path):
        """full_fname: the quoted name, and in a daemon the module it is in."""
        return '"%s"%s' % (_show(self._shown(path)), " (in %s)" % self.module if self.module else "")

    def _shown(self, path):
        if self.root_shown:
            return os.fsencode(self.root_shown).rstrip(b"/") + b"/" + path if path else os.fsencode(self.root_shown)
        return path

    def _make(self, name, st, base, rel, dirfd, leaf, flags):
        """make_file: an entry from a stat result, or None if it is skipped."""
        opts = self.opts
        mode = st.st_mode
        fmt = mode & 0o170000
        e = FileEntry(name, mode, st.st_size, *divmod(st.st_mtime_ns, 1_000_000_000), st.st_uid, st.st_gid)
        e.flags = flags if fmt == stat.S_IFDIR else flags & ~FLAG_CONTENT_DIR
        if opts.owner and not opts.numeric_ids:
            u = self.users.get(st.st_uid, 0)
            if u == 0:
                u = self.users[st.st_uid] = _user_name(st.st_uid)
            e.user = u
        if opts.group and not opts.numeric_ids:
            g = self.groups.get(st.st_gid, 0)
            if g == 0:
                g = self.groups[st.st_gid] = _group_name(st.st_gid)
            e.group = g
        if fmt == stat.S_IFREG or fmt == stat.S_IFDIR:
            pass
        elif fmt == stat.S_IFLNK:
            try:
                e.link = os.fsencode(os.readlink(leaf, dir_fd=dirfd))
            except OSError as err:
                self.io_error |= IOERR_GENERAL
                self.warn(MSG_ERROR_XFER, 'rsync: [sender] readlink %s failed: %s'
                          % (self._where(name), _errtext(err)))
                return None
            if opts.links and not e.link:
                self.io_error |= IOERR_GENERAL
                self.warn(MSG_ERROR_XFER, "skipping symlink with 0-length value: %s" % _show(name))
                return None
        elif _is_device(mode):
            e.rdev_major, e.rdev_minor = os.major(st.st_rdev), os.minor(st.st_rdev)
            e.size = 0
        elif _is_special(mode):
            e.size = 0
        if opts.hard_links and (not stat.S_ISDIR(mode) and st.st_nlink > 1 if self.protocol >= 28
                                else stat.S_ISREG(mode)):
            e.hl_dev, e.hl_ino = st.st_dev, st.st_ino
        e.src = (base, rel or leaf)
        if opts.checksum and stat.S_ISREG(mode) and self.file_checksum:
            try:
                fd = base.open_file(e.src[1])
                try:
                    e.sum = self.file_checksum(fd, st.st_size)
                finally:
                    os.close(fd)
            except OSError:
                e.sum = None
        self.entries.append(e)
        return e

    def _lost(self, name, err, what):
        """A file that vanished while the list was made (exit 24 at the end),
        or one that could not be read (23); the walk goes on."""
        if isinstance(err, FileNotFoundError):
            self.io_error |= IOERR_VANISHED
            self.warn(MSG_WARNING, "file has vanished: %s" % _show(self._shown(name)))
        else:
            self.io_error |= IOERR_GENERAL
            self.warn(MSG_ERROR_XFER, "rsync: [sender] %s failed: %s"
                      % (what % _show(self._shown(name)), _errtext(err)))

    def _walk(self, dfd, base, prefix, parts=None):
        """send_directory: lists dfd (which it closes), then descends into
        each subdirectory, with the per-directory filter files of each level
        in force while its entries are checked."""
        opts = self.opts
        state = None
        try:
            if self.filters is not None:
                state = self.filters.enter_dir(prefix, self._merge_reader(dfd, parts))
            subdirs = []
            try:
                listing = list(os.scandir(dfd))
            except OSError as err:
                self.io_error |= IOERR_GENERAL
                self.warn(MSG_ERROR_XFER, 'rsync: [sender] opendir %s failed: %s'
                          % (self._where(prefix), _errtext(err)))
                return
            for de in listing:
                leaf = de.name.encode(_FS_ENCODING, _FS_ERRORS)
                name = prefix + b"/" + leaf if prefix else leaf
                if len(name) >= MAX_PATH:
                    self.io_error |= IOERR_GENERAL
                    self.warn(MSG_ERROR_XFER, "filename overflows max-path len: %s" % _show(name))
                    continue
                try:
                    st = os.stat(leaf, dir_fd=dfd, follow_symlinks=False)
                except OSError as err:
                    self._lost(name, err, 'readlink_stat("%s")')
                    continue
                is_dir = stat.S_ISDIR(st.st_mode)
                flags = FLAG_CONTENT_DIR if opts.recurse else 0
                if is_dir:
                    if not (opts.recurse or opts.dirs):
                        continue
                    if opts.one_file_system and st.st_dev != self.filesystem_dev:
                        if opts.one_file_system > 1:
                            continue
                        flags = FLAG_MOUNT_DIR
                if self._excluded(name, is_dir):
                    continue
                e = self._make(name, st, base, name, dfd, leaf, flags)
                if e is not None and is_dir and opts.recurse and not flags & FLAG_MOUNT_DIR:
                    subdirs.append((leaf, name))
            for leaf, name in subdirs:
                try:
                    sfd = os.open(leaf, O_DIR | O_NOFOLLOW, dir_fd=dfd)
                except OSError as err:
                    self._lost(name, err, 'opendir "%s"')
                    continue
                self._walk(sfd, base, name, None if parts is None else parts + (leaf,))
        finally:
            if state is not None:
                self.filters.leave_dir(state)
            os.close(dfd)

    MAX_MERGE_FILE = 1 << 20

    def _merge_reader(self, dfd, parts):
        """Reads a per-directory filter file in dfd (or, for the parent scan
        of a "/" dir-merge rule, in a parent that is still below the root)."""
        def read(name):
            ups = 0
            while name.startswith(b"../"):
                name, ups = name[3:], ups + 1
            if b"/" in name or not name:
                return None
            try:
                if ups:
                    if parts is None or ups > len(parts):
                        return None
                    pfd = open_dir_beneath(self.rootfd, parts[:len(parts) - ups])
                else:
                    pfd = os.dup(dfd)
                try:
                    fd = os.open(name, os.O_RDONLY | O_NOFOLLOW | os.O_NONBLOCK, dir_fd=pfd)
                finally:
                    os.close(pfd)
            except OSError:
                return None
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    return None
                return os.read(fd, self.MAX_MERGE_FILE)
            finally:
                os.close(fd)
        return read

    def finish(self):
        """Sorts the list as the receiver will; indexes refer to this order."""
        sort_file_list(self.entries, self.protocol)
        return self.entries

    def close(self):
        for b in self.bases:
            b.close()
        self.bases = []


# ----------------------------------------------------------------------------
# The sender (sender.c, match.c): answers each request of the receiver's
# generator with the file's data, as literal runs and copies of the
# receiver's own blocks, followed by the whole-file checksum.


class Sender:
    """Runs the sending side of a session over a sorted file list."""

    BATCH = 1 << 20

    def __init__(self, sess, entries, warn, out=None, progress=None):
        self.sess = sess
        self.entries = entries
        self.warn = warn
        self.out = out or (lambda kind, e, iflags, extra: None)
        self.progress = progress
        self.inplace = sess.opts.inplace
        self._buf = None
        self.tokens = None
        if sess.compression:
            self.tokens = _compress().TokenWriter(sess.compression, sess.out.write,
                                                     level=sess.compress_level, protocol=sess.protocol)
            self.skip = _compress().skip_compress_rules(sess.opts.skip_compress, None,
                                                           daemon=sess.opts.daemon)

    def send_file_list(self, builder_io_error, build_ms):
        """The list, its end marker with the io_error, the id lists."""
        sess, opts = self.sess, self.sess.opts
        t0 = time.monotonic()
        start = sess.out.total + len(sess.out.buf)
        enc = FlistEncoder(sess.out, opts, sess.protocol, sess.xfer_flags_as_varint,
                           sess.checksums.file_len)
        st = sess.stats
        enc.send_all(self.entries)
        io_error = 0 if opts.ignore_errors else builder_io_error
        sess.io_error |= io_error
        enc.end(io_error, sess.use_safe_flist)
        if not opts.numeric_ids:
            enc.send_id_lists(sess.id0_names)
        if sess.protocol < 30:
            sess.out.int32(io_error)
        elif not sess.use_safe_flist and io_error:
            sess.send_io_error()
        sess.out.flush()
        st.total_size = enc.total_size
        st.flist_buildtime = max(build_ms, 1)
        st.flist_xfertime = int((time.monotonic() - t0) * 1000)
        st.flist_size = sess.out.total - start

    def send_files(self):
        """The request loop: phase 0 (files), 1 (redo), and from 29 phase 2."""
        sess = self.sess
        p = sess.protocol
        phase = 0
        max_phase = 2 if p >= 29 else 1
        n = len(self.entries)
        save_io_error = sess.io_error
        while True:
            ndx, iflags, basis, xname = sess.read_ndx_and_attrs(n)
            if ndx == NDX_DONE:
                phase += 1
                if phase > max_phase:
                    break
                sess.out.ndx(NDX_DONE)
                continue
            if ndx == NDX_DEL_STATS:
                sess.del_stats = iflags
                if sess.am_server:
                    sess.out.ndx(NDX_DEL_STATS)
                    for v in iflags:
                        sess.out.varint(v)
                continue
            e = self.entries[ndx]
            if not iflags & ITEM_TRANSFER:
                sess.write_ndx_and_attrs(ndx, iflags, basis, xname)
                if iflags & ITEM_IS_NEW:
                    sess.stats.created_files += 1
                self.out("item", e, iflags, xname)
                continue
            if not e.is_reg():
                raise ProtocolError("received request to transfer non-regular file: %d" % ndx,
                                    RERR_PROTOCOL)
            if phase == 2:
                raise ProtocolError("got transfer request in phase 2", RERR_PROTOCOL)
            sess.stats.xferred_files += 1
            sess.stats.total_transferred_size += e.size
            if iflags & ITEM_IS_NEW and not e.sent:
                sess.stats.created_files += 1
            if sess.opts.dry_run:
                sess.write_ndx_and_attrs(ndx, iflags, basis, xname)
                self.out("xfer", e, iflags, None)
                continue
            count, blength, s2length, remainder = sess.read_sum_head()
            sum1s, sum2s = sess.read_sums(count, s2length) if count else (None, None)
            updating_basis = self.inplace and (basis == FNAMECMP_FNAME if p >= 29 else True)
            self.send_one(e, ndx, iflags, basis, xname, (count, blength, s2length, remainder),
                          sum1s, sum2s, updating_basis)
        if sess.io_error != save_io_error and p >= 30:
            sess.send_io_error()
        sess.out.ndx(NDX_DONE)
        sess.out.flush()

    def send_one(self, e, ndx, iflags, basis, xname, head, sum1s, sum2s, updating_basis):
        sess = self.sess
        base, rel = e.src
        try:
            fd = base.open_file(rel, sess.opts.open_noatime)
        except OSError as err:
            if err.errno == errno.ENOENT:
                sess.io_error |= IOERR_VANISHED
                self.warn(MSG_WARNING, "file has vanished: %s" % _show(e.name))
            else:
                sess.io_error |= IOERR_GENERAL
                self.warn(MSG_ERROR_XFER, 'rsync: [sender] send_files failed to open "%s": %s'
                          % (_show(e.name), _errtext(err)))
            if sess.protocol >= 30:
                sess.out.msg(MSG_NO_SEND, struct.pack("<i", ndx))
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                sess.io_error |= IOERR_GENERAL
                self.warn(MSG_ERROR_XFER, "rsync: [sender] %s is no longer a regular file" % _show(e.name))
                if sess.protocol >= 30:
                    sess.out.msg(MSG_NO_SEND, struct.pack("<i", ndx))
                return
            sess.write_ndx_and_attrs(ndx, iflags, basis, xname)
            sess.write_sum_head(*head)
            count = head[0]
            if self.tokens is not None:
                self.tokens.begin_file(compress=not self.skip(e.name.rsplit(b"/", 1)[-1]))
            if count == 0 or st.st_size == 0:
                short = self._send_whole(fd, st.st_size)
            else:
                short = self._send_delta(fd, st.st_size, head, sum1s, sum2s, updating_basis)
            if short:
                sess.io_error |= IOERR_GENERAL
                self.warn(MSG_ERROR_XFER, 'rsync: [sender] read errors mapping "%s": %s'
                          % (_show(e.name), short))
            e.sent = True
            self.out("xfer", e, iflags, None)
        finally:
            os.close(fd)

    SMALL = 1 << 16

    def _send_whole(self, fd, size):
        """All literal: the file read in large slices, cut into 32 KiB tokens.
        A file that shrank while read is padded with zeros, as rsync does."""
        if size <= self.SMALL and self.tokens is None:
            return self._send_small(fd, size)
        sess = self.sess
        h = sess.checksums.file_hasher()
        if self._buf is None:
            self._buf = bytearray(self.BATCH)
        buf = self._buf
        mv = memoryview(buf)
        left = size
        short = None
        while left > 0:
            want = min(left, len(buf))
            got = 0
            while got < want:
                try:
                    n = os.readv(fd, [mv[got:want]])
                except BlockingIOError:
                    # Opened with O_NONBLOCK (against a FIFO swapped in);
                    # local files ignore it, some network ones may not.
                    os.set_blocking(fd, True)
                    continue
                if n <= 0:
                    short = "file shrank while being sent"
                    mv[got:want] = bytes(want - got)
                    got = want
                    break
                got += n
            chunk = mv[:want]
            h.update(chunk)
            if self.tokens is not None:
                self.tokens.literal(chunk)
            else:
                self._write_literals(chunk)
            sess.stats.literal_data += want
            left -= want
        self._end_tokens()
        sess.out.write(h.digest())
        return short

    def _send_small(self, fd, size):
        """_send_whole for a small file, uncompressed: read at once, and its
        tokens, end mark and file sum handed to the output in one call."""
        sess = self.sess
        data = b""
        short = None
        while len(data) < size:
            try:
                got = os.read(fd, size - len(data))
            except BlockingIOError:
                os.set_blocking(fd, True)
                continue
            if not got:
                short = "file shrank while being sent"
                data += bytes(size - len(data))
                break
            data += got
        h = sess.checksums.file_hasher()
        h.update(data)
        parts = []
        for i in range(0, size, CHUNK_SIZE):
            piece = data[i:i + CHUNK_SIZE]
            parts.append(_I32.pack(len(piece)))
            parts.append(piece)
        parts.append(_ZERO_TOKEN)
        parts.append(h.digest())
        sess.out.write_parts(parts)
        sess.stats.literal_data += size
        return short

    def _end_tokens(self):
        if self.tokens is not None:
            self.tokens.end_file()
        else:
            self.sess.out.int32(0)

    def _write_literals(self, chunk):
        """Literal tokens (int32 length + data, at most CHUNK_SIZE each) for a
        whole slice, written with one system call."""
        out = self.sess.out
        parts = []
        for i in range(0, len(chunk), CHUNK_SIZE):
            piece = chunk[i:i + CHUNK_SIZE]
            parts.append(struct.pack("<i", len(piece)))
            parts.append(piece)
        out.write_parts(parts)

    def _send_delta(self, fd, size, head, sum1s, sum2s, updating_basis):
        sess = self.sess
        count, blength, s2length, remainder = head
        table = rsync_delta.BlockTable(sum1s, sum2s, blength, remainder, s2length)
        h = sess.checksums.file_hasher()
        strong = sess.checksums.strong
        safe = rsync_delta.SafeMap(fd, size)
        mm = safe.buf
        mv = safe.view()
        tokens = rsync_delta.match(table, mm, size, strong, updating_basis)
        try:
            hashed = 0
            dropped = 0
            parts = []
            pending = 0
            st = sess.stats
            zipped = self.tokens
            for off, n, idx in tokens:
                if zipped is not None:
                    if n:
                        zipped.literal(mv[off:off + n])
                else:
                    for i in range(off, off + n, CHUNK_SIZE):
                        piece = mv[i:min(i + CHUNK_SIZE, off + n)]
                        parts.append(struct.pack("<i", len(piece)))
                        parts.append(piece)
                pending += n
                st.literal_data += n
                end = off + n
                if idx >= 0:
                    blen = remainder if (idx == count - 1 and remainder) else blength
                    if zipped is not None:
                        zipped.block(idx, mv[end:end + blen])
                    else:
                        parts.append(struct.pack("<i", -(idx + 1)))
                    st.matched_data += blen
                    end += blen
                if end - hashed >= self.BATCH:
                    h.update(mv[hashed:end])
                    hashed = end
                    if hashed - dropped >= DROP_EVERY:
                        dropped = _drop_pages(mm, 0, hashed - (1 << 20))
                if pending >= self.BATCH or len(parts) >= 512:
                    sess.out.write_parts(parts)
                    parts = []
                    pending = 0
            if parts:
                sess.out.write_parts(parts)
            h.update(mv[hashed:size])
        finally:
            tokens.close()
            parts = piece = mm = None
            mv.release()
            truncated = safe.truncated
            safe.close()
        self._end_tokens()
        sess.out.write(h.digest())
        return "file changed size while being read" if truncated else None


def write_stats(sess):
    """handle_stats: what a server sender tells the client at the end."""
    st, out = sess.stats, sess.out
    out.flush()
    out.varlong30(sess.raw.total, 3)
    out.varlong30(out.total, 3)
    out.varlong30(st.total_size, 3)
    if sess.protocol >= 29:
        out.varlong30(st.flist_buildtime, 3)
        out.varlong30(st.flist_xfertime, 3)
    out.flush()


def read_final_goodbye(sess, nfiles):
    """The generator's last NDX_DONE; from 31 we echo it and read one more."""
    p = sess.protocol

    def next_ndx():
        while True:
            ndx, extra = sess.read_ndx_and_attrs(nfiles)[:2]
            if ndx != NDX_DEL_STATS:
                return ndx
            sess.del_stats = extra
            if sess.am_server:
                sess.out.ndx(NDX_DEL_STATS)
                for v in extra:
                    sess.out.varint(v)
    if p < 29:
        ndx = sess.inp.int32()
    else:
        ndx = next_ndx()
        if p >= 31 and ndx == NDX_DONE:
            sess.out.ndx(NDX_DONE)
            sess.out.flush()
            ndx = next_ndx()
    if ndx != NDX_DONE:
        raise ProtocolError("Invalid packet at end of run (%d)" % ndx, RERR_PROTOCOL)


# ----------------------------------------------------------------------------
# Filter rules on the wire (exclude.c recv_filter_list).


_GLOB_CHARS = (b"*", b"?", b"[")


def _has_glob(part):
    return any(c in part for c in _GLOB_CHARS)


def sanitize_arg(arg):
    """sanitize_path for a daemon's path argument: a ".." takes away the
    component before it and never climbs above the module; a leading "/"
    and empty components are dropped. What remains empty is "."."""
    trailing = arg.endswith(b"/")
    parts = []
    for c in arg.split(b"/"):
        if c == b"..":
            if parts:
                parts.pop()
        elif c:
            parts.append(c)
    out = b"/".join(parts) or b"."
    return out + b"/" if trailing and out != b"." else (b"./" if trailing else out)


def glob_arg(rootfd, root, arg, confined, excluded=None):
    """glob_expand: each wildcard component of ARG (rsync's wildmatch: *, ?
    and [...] within one name) is matched against the names of the
    directories reached so far, below `rootfd`; a component that is not the
    last must name a directory. Names a daemon excludes do not match.
    Returns the matches in order, or [] when there is none."""
    from rsync_filter import wildmatch
    absolute = arg.startswith(b"/") and not confined
    trailing = arg.endswith(b"/")
    comps = [c for c in arg.split(b"/") if c]
    found = [b"/" if absolute else b""]

    def open_dir(path):
        if confined:
            return open_dir_beneath(rootfd, split_path(path))
        return os.open(path or b".", O_DIR, dir_fd=rootfd)

    for i, comp in enumerate(comps):
        last = i == len(comps) - 1
        wild = _has_glob(comp)
        nxt = []
        for pre in found:
            if not wild and last:
                nxt.append(pre + comp)
                continue
            try:
                fd = open_dir(pre)
            except OSError:
                continue
            try:
                names = sorted(n for n in map(os.fsencode, os.listdir(fd)) if wildmatch(comp, n)) if wild else [comp]
                for n in names:
                    try:
                        st = os.stat(n, dir_fd=fd, follow_symlinks=False)
                        if stat.S_ISLNK(st.st_mode):
                            # As glob's stat: a link matches as what it
                            # points to, and not at all when that is missing
                            # (or, confined, outside the module).
                            if confined and not _inside(root, os.path.join(root, pre, n)):
                                continue
                            st = os.stat(n, dir_fd=fd)
                    except OSError:
                        continue
                    is_dir = stat.S_ISDIR(st.st_mode)
                    if (trailing or not last) and not is_dir:
                        continue
                    if excluded is not None and excluded(pre + n, is_dir):
                        continue
                    nxt.append(pre + n + (b"" if last else b"/"))
            finally:
                os.close(fd)
        found = nxt
    return [f + b"/" if trailing and not f.endswith(b"/") else f for f in found]


def _inside(root, path):
    """Whether PATH, its symlinks resolved, is ROOT or below it."""
    real = os.path.realpath(path)
    return real == root or real.startswith(root.rstrip(b"/") + b"/")


def expand_args(rootfd, root, args, confined, excluded=None):
    """The path arguments a daemon (or a server given them protected, -s)
    serves: sanitized within the module when confined, then wildcards
    expanded; a pattern that matches nothing is kept as it is."""
    out = []
    for a in args:
        b = os.fsencode(a)
        if confined:
            b = sanitize_arg(b)
        matched = glob_arg(rootfd, root, b, confined, excluded) if _has_glob(b) else []
        out.extend(matched or [b])
    return out


def serve_sender(sess, paths, root, confined, filters, log, root_shown="", daemon_filters=None, module=None):
    """do_server_sender: the file list, the files, the stats, the goodbye."""
    opts = sess.opts
    if not paths:
        raise RsyncError("do_server_sender called without args", RERR_SYNTAX)
    cwd, args = paths[0], paths[1:]
    if not args and (opts.recurse or opts.dirs or opts.list_only):
        args = ["."]
    rootfd = os.open(root, O_DIR)
    try:
        if cwd not in (".", ""):
            parts = split_path(os.fsencode(cwd)) if confined else None
            nfd = open_dir_beneath(rootfd, parts) if confined else os.open(cwd, O_DIR, dir_fd=rootfd)
            os.close(rootfd)
            rootfd = nfd

        def warn(tag, text):
            log(text)
            sess.send_text(tag, text)

        t0 = time.monotonic()
        builder = FileListBuilder(opts, sess.protocol, rootfd, confined, filters, warn,
                                  sess.checksums.file_checksum if opts.checksum else None,
                                  root_shown, daemon_filters, module)
        if confined or opts.protect_args:
            def excluded(path, is_dir):
                head, _, fn = path.rpartition(b"/")
                return builder._arg_daemon_excluded(head, fn, os.stat_result(
                    (stat.S_IFDIR if is_dir else stat.S_IFREG,) + (0,) * 9))
            real = os.path.realpath(os.path.join(os.fsencode(root), os.fsencode(cwd)))
            args = expand_args(rootfd, real, args, confined, excluded if daemon_filters is not None else None)
        try:
            for a in args:
                builder.add_arg(a)
            entries = builder.finish()
            build_ms = int((time.monotonic() - t0) * 1000)
            sender = Sender(sess, entries, warn)
            sender.send_file_list(builder.io_error, build_ms)
            if not entries:
                sess.out.flush()
                log("sent %d bytes  received %d bytes  total size 0" % (sess.out.total, sess.raw.total))
                return 0
            sender.send_files()
            write_stats(sess)
            read_final_goodbye(sess, len(entries))
            sess.out.flush()
        finally:
            builder.close()
        log("sent %d bytes  received %d bytes  total size %d"
            % (sess.out.total, sess.raw.total, sess.stats.total_size))
        return 0
    finally:
        os.close(rootfd)
