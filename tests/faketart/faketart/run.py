"""`tart run NAME`: flag grammar/validation (§3.7) and the VM supervisor."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time

from . import knobs as _knobs
from . import storage
from .argparse_swift import Arg, Command, Opt, int_
from .common import (
    RuntimeErr,
    SwiftErr,
    UsageErr,
    Verbatim,
    at_least,
    err,
    out,
    try_write_lock,
)
from .storage import RemoteName

DEFAULT_TAG = "com.apple.virtio-fs.automount"
#: What Tart before 2.18.1 printed at the VM limit: the VZError itself (commit 3da91e6).
VZ_LIMIT_EXCEEDED = (
    'Error Domain=VZErrorDomain Code=6 "The maximum supported number of active virtual '
    'machines has been reached." UserInfo={NSLocalizedFailure=The number of virtual machines '
    "exceeds the limit., NSLocalizedFailureReason=The maximum supported number of active "
    "virtual machines has been reached.}"
)
PKG_DIR = os.path.dirname(os.path.abspath(__file__))

# ---------------------------------------------------------------------------
# --dir (§3.7.2)


class DirShare:
    def __init__(self, name: str | None, path: str, ro: bool, tag: str, url: bool = False):
        self.name, self.path, self.ro, self.tag, self.url = name, path, ro, tag, url

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "path": self.path,
            "ro": self.ro,
            "tag": self.tag,
            "url": self.url,
        }


def parse_dir(spec: str, cwd: str | None = None) -> DirShare:
    cwd = cwd or os.getcwd()
    pieces = spec.split(":")
    options = pieces[-1].split(",")
    ro, tag, rest = False, DEFAULT_TAG, spec
    if "ro" in options or any(o.startswith("tag=") for o in options):
        rest = ":".join(pieces[:-1])
        for o in options:
            if o == "ro":
                ro = True
            elif o.startswith("tag="):
                tag = o[4:]
    if rest.startswith("http:") or rest.startswith("https:"):
        return DirShare(None, rest, ro, tag, url=True)
    name, sep, path = rest.partition(":")
    if not sep:
        name, path = None, rest
    path = os.path.expanduser(path)
    if not os.path.isabs(path):
        path = os.path.join(cwd, path)
    return DirShare(name, os.path.normpath(path), ro, tag)


def group_shares(shares: list[DirShare]) -> dict[str, list[DirShare]]:
    by_tag: dict[str, list[DirShare]] = {}
    for s in shares:
        by_tag.setdefault(s.tag, []).append(s)
    result = {}
    for tag, lst in by_tag.items():
        if len(lst) == 1 and lst[0].name is None:
            result[tag] = lst
            continue
        if any(s.name is None for s in lst):
            raise UsageErr(
                "invalid --dir syntax: for multiple directory shares each one of them should be "
                "named"
            )
        named: dict[str, DirShare] = {}
        for s in lst:
            named.pop(s.name, None)  # duplicate names: the last one wins
            named[s.name] = s
        result[tag] = list(named.values())
    return result


# ---------------------------------------------------------------------------
# --disk (§3.7.3) and --root-disk-opts

SYNC_MODES = ("none", "fsync", "full")
CACHING_MODES = ("automatic", "cached", "uncached")


def _check_disk_options(options: list[str]) -> None:
    for o in _known_disk_options(options):
        if o.startswith("sync=") and o[5:] not in SYNC_MODES:
            raise RuntimeErr(f'unsupported disk image synchronization mode: "{o[5:]}"')
        if o.startswith("caching=") and o[8:] not in CACHING_MODES:
            raise RuntimeErr(f'unsupported disk image caching mode: "{o[8:]}"')


def _known_disk_options(options: list[str]) -> list[str]:
    """Before 2.21.0 Tart knows no ``caching=`` and skips it without a word."""
    if at_least("2.21.0"):
        return options
    return [o for o in options if not o.startswith("caching=")]


def parse_root_disk_opts(s: str) -> dict:
    opts = _known_disk_options([o for o in s.split(",") if o])
    _check_disk_options(opts)
    return {"ro": "ro" in opts, "options": opts}


class DiskSpec:
    def __init__(self, spec: str):
        self.spec = spec
        pieces = spec.split(":")
        last = pieces[-1].split(",")
        self.options: list[str] = []
        self.path = spec
        if len(pieces) > 1 and any(o == "ro" or o.startswith(("sync=", "caching=")) for o in last):
            self.options = last
            self.path = ":".join(pieces[:-1])
        self.ro = "ro" in self.options
        self.nbd = self.path.startswith(("nbd://", "nbds://", "nbd+unix://", "nbds+unix://"))


# ---------------------------------------------------------------------------
# Bridged interfaces


def bridge_interfaces() -> list[tuple[str, str]]:
    raw = os.environ.get("FAKETART_BRIDGE_INTERFACES", "en0=Ethernet,en1=Wi-Fi")
    res = []
    for raw_item in raw.split(","):
        item = raw_item.strip()
        if not item:
            continue
        bsd, _, disp = item.partition("=")
        res.append((bsd, disp or bsd))
    return res


def swift_array(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


# ---------------------------------------------------------------------------
# Command definition

OPTS = [
    Opt(("--no-graphics",), "no_graphics", help="Don't open a UI window."),
    Opt(("--graphics",), "graphics", hidden=True),
    Opt(("--serial",), "serial", help="Open serial console in /dev/ttySXX"),
    Opt(
        ("--serial-path",),
        "serial_path",
        "value",
        "serial-path",
        None,
        None,
        "Attach an externally created serial console",
    ),
    Opt(("--no-audio",), "no_audio", help="Disable audio pass-through to host.", since="2.6.0"),
    Opt(
        ("--no-clipboard",),
        "no_clipboard",
        help="Disable clipboard sharing between host and guest.",
        since="2.10.0",
    ),
    Opt(("--recovery",), "recovery", help="Boot into recovery mode"),
    Opt(("--vnc",), "vnc", help="Use screen sharing instead of the built-in UI."),
    Opt(
        ("--vnc-experimental",),
        "vnc_experimental",
        help="Use Virtualization.Framework's VNC server instead of the built-in UI.",
    ),
    Opt(("--disk",), "disk", "array", "path[:options]", None, None, "Additional disk attachments"),
    Opt(
        ("--rosetta",),
        "rosetta",
        "value",
        "tag",
        None,
        None,
        "Attaches a Rosetta share to the guest Linux VM with a specific tag",
    ),
    Opt(
        ("--dir",),
        "dir",
        "array",
        "[name:]path[:options]",
        None,
        None,
        "Additional directory shares",
    ),
    Opt(("--nested",), "nested", help="Enable nested virtualization if possible", since="2.20.0"),
    Opt(
        ("--net-bridged",),
        "net_bridged",
        "array",
        "interface name",
        None,
        None,
        "Use bridged networking instead of the default shared (NAT) networking",
    ),
    Opt(("--net-softnet",), "net_softnet", help="Use software networking provided by Softnet"),
    Opt(
        ("--net-softnet-allow",),
        "net_softnet_allow",
        "value",
        "comma-separated CIDRs",
        None,
        None,
        "Comma-separated list of CIDRs to allow the traffic to",
        since="2.7.1",
    ),
    Opt(
        ("--net-softnet-block",),
        "net_softnet_block",
        "value",
        "comma-separated CIDRs",
        None,
        None,
        "Comma-separated list of CIDRs to block the traffic to",
        since="2.30.0",
    ),
    Opt(
        ("--net-softnet-expose",),
        "net_softnet_expose",
        "value",
        "comma-separated port specifications",
        None,
        None,
        "Comma-separated list of TCP ports to expose",
        since="2.23.0",
    ),
    Opt(
        ("--net-softnet-control-fd",),
        "net_softnet_control_fd",
        "value",
        "fd",
        int_,
        None,
        "Unix socket for Softnet policy updates",
        since="2.34.0",
    ),
    Opt(
        ("--net-host",),
        "net_host",
        help="Restrict network access to the host-only network",
        since="2.7.0",
    ),
    Opt(
        ("--root-disk-opts",),
        "root_disk_opts",
        "value",
        "options",
        None,
        "",
        "Set the root disk options",
        since="2.16.0",
    ),
    Opt(
        ("--suspendable",),
        "suspendable",
        help="Disables audio and entropy devices and switches to only Mac-specific input devices.",
    ),
    Opt(
        ("--capture-system-keys",),
        "capture_system_keys",
        help="Whether system hot keys should be sent to the guest",
        since="2.3.0",
    ),
    Opt(
        ("--no-trackpad",),
        "no_trackpad",
        help="Don't add a trackpad as a pointing device",
        since="2.25.0",
    ),
    Opt(("--no-pointer",), "no_pointer", help="Disable the pointer", since="2.29.0"),
    Opt(("--no-keyboard",), "no_keyboard", help="Disable the keyboard", since="2.29.0"),
    Opt(
        ("--provisioning-opts",),
        "provisioning_opts",
        "value",
        "options",
        None,
        None,
        "Provisioning options for macOS 27 guests",
        since="2.33.0",
    ),
]


def validate_flags(o: dict) -> None:
    if o["graphics"] and o["no_graphics"]:
        raise UsageErr("--graphics and --no-graphics are mutually exclusive")
    if (o["no_graphics"] or o["vnc"] or o["vnc_experimental"]) and o["capture_system_keys"]:
        raise UsageErr("--captures-system-keys can only be used with the default VM view")
    if o["vnc"] and o["vnc_experimental"]:
        raise UsageErr("--vnc and --vnc-experimental are mutually exclusive")
    softnet = bool(
        o["net_softnet"]
        or o["net_softnet_allow"] is not None
        or o["net_softnet_block"] is not None
        or o["net_softnet_expose"] is not None
        or o["net_softnet_control_fd"] is not None
    )
    modes = sum([bool(o["net_bridged"]), softnet, bool(o["net_host"])])
    if modes > 1:
        raise UsageErr("--net-bridged, --net-softnet and --net-host are mutually exclusive")
    if o["net_softnet_control_fd"] is not None and o["net_softnet_control_fd"] <= 2:
        raise UsageErr("--net-softnet-control-fd should be greater than 2")
    if o["suspendable"] and (o["no_trackpad"] or o["no_pointer"] or o["no_keyboard"]):
        raise UsageErr(
            "--suspendable cannot be used with --no-trackpad, --no-pointer or --no-keyboard"
        )
    for d in o["disk"]:
        if DiskSpec(d).path.endswith("-amd64.iso"):
            raise UsageErr(
                f"{d}: x86_64 (amd64) ISO images cannot be booted on Apple Silicon, use an arm64 "
                "image instead"
            )
    if o["nested"] and os.environ.get("FAKETART_NESTED_SUPPORTED", "1") == "0":
        raise UsageErr(
            "Nested virtualization is supported on hosts starting with macOS 15 (Sequoia), "
            "and is only available on Mac with M3 or M4 chips"
        )
    o["_shares"] = group_shares([parse_dir(s) for s in o["dir"]])
    o["_network"] = (
        "bridged"
        if o["net_bridged"]
        else "softnet"
        if softnet
        else "host"
        if o["net_host"]
        else "shared"
    )


def validate_vm(o: dict, cfg: dict) -> None:
    darwin = cfg.get("os") == "darwin"
    # Run.swift validate() L355-374: a suspended VM is run --suspendable, with its checks
    if o["suspendable"] and not darwin:
        raise UsageErr("You can only suspend macOS VMs")
    if o["suspendable"] and (o["no_trackpad"] or o["no_pointer"] or o["no_keyboard"]):
        raise UsageErr(
            "--suspendable cannot be used with --no-trackpad, --no-pointer or --no-keyboard"
        )
    if o["no_trackpad"] and not darwin:
        raise UsageErr("--no-trackpad is only supported for macOS VMs")
    if o["rosetta"] is not None and darwin:
        raise UsageErr("--rosetta is only supported for Linux VMs")
    if o["net_bridged"]:
        ifaces = bridge_interfaces()
        matched = [b for b, d in ifaces if b in o["net_bridged"] or d in o["net_bridged"]]
        if (
            len(set(o["net_bridged"]) - {b for b, _ in ifaces} - {d for _, d in ifaces})
            or not matched
        ):
            raise UsageErr(
                f'no bridge interfaces matched "{swift_array(o["net_bridged"])}", '
                f"available interfaces: {swift_array([b for b, _ in ifaces])}"
            )


def which(prog: str) -> str | None:
    import shutil

    return shutil.which(prog, path=os.environ.get("PATH", os.defpath))


def in_login_session() -> bool:
    """Whether this process is in the GUI login session of its user (see host/launchctl)."""
    return os.environ.get("FAKETART_AUDIT_SESSION") == f"gui/{os.getuid()}"


def configure_suid_bit_if_needed(softnet: str) -> None:
    """Softnet.swift ``configureSUIDBitIfNeeded``, which `tart run` calls only on a terminal.

    Nothing to do when softnet (symlinks resolved) is root-owned with the SUID bit, or when
    ``sudo --non-interactive softnet --help`` works; else it asks sudo for a password to
    ``chown root`` and ``chmod u+s`` softnet.
    """
    import stat
    import subprocess

    path = os.path.realpath(softnet)
    info = os.stat(path)
    if info.st_uid == 0 and info.st_mode & stat.S_ISUID:
        return
    sudo = which("sudo")
    if sudo is None:
        raise SwiftErr('InitializationFailed(why: "sudo not found in PATH")')
    probe = subprocess.run(
        [sudo, "--non-interactive", "softnet", "--help"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    if probe.returncode == 0:
        return
    err(
        "Softnet requires a Sudo password to set the SUID bit on the Softnet executable, "
        "please enter it below."
    )
    done = subprocess.run([sudo, "sh", "-c", f"chown root {path} && chmod u+s {path}"], check=False)
    if done.returncode != 0:
        raise RuntimeErr(
            "Softnet failed: failed to configure SUID bit on Softnet executable with Sudo"
        )


def cmd_run(o: dict) -> int:
    from .common import tart_home

    home = tart_home()
    name = o["name"]
    validate_flags(o)
    vm = storage.local_vm(home, name)
    if "/" in name or not vm.exists():
        raise SwiftErr(f'the specified VM "{name}" does not exist')
    if not vm.initialized():
        raise SwiftErr("VM is missing some of its files (config.json, disk.img or nvram.bin)")
    from .common import touch_access

    touch_access(vm.path)
    cfg = vm.read_config()
    if vm.state() == "suspended":
        o["suspendable"] = True  # Run.swift L355-357
    validate_vm(o, cfg)
    flags = SignalFlags()
    with storage.global_lock(home):
        mac = cfg.get("macAddress")
        for other in storage.list_local(home):
            if (
                other.name != name
                and other.running()
                and other.read_config().get("macAddress") == mac
            ):
                # Run.swift L416-426 and VMDirectory.regenerateMACAddress (L223-231): a new
                # MAC, and the saved state is deleted with it (a silent cold boot)
                out("There is already a running VM with the same MAC address!")
                out("Resetting VM to assign a new MAC address...")
                cfg["macAddress"] = storage.random_mac()
                with contextlib.suppress(OSError):
                    os.unlink(vm.state_path)
                vm.write_config(cfg)
                break
        restoring = os.path.exists(vm.state_path)
        parse_root_disk_opts(o["root_disk_opts"] or "")
        disk_fds = open_disks(home, o["disk"])
        k = vm.knobs(home)
        for shares in o["_shares"].values():
            for s in shares:
                if not s.url and not os.path.isdir(s.path):
                    raise SwiftErr(
                        _invalid_share(s.path, f"{s.path} does not exist or is not a directory")
                    )
                if not s.url and k.get("share_root_symlink") == "refuse" and os.path.islink(s.path):
                    raise SwiftErr(_invalid_share(s.path, f"{s.path} is a symbolic link"))
        from . import vzstate

        o["_fingerprint"] = vzstate.fingerprint(home, vm, cfg, o, screen=in_login_session())
        softnet = None
        if o["_network"] in ("softnet", "host"):
            softnet = which("softnet")
            if softnet is None:
                raise SwiftErr('InitializationFailed(why: "softnet not found in PATH")')
            if os.isatty(1):  # Run.swift isInteractiveSession(): stdout is a terminal
                configure_suid_bit_if_needed(softnet)
        # Run.swift builds the whole VM (devices, networks, shares) before it takes the
        # VM's lock: until then the VM reads as stopped, and only $TART_HOME is locked.
        if k.get("init_seconds"):
            time.sleep(float(k["init_seconds"]))
        lock_fd = try_write_lock(vm.config_path)
        if lock_fd is None:
            raise RuntimeErr(f'VM "{name}" is already running!', 2)
        fail = _knobs.failure(k.get("start_failure"), _knobs.DEFAULT_START_FAILURE)
        if fail:
            raise Verbatim(*fail)
        if cfg.get("os") == "darwin" and k.get("needs_login_session") and not in_login_session():
            # Virtualization.framework cannot reach the user's login keychain
            # (SecKeyCreateRandomKey_ios failed, in the unified log) and the VM fails.
            raise Verbatim(_knobs.DEFAULT_START_FAILURE, 1)
        if cfg.get("os") == "darwin":
            limit = int(os.environ.get("FAKETART_MAX_MACOS_VMS", "2"))
            limit -= int(_knobs.host(home).get("leaked_macos_slots") or 0)
            others = [v for v in storage.list_local(home) if v.name != name and v.running()]
            darwin_others = [v for v in others if v.read_config().get("os") == "darwin"]
            if len(darwin_others) >= limit:
                if not at_least("2.18.1"):  # Virtualization.framework's own error
                    raise SwiftErr(VZ_LIMIT_EXCEEDED)
                hint = (
                    f" (other running VMs: {', '.join(v.name for v in others)})" if others else ""
                )
                raise RuntimeErr(f"The number of VMs exceeds the system limit{hint}")
    from .supervisor import Supervisor

    sup = Supervisor(home, vm, cfg, o, lock_fd, disk_fds, softnet, restoring, flags)
    return sup.run()


def _invalid_share(path: str, reason: str) -> str:
    """Virtualization.framework's ``validate()`` error for a directory share it refuses."""
    return (
        'Error Domain=VZErrorDomain Code=2 "Invalid virtual machine configuration. '
        f'The directory sharing device configuration is invalid: {reason}." '
        "UserInfo={NSLocalizedFailure=Invalid virtual machine configuration., "
        "NSLocalizedFailureReason=A directory sharing device configuration is "
        f"invalid. ({path})}}"
    )


def open_disks(home: str, specs: list[str]) -> list[int]:
    import fcntl

    fds = []
    for spec in specs:
        d = DiskSpec(spec)
        _check_disk_options(d.options)
        if d.nbd:
            continue
        rn = RemoteName.parse(d.path)
        if rn is not None:
            if storage.oci_cached(home, rn) is None:
                raise RuntimeErr(
                    f"failed to find the remote VM {rn} in the OCI cache, pull it first"
                )
            continue
        path = os.path.abspath(os.path.expanduser(d.path))
        if not os.path.exists(path):
            raise SwiftErr(
                'Error Domain=NSCocoaErrorDomain Code=260 "The file '
                f"\u201c{os.path.basename(path)}\u201d couldn\u2019t be "
                f'opened because there is no such file." UserInfo={{NSFilePath={path}}}'
            )
        if not d.ro and os.path.isfile(path):
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise RuntimeErr(
                    f"disk {path} seems to be already in use, unmount it first in Finder"
                ) from None
            fds.append(fd)
    return fds


# ---------------------------------------------------------------------------
# Signals


class SignalFlags:
    def __init__(self):
        self.pending: list[int] = []
        self.r, self.w = os.pipe()
        os.set_blocking(self.w, False)
        os.set_blocking(self.r, False)
        for s in (signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(s, self._on)
        signal.set_wakeup_fd(self.w)

    def _on(self, signum, _frame) -> None:
        self.pending.append(signum)

    def drain(self) -> list[int]:
        try:
            while os.read(self.r, 512):
                pass
        except BlockingIOError:
            pass
        got, self.pending = self.pending, []
        return got


COMMAND = Command("run", "Run a VM", [Arg("name", "name", help="VM name")], OPTS, cmd_run)
