"""Programs installed into every fake guest (written into the guest's overlay).

The programs live in ``guest-tools/``.  They must be self-contained: they run
as the guest user inside the guest, where this package is not importable.
``@PYTHON@`` in a file is replaced by a Python interpreter that exists inside
the guest.
"""

from __future__ import annotations

import os

TOOLS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guest-tools")

# guest path -> file in guest-tools/
INSTALL = {
    "/usr/bin/log": "log",
    "/usr/bin/sudo": "sudo",
    "/usr/sbin/shutdown": "shutdown",
    "/usr/sbin/halt": "shutdown",
    "/usr/sbin/poweroff": "shutdown",
    "/usr/sbin/reboot": "shutdown",
    "/sbin/shutdown": "shutdown",
    "/sbin/halt": "shutdown",
    "/sbin/poweroff": "shutdown",
    "/sbin/reboot": "shutdown",
    "/usr/local/bin/mount_virtiofs": "mount_virtiofs",
    "/usr/sbin/diskutil": "diskutil",
}
# only in Linux guests (macOS has mount_virtiofs)
INSTALL_LINUX = {"/usr/local/bin/mount": "mount"}
# only in macOS guests: /bin/sh is bash in POSIX mode there (``/bin`` is ``usr/bin`` here);
# `date` and `sysctl` read the guest's own clock (a resumed guest's clock is behind)
INSTALL_DARWIN = {"/usr/bin/sh": "sh-macos", "/usr/bin/date": "date", "/usr/sbin/sysctl": "sysctl"}
#: where macOS guests keep the host's `date`, which the fake `date` formats with
GNU_DATE = "/usr/libexec/faketart/gnu-date"
# Linux programs a Mac does not have: removed from macOS guests, so that nothing that runs
# in the fake's darwin guests can depend on them (BSD userland: no setsid(1), no GNU
# coreutils' timeout or stdbuf).
NOT_ON_MACOS = ("/usr/bin/setsid", "/usr/bin/timeout", "/usr/bin/stdbuf")


def load(python: str, guest_os: str = "darwin") -> dict[str, bytes]:
    """{guest path: file content} with ``@PYTHON@`` replaced by *python*."""
    cache: dict[str, bytes] = {}
    res = {}
    install = {**INSTALL, **(INSTALL_LINUX if guest_os == "linux" else INSTALL_DARWIN)}
    for guest_path, name in install.items():
        if name not in cache:
            with open(os.path.join(TOOLS_DIR, name), "rb") as f:
                cache[name] = f.read().replace(b"@PYTHON@", python.encode())
        res[guest_path] = cache[name]
    if guest_os != "linux":
        with open(os.path.realpath("/usr/bin/date"), "rb") as f:
            res[GNU_DATE] = f.read()
    return res
