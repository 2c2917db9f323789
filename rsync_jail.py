"""Confining gokr-rsyncd before it serves anybody.

Started as root on Linux, the daemon moves into a private mount namespace
whose root is an empty tmpfs holding nothing but the modules, each bound at
its own path and remounted read-only unless it is writable (a bind mount
ignores MS_RDONLY, so it takes a second, remounting call), changes root into
it and gives up root for an unprivileged user. Without root it cannot do
that, so it refuses to serve a module it could write to but should not.

The namespace and mounts are made through libc with ctypes: the standard
library has no wrapper for unshare(2) and mount(2).
"""

import ctypes
import ctypes.util
import grp
import os
import pwd
import sys
import tempfile

CLONE_NEWNS = 0x00020000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

# statvfs f_flag bits a read-only remount must keep (the kernel refuses to
# clear a locked one).
_KEEP_FLAGS = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC))


class JailError(Exception):
    pass


def _libc():
    lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    lib.unshare.argtypes = [ctypes.c_int]
    return lib


def _call(ret, what):
    if ret != 0:
        e = ctypes.get_errno()
        raise JailError("%s: %s" % (what, os.strerror(e)))


def _mount(lib, src, target, fstype, flags, data=None):
    _call(lib.mount(src and os.fsencode(src), os.fsencode(target), fstype and fstype.encode(), flags,
                    data and ctypes.c_char_p(data.encode())),
          "mount %s on %s" % (src or fstype or "", target))


def _kept_flags(fd):
    f = os.statvfs(fd).f_flag
    return sum(ms for st, ms in _KEEP_FLAGS if f & st)


def can_jail():
    return sys.platform.startswith("linux") and os.geteuid() == 0


def enter(modules, prepare=None, files=()):
    """Private mount namespace, a tmpfs root with each module bound in at
    /modules/NAME (read-only unless writable) and each of `files` read-only
    at /files/N, chroot into it. `modules` is a list of (name, path,
    writable); returns {name or file path: path inside the jail}.
    `prepare()` runs before the old root is left (and before /tmp is
    covered), to load anything the process will need later from it."""
    lib = _libc()
    _call(lib.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount(lib, None, "/", None, MS_REC | MS_PRIVATE)
    fds = {}
    try:
        for name, path, writable in modules:
            fds[name] = os.open(path, os.O_PATH | os.O_DIRECTORY)
        for path in files:
            fds[path] = os.open(path, os.O_PATH)
        if prepare is not None:
            prepare()
        newroot = _cover_tmp(lib)
        inside = {}
        for name, path, writable in modules:
            inside[name] = "/modules/" + name
            target = os.path.join(newroot, "modules", name)
            os.makedirs(target)
            _mount(lib, "/proc/self/fd/%d" % fds[name], target, None, MS_BIND | MS_REC)
            flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | _kept_flags(fds[name])
            if not writable:
                flags |= MS_RDONLY
            _mount(lib, None, target, None, flags)
        for i, path in enumerate(files):
            os.makedirs(os.path.join(newroot, "files"), exist_ok=True)
            target = os.path.join(newroot, "files", str(i))
            open(target, "w").close()
            _mount(lib, "/proc/self/fd/%d" % fds[path], target, None, MS_BIND)
            _mount(lib, None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
                   | _kept_flags(fds[path]))
            inside[path] = "/files/%d" % i
    finally:
        for fd in fds.values():
            os.close(fd)
    _mount(lib, None, newroot, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
           "mode=0755,size=1m")
    os.chroot(newroot)
    os.chdir("/")
    return inside


def _cover_tmp(lib):
    """The new root: a tmpfs mounted over /tmp, seen only in this mount
    namespace, so nothing is left behind on the host. Modules and files are
    bound from descriptors opened before, so one under /tmp is still found."""
    newroot = "/tmp"
    if not os.path.isdir(newroot) or os.path.islink(newroot):
        newroot = tempfile.mkdtemp(prefix="gokr-rsyncd-root-")
    _mount(lib, "tmpfs", newroot, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=1m")
    return newroot


def lookup_user(name):
    """(uid, gid) of a user name or number, looked up before any chroot."""
    try:
        pw = pwd.getpwnam(name)
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        if name.isdigit():
            return int(name), int(name)
        raise JailError("unknown user %r to run as" % name) from None


def lookup_group(name):
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit():
            return int(name)
        raise JailError("unknown group %r to run as" % name) from None


def drop_privileges(uid, gid):
    """setgroups, setgid, setuid, then proves root cannot be had back."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise JailError("dropped to uid %d but could become root again" % uid)
        if os.geteuid() == 0 or os.getegid() == 0 and gid != 0:
            raise JailError("still privileged after dropping to uid %d" % uid)


def check_unwritable(modules):
    """Without root there is no jail: refuse to serve a module this process
    could write to unless it is configured writable. `modules` is a list of
    (name, path, writable)."""
    for name, path, writable in modules:
        if not writable and os.access(path, os.W_OK):
            raise JailError(
                "module %s: %s is writable by this user (uid %d) but the module is not configured "
                "writable; make it read-only for this user, or declare the module writable"
                % (name, path, os.geteuid()))


def probe_write(path):
    """errno of trying to create a file in path (0 if it worked)."""
    probe = os.path.join(path, ".gokr-rsyncd-probe-%d" % os.getpid())
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        return e.errno
    os.close(fd)
    os.unlink(probe)
    return 0
