#!/bin/sh
# Installs what the test suite needs on a fresh Debian machine: stock rsync
# (3.5.0 from apt, plus Debian's 3.2.7 unpacked into /opt/rsync-3.2.7 as a
# second peer), OpenSSH, a C compiler, the Python dependencies, and builds
# the optional C delta library in place.
set -eu
cd "$(dirname "$0")/.."
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
if ! command -v rsync >/dev/null || ! [ -x /usr/sbin/sshd ] || ! command -v gcc >/dev/null; then
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq rsync openssh-server openssh-client gcc >/dev/null
fi
if ! [ -x /opt/rsync-3.2.7/usr/bin/rsync ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download rsync=3.2.7-1+deb12u6 >/dev/null)
    $SUDO mkdir -p /opt/rsync-3.2.7
    $SUDO dpkg -x "$tmp"/rsync_3.2.7-1+deb12u6_*.deb /opt/rsync-3.2.7
    rm -rf "$tmp"
fi
python3 -m pip install -q -r requirements.txt
python3 setup.py -q build_ext --inplace
# Bytecode now: an environment with PYTHONDONTWRITEBYTECODE would recompile
# rsync.py at every start.
python3 -m compileall -q -x "(bench|build)/" .
