"""Installs gokr-rsyncd and gokr-rsync; builds the optional C delta library.

`python setup.py build_ext --inplace` puts the library next to rsync.py, where
rsync_delta.py finds it with ctypes. Without it everything still works, in
pure Python.
"""
from setuptools import Extension, setup

setup(
    name="gokr-rsync",
    version="0.1.0",
    description="rsync server and client in Python, interoperating with stock rsync",
    license="BSD-3-Clause",
    python_requires=">=3.11",
    py_modules=["rsync", "rsync_flist", "rsync_sender", "rsync_receiver", "rsync_md4", "rsync_filter",
                "rsync_delta", "rsync_compress", "rsync_conf", "rsync_jail", "rsync_sshd", "daemon", "client"],
    ext_modules=[Extension("_rsync_delta",
                           ["contrib/rsync_delta.c", "contrib/rsync_flist.c", "contrib/rsync_writer.c"],
                           optional=True, extra_compile_args=["-O3"])],
    install_requires=["pycryptodome", "paramiko", "xxhash"],
    # zstd and lz4 are offered for -z only when these are installed.
    extras_require={"compress": ["zstandard", "lz4"]},
    entry_points={"console_scripts": ["gokr-rsyncd = daemon:main", "gokr-rsync = client:main"]},
)
