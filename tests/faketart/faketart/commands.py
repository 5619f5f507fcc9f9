"""`tart` subcommands other than `run` (tart-cli.md §3)."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import sys
import time

from . import knobs as _knobs
from . import network, registry, storage
from .argparse_swift import Arg, Command, Opt, choice, uint
from .common import (
    RuntimeErr,
    SwiftErr,
    UsageErr,
    Verbatim,
    err,
    iso_utc,
    out,
    read_json,
    relative_time,
    sparse_copy,
    swift_pretty_json,
    tart_home,
    touch_access,
    write_json_atomic,
)
from .storage import RemoteName

# VZVirtualMachineConfiguration.minimumAllowedCPUCount / minimumAllowedMemorySize. Apple does
# not document the numbers; these are the values the framework reports on macOS 14/15.
VZ_MIN_CPUS = 1
VZ_MIN_MEMORY = 128 * 1024 * 1024


def _concurrency(n: int) -> None:
    if n < 1:
        raise UsageErr("network concurrency cannot be less than 1")


def _table(rows: list[list[str]]) -> str:
    """TextTable 'plain' style: left-aligned, one space, whole string trimmed."""
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" ".join(c.ljust(widths[i]) for i, c in enumerate(r)) for r in rows]
    return "\n".join(lines).strip()


# ---------------------------------------------------------------------------
# clone / pull


def _image_meta_from_cache(entry: storage.VMDir, ref: str) -> dict:
    meta = read_json(os.path.join(entry.path, storage.IMAGE_META), {}) or {}
    meta = dict(meta)
    meta["source"] = meta.get("source") or ref
    return meta


def cmd_clone(o: dict) -> int:
    home = tart_home()
    src, new = o["source"], o["new"]
    if "/" in new:
        raise UsageErr("<new-name> should be a local name")
    _concurrency(o["concurrency"])
    rn = RemoteName.parse(src)
    if rn is not None:
        cached = storage.oci_cached(home, rn)
        if cached is None:
            registry.pull(home, rn, first_line=False)
            cached = storage.oci_cached(home, rn)
            if cached is None:
                raise SwiftErr(f"pulled image {rn} is missing from the cache")
        touch_access(cached.path)
        source = cached
        meta = _image_meta_from_cache(cached, str(rn))
        source_knobs = _knobs.for_image(home, meta.get("source") or str(rn), meta.get("knobs"))
    else:
        source = storage.open_local(home, src)
        meta = source.image_meta()
        source_knobs = source.knobs(home)
    k = dict(source_knobs)
    _knobs._apply(k, _knobs.load_control(home).get("vms"), new)
    fail = _knobs.failure(k.get("clone_failure"), _knobs.DEFAULT_CLONE_FAILURE)
    if fail:
        raise Verbatim(*fail)

    with storage.global_lock(home):
        # Clone.swift L101-103: the source's state (its lock first, then state.vzvmsave, as
        # VMDirectory.state() L65-73) decides, before anything is copied
        source_state = source.state()
        stage = storage.Staging(home)
        try:
            for fname in ("config.json", "disk.img", "nvram.bin"):
                p = os.path.join(source.path, fname)
                if os.path.exists(p):
                    sparse_copy(p, os.path.join(stage.path, fname))
            # VMDirectory.clone (L207-217): `try? copyItem(at: stateURL ...)`
            if os.path.exists(source.state_path) and not k.get("clone_state_copy_failure"):
                with contextlib.suppress(OSError):
                    sparse_copy(source.state_path, os.path.join(stage.path, "state.vzvmsave"))
            if k.get("clone_seconds"):  # a copy that takes time (no APFS clonefile, slow disk)
                time.sleep(float(k["clone_seconds"]))
            os.makedirs(os.path.join(stage.path, storage.FAKE_DIR), exist_ok=True)
            write_json_atomic(
                os.path.join(stage.path, storage.FAKE_DIR, "image.json"),
                {
                    "source": meta.get("source"),
                    "digest": meta.get("digest"),
                    "user": meta.get("user", "admin"),
                    "password": meta.get("password", "admin"),
                    "guest_agent": meta.get("guest_agent", True),
                    "knobs": meta.get("knobs") or {},
                },
            )
            table = storage.read_partitions(source.path)
            if table is not None:  # the guest's disk: its partitions come along
                storage.write_partitions(stage.path, table)
            ident = os.path.join(source.path, storage.DISK_IDENTITY)
            if os.path.exists(ident):  # the disk's identity comes with the disk
                shutil.copyfile(ident, os.path.join(stage.path, storage.DISK_IDENTITY))
            staged = storage.VMDir(stage.path)
            cfg = staged.read_config()
            mac = cfg.get("macAddress")
            if source_state != "suspended" and any(
                (v.read_config().get("macAddress") == mac) for v in storage.list_local(home)
            ):
                # VMDirectory.regenerateMACAddress (L223-231) deletes the copied state too
                cfg["macAddress"] = storage.random_mac()
                with contextlib.suppress(OSError):
                    os.unlink(staged.state_path)
                staged.write_config(cfg)
            if os.path.exists(staged.state_path):
                _copy_guest_memory(source, staged)
            dst = storage.local_vm(home, new).path
            os.makedirs(storage.vms_dir(home), exist_ok=True)
            if os.path.lexists(dst):
                trash = os.path.join(storage.tmp_dir(home), f"replaced-{os.urandom(8).hex()}")
                os.rename(dst, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.rename(stage.path, dst)
        finally:
            stage.close(remove=True)
    return 0


def _copy_guest_memory(source: storage.VMDir, dst: storage.VMDir) -> None:
    """A clone that carries a saved state resumes the source's guest: its disk (the guest
    user's home) and memory (sshd's host key) come along."""
    for name in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"):
        p = source.fake(name)
        if os.path.exists(p):
            shutil.copy2(p, dst.fake(name))
    if os.path.isdir(source.fake("home")):
        shutil.copytree(source.fake("home"), dst.fake("home"), symlinks=True, dirs_exist_ok=True)


def cmd_pull(o: dict) -> int:
    home = tart_home()
    _concurrency(o["concurrency"])
    rn = RemoteName.parse(o["remote"])
    if rn is None:
        out(f'"{o["remote"]}" is a local image, nothing to pull here!')
        return 0
    registry.pull(home, rn, first_line=True)
    return 0


# ---------------------------------------------------------------------------
# login / logout


def cmd_login(o: dict) -> int:
    home = tart_home()
    host = o["host"]
    if (o["username"] is None) != (not o["password_stdin"]):
        raise UsageErr("both --username and --password-stdin are required")
    if o["username"] is None:
        if not sys.stdin.isatty():
            raise SwiftErr("Failed to read the username: no TTY")
        user = input("User: ")
        import getpass

        password = getpass.getpass("Password: ")
    else:
        user = o["username"]
        password = sys.stdin.read().rstrip("\n")
    if not o["no_validate"] and not registry.validate_login(home, host, user, password):
        raise RuntimeErr(
            f"invalid credentials: failed to authenticate to {host}: "
            'AuthFailed(why: "received unexpected HTTP status code 401 while retrieving an '
            'authentication token")'
        )
    kc = read_json(registry.keychain_path(home), {}) or {}
    kc[host] = base64.b64encode(f"{user}:{password}".encode()).decode()
    write_json_atomic(registry.keychain_path(home), kc)
    os.chmod(registry.keychain_path(home), 0o600)
    return 0


def cmd_logout(o: dict) -> int:
    home = tart_home()
    kc = read_json(registry.keychain_path(home), {}) or {}
    if o["host"] in kc:
        del kc[o["host"]]
        write_json_atomic(registry.keychain_path(home), kc)
    return 0


# ---------------------------------------------------------------------------
# set / get / list


def cmd_set(o: dict) -> int:
    home = tart_home()
    vm = storage.open_local(home, o["name"])
    cfg = vm.read_config()
    darwin = cfg.get("os") == "darwin"
    # VMConfig.setCPU / setMemory: the image's minimums for macOS, Virtualization.framework's
    # floor for every VM; the error comes before anything is saved
    if o["cpu"] is not None:
        for floor in ([int(cfg.get("cpuCountMin", 0))] if darwin else []) + [VZ_MIN_CPUS]:
            if o["cpu"] < floor:
                raise SwiftErr(
                    f"LessThanMinimalResourcesError: VM should have {floor} CPU cores at "
                    f"minimum (requested {o['cpu']})"
                )
        cfg["cpuCount"] = o["cpu"]
    if o["memory"] is not None:
        want = o["memory"] * 1024 * 1024
        for floor in ([int(cfg.get("memorySizeMin", 0))] if darwin else []) + [VZ_MIN_MEMORY]:
            if want < floor:
                raise SwiftErr(
                    f"LessThanMinimalResourcesError: VM should have {floor} bytes of memory at "
                    f"minimum (requested {want})"
                )
        cfg["memorySize"] = want
    if o["display"] is not None:
        d = cfg.get("display") or {}
        w, h, unit = storage.parse_display(
            o["display"], (int(d.get("width", 1024)), int(d.get("height", 768)), d.get("unit"))
        )
        cfg["display"] = {"width": w, "height": h}
        if unit:
            cfg["display"]["unit"] = unit
    if o["display_refit"] is None:
        cfg.pop("displayRefit", None)  # quirk: every `set` rewrites it
    else:
        cfg["displayRefit"] = bool(o["display_refit"])
    if o["random_mac"]:
        cfg["macAddress"] = storage.random_mac()
    if o["random_serial"] and darwin:
        cfg["ecid"] = base64.b64encode(os.urandom(8)).decode()
    vm.write_config(cfg)
    if o["disk"] is not None:
        src = os.path.abspath(os.path.expanduser(o["disk"]))
        if not os.path.isfile(src):
            raise SwiftErr(
                'Error Domain=NSCocoaErrorDomain Code=260 "The file '
                f"\u201c{os.path.basename(src)}\u201d couldn\u2019t be opened "
                f'because there is no such file." UserInfo={{NSFilePath={src}}}'
            )
        sparse_copy(src, vm.disk_path + ".faketart-new")
        os.replace(vm.disk_path + ".faketart-new", vm.disk_path)
        storage.bump_disk_generation(vm)  # another disk: a saved state no longer fits
    if o["disk_size"] is not None:
        want = o["disk_size"] * 1_000_000_000
        cur = os.stat(vm.disk_path).st_size
        if want < cur:
            raise RuntimeErr(
                f"new disk size of {o['disk_size']}GB should be larger than the current disk size "
                f"of {cur // 1_000_000_000}GB"
            )
        if want > cur:
            os.truncate(vm.disk_path, want)
            storage.bump_disk_generation(vm)
    return 0


def _get_row(vm: storage.VMDir) -> dict:
    cfg = vm.read_config()
    state = vm.state()
    return {
        "OS": cfg.get("os"),
        "CPU": int(cfg.get("cpuCount", 0)),
        "Memory": int(cfg.get("memorySize", 0)) // 1024 // 1024,
        "Disk": vm.apparent() // 1_000_000_000,
        "DiskFormat": cfg.get("diskFormat", "raw"),
        "Size": f"{vm.allocated() / 1_000_000_000:.3f}",
        "Display": storage.display_string(cfg),
        "Running": state == "running",
        "State": state,
    }


def cmd_get(o: dict) -> int:
    home = tart_home()
    vm = storage.open_local(home, o["name"])
    row = _get_row(vm)
    if o["format"] == "json":
        out(swift_pretty_json(row))
    else:
        keys = ["OS", "CPU", "Memory", "Disk", "DiskFormat", "Size", "Display", "State"]
        out(_table([keys, [str(row[k]) for k in keys]]))
    return 0


def _source(s: str) -> str:
    if s not in ("local", "oci"):
        raise UsageErr(f"'{s}' is not a valid <source>")
    return s


def cmd_list(o: dict) -> int:
    home = tart_home()
    rows = []
    if o["source"] in (None, "local"):
        for vm in storage.list_local(home):
            st = vm.state()
            rows.append(
                {
                    "Source": "local",
                    "Name": vm.name,
                    "Disk": vm.apparent() // 1_000_000_000,
                    "Size": vm.allocated() // 1_000_000_000,
                    "Accessed": vm.accessed(),
                    "Running": st == "running",
                    "State": st,
                }
            )
    if o["source"] in (None, "oci"):
        for name, vm in storage.list_oci(home):
            rows.append(
                {
                    "Source": "OCI",
                    "Name": name,
                    "Disk": vm.apparent() // 1_000_000_000,
                    "Size": vm.allocated() // 1_000_000_000,
                    "Accessed": vm.accessed(),
                    "Running": False,
                    "State": "stopped",
                }
            )
    if o["quiet"]:
        for r in rows:
            out(r["Name"])
        return 0
    if o["format"] == "json":
        for r in rows:
            r["Accessed"] = iso_utc(r["Accessed"])
        out(swift_pretty_json(rows))
        return 0
    if not rows:
        out("")
        return 0
    table = [["Source", "Name", "Disk", "Size", "Accessed", "State"]]
    for r in rows:
        table.append(
            [
                r["Source"],
                r["Name"],
                str(r["Disk"]),
                str(r["Size"]),
                relative_time(r["Accessed"]),
                r["State"],
            ]
        )
    out(_table(table))
    return 0


# ---------------------------------------------------------------------------
# ip / stop / suspend / delete / rename / fqn


def runtime_of(vm: storage.VMDir) -> dict | None:
    """The fake's runtime record, if it belongs to the process holding the lock."""
    pid = vm.running_pid()
    if not pid:
        return None
    rt = read_json(vm.fake("runtime.json"), {}) or {}
    return rt if rt.get("pid") == pid else None


def cmd_ip(o: dict) -> int:
    home = tart_home()
    vm = storage.open_local(home, o["name"])
    resolver = o["resolver"]
    meta = vm.image_meta()

    def attempt() -> str | None:
        cfg = vm.read_config()
        if resolver == "dhcp":
            return network.lookup_lease(home, cfg.get("macAddress"))
        rt = runtime_of(vm)
        if not rt or not rt.get("ip_visible_at"):
            return None
        if resolver == "arp":
            return None if rt.get("network") in ("softnet", "host") else rt.get("addr")
        if resolver == "agent":
            return rt.get("addr") if meta.get("guest_agent", True) else None
        return None

    deadline = time.monotonic() + o["wait"]
    while True:
        ip = attempt()
        if ip:
            out(ip)
            return 0
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(1.0, left))
    msg = "no IP address found"
    if not vm.running():
        msg += ", is your VM running?"
    if resolver == "agent":
        msg += " (also make sure that Guest agent for Tart is running inside of a VM)"
    if resolver == "arp" and vm.read_config().get("os") == "linux":
        msg += " (not all Linux distributions are compatible with the ARP resolver)"
    raise RuntimeErr(msg, 1)


def cmd_stop(o: dict) -> int:
    home = tart_home()
    name = o["name"]
    vm = storage.open_local(home, name)
    pid = vm.running_pid()
    if not pid:
        if os.path.exists(vm.state_path):
            os.unlink(vm.state_path)
            return 0
        raise RuntimeErr(f'VM "{name}" is not running', 2)
    if o["timeout"] > 0:
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            return 0
        deadline = time.monotonic() + o["timeout"]
        while time.monotonic() < deadline:
            if not vm.running_pid():
                return 0
            time.sleep(0.1)
        if not vm.running_pid():
            return 0
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return 0
    except OSError as e:
        raise RuntimeErr(f'failed to forcefully terminate the VM "{name}": {e.errno}') from e
    return 0


def cmd_suspend(o: dict) -> int:
    home = tart_home()
    vm = storage.open_local(home, o["name"])
    pid = vm.running_pid()
    if not pid:
        raise RuntimeErr(f'VM "VM "{o["name"]}" is not running" is not running', 2)
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError as e:
        raise RuntimeErr(f"Failed to suspend the VM: {e}") from e
    return 0


def cmd_delete(o: dict) -> int:
    home = tart_home()
    for name in o["names"]:
        rn = RemoteName.parse(name)
        if rn is not None:
            storage.delete_oci(home, rn)
            continue
        vm = storage.open_local(home, name)
        if vm.running():
            raise RuntimeErr(f'VM "{name}" is running', 1)
        shutil.rmtree(vm.path)
    return 0


def cmd_rename(o: dict) -> int:
    home = tart_home()
    name, new = o["name"], o["new"]
    if "/" in new:
        raise UsageErr("<new-name> should be a local name")
    src = storage.local_vm(home, name)
    if "/" in name or not src.initialized():
        raise UsageErr(f"failed to rename a non-existent local VM: {name}")
    dst = storage.local_vm(home, new)
    if dst.exists():
        raise UsageErr(
            f"failed to rename VM {name}, target VM {new} already exists, delete it first!"
        )
    os.rename(src.path, dst.path)
    return 0


def cmd_fqn(o: dict) -> int:
    home = tart_home()
    rn = RemoteName.parse(o["name"])
    if rn is not None and rn.tag:
        link = storage.oci_entry(home, rn)
        if os.path.islink(link):
            out(f"{rn.repo}@{os.path.basename(os.readlink(link))}")
            return 0
    out(o["name"])
    return 0


def cmd_exec(argv: list[str]) -> int:
    """`tart exec [-i] [-t] NAME CMD...`: needs tart-guest-agent; the fake has none."""
    args = list(argv)
    while args and args[0] in ("-i", "-t", "-it", "-ti"):
        args.pop(0)
    if args and args[0].startswith("-"):
        raise UsageErr(f"Unknown option '{args[0]}'")
    if len(args) < 2:
        raise UsageErr(
            "Missing expected argument '<name>'"
            if not args
            else "Missing expected argument '<command> ...'"
        )
    home = tart_home()
    vm = storage.open_local(home, args[0])
    if not vm.running():
        raise RuntimeErr(f'VM "{args[0]}" is not running', 2)
    raise RuntimeErr(
        "Failed to connect to the VM using its control socket: connection refused, is the Tart "
        "Guest Agent running?"
    )


# ---------------------------------------------------------------------------
# prune (Commands/Prune.swift, Tart 2.35.0)


def _prunables(home: str, entries: str) -> list[tuple[str, float, int]]:
    """(path, access time, allocated bytes) of what `prune --entries` may remove.

    caches: OCI images by digest (never the tag links) and IPSW files; vms: local VMs
    that are not running.
    """
    found: list[tuple[str, float, int]] = []
    if entries == "caches":
        for name, vm in storage.list_oci(home):
            if "@" in name:
                found.append((vm.path, vm.accessed(), vm.allocated()))
        for path in storage.list_ipsws(home):
            st = os.stat(path)
            found.append((path, st.st_atime, st.st_blocks * 512))
    else:
        for vm in storage.list_local(home):
            if not vm.running():
                found.append((vm.path, vm.accessed(), vm.allocated()))
    return found


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def cmd_prune(o: dict) -> int:
    home = tart_home()
    budget = o["space_budget"]
    if o["cache_budget"] is not None:
        err("--cache-budget is deprecated, please use --space-budget")
        if budget is not None:
            raise UsageErr("--cache-budget is deprecated, please use --space-budget")
        budget = o["cache_budget"]
    if o["older_than"] is None and budget is None and not o["gc"]:
        raise UsageErr("at least one pruning criteria must be specified")
    if o["gc"]:
        storage.oci_gc_all(home)
    if o["entries"] not in ("caches", "vms"):
        raise UsageErr('unsupported --entries value, please specify either "caches" or "vms"')
    if o["older_than"] is not None:
        cutoff = time.time() - o["older_than"] * 86400
        for path, accessed, _ in _prunables(home, o["entries"]):
            if accessed <= cutoff:
                _remove(path)
    if budget is not None:
        # the most recently used entries that fit the budget stay; every other one goes
        left = budget * 1024 * 1024 * 1024
        doomed = []
        for path, _, size in sorted(_prunables(home, o["entries"]), key=lambda e: -e[1]):
            if size <= left:
                left -= size
            else:
                doomed.append(path)
        for path in doomed:
            _remove(path)
    return 0


def not_implemented(name: str):
    def run(o: dict) -> int:
        raise RuntimeErr(f"faketart: 'tart {name}' is not implemented by the fake")

    return run


# ---------------------------------------------------------------------------
# Command table (run is added by run.py)


def build_commands() -> dict[str, Command]:
    from . import run as _run

    fmt = Opt(
        ("--format",),
        "format",
        "value",
        "format",
        choice("text", "json"),
        "text",
        "Output format: text or json",
    )
    cmds = [
        Command(
            "clone",
            "Clone a VM",
            [
                Arg("source-name", "source", help="source VM name"),
                Arg("new-name", "new", help="new VM name"),
            ],
            [
                Opt(
                    ("--insecure",),
                    "insecure",
                    help="connect to the OCI registry via insecure HTTP protocol",
                ),
                Opt(
                    ("--concurrency",),
                    "concurrency",
                    "value",
                    "concurrency",
                    uint(),
                    4,
                    "network concurrency to use when pulling a remote VM from the OCI-compatible "
                    "registry",
                ),
                Opt(
                    ("--prune-limit",),
                    "prune_limit",
                    "value",
                    "n",
                    uint(),
                    100,
                    "limit automatic pruning to n gigabytes",
                ),
                Opt(("--deduplicate",), "deduplicate", hidden=True),
            ],
            cmd_clone,
        ),
        Command(
            "pull",
            "Pull a VM from a registry",
            [Arg("remote-name", "remote", help="remote VM name")],
            [
                Opt(
                    ("--insecure",),
                    "insecure",
                    help="connect to the OCI registry via insecure HTTP protocol",
                ),
                Opt(
                    ("--concurrency",),
                    "concurrency",
                    "value",
                    "concurrency",
                    uint(),
                    4,
                    "network concurrency to use when pulling",
                ),
                Opt(("--deduplicate",), "deduplicate", hidden=True),
            ],
            cmd_pull,
        ),
        Command(
            "login",
            "Login to a registry",
            [Arg("host", "host", help="host")],
            [
                Opt(("--username",), "username", "value", "username", None, None, "username"),
                Opt(("--password-stdin",), "password_stdin", help="password-stdin"),
                Opt(
                    ("--insecure",),
                    "insecure",
                    help="connect to the OCI registry via insecure HTTP protocol",
                ),
                Opt(
                    ("--no-validate",),
                    "no_validate",
                    help="skip validation of the registry's credentials before logging-in",
                ),
            ],
            cmd_login,
        ),
        Command(
            "logout", "Logout from a registry", [Arg("host", "host", help="host")], [], cmd_logout
        ),
        Command(
            "set",
            "Modify VM's configuration",
            [Arg("name", "name", help="VM name")],
            [
                Opt(("--cpu",), "cpu", "value", "cpu", uint(16), None, "Number of VM CPUs"),
                Opt(
                    ("--memory",),
                    "memory",
                    "value",
                    "memory",
                    uint(64),
                    None,
                    "VM memory size in megabytes",
                ),
                Opt(
                    ("--display",),
                    "display",
                    "value",
                    "display",
                    None,
                    None,
                    "VM display resolution in a format of WIDTHxHEIGHT[pt|px]",
                ),
                Opt(
                    ("--display-refit",),
                    "display_refit",
                    inversion="--no-display-refit",
                    help="Whether to automatically reconfigure the VM's display",
                    since="2.21.0",
                ),
                Opt(
                    ("--random-mac",),
                    "random_mac",
                    help="Generate a new random MAC address for the VM.",
                    since="2.10.0",
                ),
                Opt(
                    ("--random-serial",),
                    "random_serial",
                    help="Generate a new random serial number for the macOS VM.",
                    since="2.10.0",
                ),
                Opt(
                    ("--disk",),
                    "disk",
                    "value",
                    "disk",
                    None,
                    None,
                    "Replace the VM's disk with the specified disk image",
                ),
                Opt(
                    ("--disk-size",),
                    "disk_size",
                    "value",
                    "disk-size",
                    uint(16),
                    None,
                    "Resize the VMs disk to the specified size in GB",
                ),
            ],
            cmd_set,
        ),
        Command(
            "get", "Get a VM's configuration", [Arg("name", "name", help="VM name")], [fmt], cmd_get
        ),
        Command(
            "list",
            "List created VMs",
            [],
            [
                Opt(
                    ("--source",),
                    "source",
                    "value",
                    "source",
                    _source,
                    None,
                    "Only display VMs from local or OCI sources",
                ),
                fmt,
                Opt(("--quiet", "-q"), "quiet", help="Only display VM names"),
            ],
            cmd_list,
        ),
        Command(
            "ip",
            "Get VM's IP address",
            [Arg("name", "name", help="VM name")],
            [
                Opt(
                    ("--wait",),
                    "wait",
                    "value",
                    "wait",
                    uint(16),
                    0,
                    "Number of seconds to wait for a potential VM booting",
                ),
                Opt(
                    ("--resolver",),
                    "resolver",
                    "value",
                    "resolver",
                    choice("dhcp", "arp", "agent"),
                    "dhcp",
                    "Strategy for resolving IP address: dhcp, arp or agent",
                ),
            ],
            cmd_ip,
        ),
        Command(
            "stop",
            "Stop a VM",
            [Arg("name", "name", help="VM name")],
            [
                Opt(
                    ("--timeout", "-t"),
                    "timeout",
                    "value",
                    "timeout",
                    uint(),
                    30,
                    "Seconds to wait for graceful termination before forcefully terminating the VM",
                ),
            ],
            cmd_stop,
        ),
        Command("suspend", "Suspend a VM", [Arg("name", "name", help="VM name")], [], cmd_suspend),
        Command(
            "delete",
            "Delete a VM",
            [Arg("name", "names", array=True, help="VM name")],
            [],
            cmd_delete,
        ),
        Command(
            "rename",
            "Rename a local VM",
            [Arg("name", "name", help="VM name"), Arg("new-name", "new", help="new VM name")],
            [],
            cmd_rename,
        ),
        Command(
            "fqn",
            "Get a fully-qualified VM name",
            [Arg("name", "name", help="VM name")],
            [],
            cmd_fqn,
            hidden=True,
        ),
        Command(
            "create",
            "Create a VM",
            [Arg("name", "name", help="VM name")],
            [
                Opt(("--from-ipsw",), "from_ipsw", "value", "path"),
                Opt(("--linux",), "linux"),
                Opt(("--disk-size",), "disk_size", "value", "disk-size", uint(16), 50),
                Opt(
                    ("--disk-format",),
                    "disk_format",
                    "value",
                    "disk-format",
                    choice("raw", "asif"),
                    "raw",
                ),
            ],
            not_implemented("create"),
        ),
        Command(
            "push",
            "Push a VM to a registry",
            [Arg("local-name", "name"), Arg("remote-names", "remotes", array=True)],
            [
                Opt(("--insecure",), "insecure"),
                Opt(("--concurrency",), "concurrency", "value", "concurrency", uint(), 4),
                Opt(("--chunk-size",), "chunk_size", "value", "chunk-size", uint(), 0),
                Opt(("--label",), "label", "array", "label"),
                Opt(("--populate-cache",), "populate_cache"),
            ],
            not_implemented("push"),
        ),
        Command(
            "import",
            "Import VM from a compressed .tvm file",
            [Arg("path", "path"), Arg("name", "name")],
            [],
            not_implemented("import"),
        ),
        Command(
            "export",
            "Export VM to a compressed .tvm file",
            [Arg("name", "name"), Arg("path", "path", optional=True)],
            [],
            not_implemented("export"),
        ),
        Command(
            "prune",
            "Prune OCI and IPSW caches or local VMs",
            [],
            [
                Opt(
                    ("--entries",),
                    "entries",
                    "value",
                    "entries",
                    None,
                    "caches",
                    'Entries to remove: "caches" targets OCI and IPSW caches and "vms" targets '
                    "local VMs.",
                ),
                Opt(
                    ("--older-than",),
                    "older_than",
                    "value",
                    "n",
                    uint(),
                    None,
                    "Remove entries that were last accessed more than n days ago",
                ),
                Opt(("--cache-budget",), "cache_budget", "value", "n", uint(), None, hidden=True),
                Opt(
                    ("--space-budget",),
                    "space_budget",
                    "value",
                    "n",
                    uint(),
                    None,
                    "Remove the least recently used entries that do not fit the specified space "
                    "size budget n, expressed in gigabytes",
                ),
                Opt(("--gc",), "gc", hidden=True),
            ],
            cmd_prune,
        ),
        _run.COMMAND,
    ]
    return {c.name: c for c in cmds}
