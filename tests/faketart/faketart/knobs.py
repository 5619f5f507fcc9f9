"""Failure knobs: defaults, the control file and per-image knobs.

``$TART_HOME/faketart-control.json``::

    {
      "vms":    {"<glob on VM name>": {<knobs>}, ...},
      "images": {"<glob on normalised image ref>": {<knobs>}, ...}
    }

Effective knobs for a VM = DEFAULTS <- knobs the image carried at clone time
<- matching ``images`` entries (by the VM's source ref) <- matching ``vms``
entries, each group applied in file order.  The file is re-read whenever its
mtime/size changes, so tests may edit it while a VM runs.
"""

from __future__ import annotations

import fnmatch
import json
import os

DEFAULTS: dict = {
    "boot_delay": 0.0,  # s from `tart run` start until sshd listens
    "no_ip_for": 0.0,  # s after boot before a DHCP lease / IP shows up
    "crash_after": None,  # s after `tart run` start: VM dies
    "crash_exit_code": 1,
    "crash_message": (
        'Error: Error Domain=VZErrorDomain Code=1 "The virtual machine stopped unexpectedly." '
        "UserInfo={NSLocalizedFailure=Internal Virtualization error., "
        "NSLocalizedFailureReason=The virtual machine stopped unexpectedly.}"
    ),
    "ip_change_after": None,  # s after the IP first became visible: guest gets a new address
    "start_failure": None,  # true | "message" | {"message": str, "exit_code": int}
    "clone_failure": None,  # same shape
    "pull_fail_at": None,  # percent
    "pull_fail_message": (
        'Error: Error Domain=NSURLErrorDomain Code=-1005 "The network connection was lost." '
        "UserInfo={NSErrorFailingURLStringKey=https://REGISTRY/v2/, NSLocalizedDescription=The "
        "network connection was lost.}"
    ),
    "pull_stall_at": None,  # percent: progress stops, the process hangs until killed
    "log_rate": 2.0,  # guest log lines per second
    "stop_hang": False,  # `tart run` prints "Stopping VM..." on SIGINT but never exits
    "stale_lease": True,  # keep the DHCP lease after the VM stops (real vmnet behaviour)
    "softnet_exit_after": None,  # s: the softnet child dies -> run fails
    "max_sessions": 10,  # the guest sshd's MaxSessions (OpenSSH's and macOS's default)
    "shell_greeting": None,  # text printed before every SSH command (~/.ssh/rc)
    "clone_seconds": 0.0,  # s `tart clone` spends copying, holding the $TART_HOME lock
    "init_seconds": 0.0,  # s `tart run` spends building the VM before it takes the VM's lock
    # a macOS 15.2+ guest: it starts only when `tart run` is in the GUI login session of
    # the user running it (Tart FAQ "Headless machines"; openai/tart #1075)
    "needs_login_session": False,
    # Suspend and restore (state.vzvmsave; docs/fake-tart.md "Suspend and restore")
    "state_size": None,  # apparent bytes of state.vzvmsave (None: min(memory, 1.5 GiB))
    "suspend_seconds": 1.0,  # s `tart run` spends writing state.vzvmsave, holding the lock
    "resume_seconds": 1.0,  # s from "restoring VM state..." until "resuming VM..."
    "restore_failure": None,  # true | "message" | {"message": str, "exit_code": int}
    "restore_share_paths": "argv",  # argv | resolved | ignore: which share paths must match
    "share_root_symlink": "follow",  # follow | refuse: a --dir path that is a symlink
    "restored_share_view": "new",  # new | saved: what a restored share serves
    "premounted_after_restore": "ok",  # ok | broken: shares mounted before the suspend
    "restore_ignore": [],  # fingerprint keys a restore does not compare
    "clone_state_copy_failure": False,  # `tart clone` fails to copy state.vzvmsave (try?)
}

DEFAULT_START_FAILURE = (
    'Error: Error Domain=VZErrorDomain Code=1 "The virtual machine failed to start." '
    "UserInfo={NSLocalizedFailure=Internal Virtualization error., "
    "NSLocalizedFailureReason=The virtual machine failed to start.}"
)
DEFAULT_CLONE_FAILURE = (
    'Error: Error Domain=NSCocoaErrorDomain Code=640 "You can\u2019t save the file '
    "\u201cdisk.img\u201d "
    'because the volume \u201cMacintosh HD\u201d is out of space." '
    "UserInfo={NSUnderlyingError=0x600000c8c0f0 {Error Domain=NSPOSIXErrorDomain Code=28 "
    '"No space left on device"}}'
)

_cache: dict[str, tuple[tuple[int, int], dict]] = {}


def control_path(home: str) -> str:
    return os.path.join(home, "faketart-control.json")


def load_control(home: str) -> dict:
    path = control_path(home)
    try:
        st = os.stat(path)
    except OSError:
        return {}
    key = (st.st_mtime_ns, st.st_size)
    hit = _cache.get(path)
    if hit and hit[0] == key:
        return hit[1]
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read() or b"{}")
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    _cache[path] = (key, data)
    return data


def _apply(dst: dict, table, key: str | None) -> None:
    if not key or not isinstance(table, dict):
        return
    for pattern, knobs in table.items():
        if isinstance(knobs, dict) and fnmatch.fnmatchcase(key, pattern):
            dst.update(knobs)


def for_vm(home: str, name: str, image_knobs: dict | None, source_ref: str | None) -> dict:
    k = dict(DEFAULTS)
    if image_knobs:
        k.update(image_knobs)
    ctl = load_control(home)
    _apply(k, ctl.get("images"), source_ref)
    _apply(k, ctl.get("vms"), name)
    return k


def for_image(home: str, ref: str, registry_knobs: dict | None) -> dict:
    k = dict(DEFAULTS)
    if registry_knobs:
        k.update(registry_knobs)
    _apply(k, load_control(home).get("images"), ref)
    return k


#: the host's macOS build (`sw_vers -buildVersion`) when the control file does not say:
#: macOS 15.6
DEFAULT_OS_BUILD = "24G84"


def host(home: str) -> dict:
    """Host-wide state of the fake Mac: ``{"leaked_macos_slots": N}`` — macOS VM slots that
    Virtualization.framework keeps after their VMs are gone, until the host reboots;
    ``"os_build"`` — the host's macOS build (default :data:`DEFAULT_OS_BUILD`), part of a
    saved state's fingerprint; ``"screen_scale"`` — the backing scale factor of the main
    screen a `tart run` in the GUI login session sees (``null``: no screen)."""
    table = load_control(home).get("host")
    return table if isinstance(table, dict) else {}


def failure(spec, default_message: str) -> tuple[str, int] | None:
    """Normalise a start/clone failure knob to (message, exit code)."""
    if spec in (None, False):
        return None
    if spec is True:
        return default_message, 1
    if isinstance(spec, str):
        return spec, 1
    if isinstance(spec, dict):
        return str(spec.get("message", default_message)), int(spec.get("exit_code", 1))
    return default_message, 1
