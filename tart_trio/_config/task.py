"""The job's ``config { }`` of a tart task: msgspec Structs, the single source of truth.

``TaskConfig`` and its blocks, each next to the checks msgspec's types cannot make
(``validate_task_config``), and what follows from a config (the network mode, a share's
name and tag). The hclspec Nomad decodes the job with is derived from these Structs
(``hclspec``); ``decode`` turns Nomad's msgpack into them.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
from collections.abc import Collection
from typing import Annotated, ClassVar, Final

from msgspec import Meta

from tart_trio._config.base import Base, doc
from tart_trio._config.durations import parse_duration
from tart_trio._errors import ConfigError

NAT_MODES: Final = ("shared", "nat", "default")
NETWORK_MODES: Final = (*NAT_MODES, "host", "bridged", "softnet")
CACHING_MODES: Final = ("automatic", "uncached", "cached")
SYNC_MODES: Final = ("fsync", "full", "none")
SECRETS_SHARE: Final = "secrets"
#: With a command, these are shared read-write beside secrets/: (name in the guest, path
#: under the allocation directory). Of the allocation's alloc/ only data/ and tmp/: its
#: logs/ holds every task's log FIFOs and rotated logs, which are Nomad's, not the guest's.
COMMAND_SHARES: Final = (
    ("local", "{task}/local"),
    ("alloc-data", "alloc/data"),
    ("alloc-tmp", "alloc/tmp"),
)
DEFAULT_TAG: Final = "com.apple.virtio-fs.automount"
#: The longest ``timeout``: BSD's sleep(1), macOS's, refuses more than INT_MAX seconds.
TIMEOUT_MAX_SECONDS: Final = 2**31 - 1
#: ``command`` and ``args``, quoted for the guest's shell, travel with the runner script as
#: one argument of ``sh -c``; Linux caps one argument at 128 KiB (MAX_ARG_STRLEN).
COMMAND_LINE_MAX: Final = 64 << 10
DEFAULT_LOG_COMMAND: Final = ("/usr/bin/log", "stream", "--style", "syslog", "--level", "info")


class Auth(Base, frozen=True):
    """Credentials for a private image registry (``auth { }``)."""

    __secret_fields__: ClassVar[frozenset[str]] = frozenset({"password"})
    username: Annotated[str, doc("Registry user name.")]
    password: Annotated[str, doc("Registry password or token; never logged.")]


class Network(Base, frozen=True):
    """VM networking (``network { }``)."""

    mode: Annotated[str | None, doc("shared (NAT, default), host, bridged or softnet.")] = None
    bridged_interface: Annotated[
        str | None, doc("Host interface for mode = bridged, e.g. en0.")
    ] = None
    softnet_allow: Annotated[
        tuple[str, ...], doc("CIDRs Softnet lets the VM reach; implies softnet.")
    ] = ()
    softnet_expose: Annotated[
        tuple[str, ...], doc("EXTERNAL:INTERNAL TCP port forwards; implies softnet.")
    ] = ()


class RootDisk(Base, frozen=True):
    """Root disk behaviour (``root_disk { }``)."""

    readonly: Annotated[bool, doc("Attach the root disk read-only (ro).")] = False
    caching_mode: Annotated[str | None, doc("automatic, uncached or cached.")] = None
    sync_mode: Annotated[str | None, doc("fsync, full or none.")] = None


class DirectoryOptions(Base, frozen=True):
    """Options of one directory share (``directory { options { } }``)."""

    readonly: Annotated[bool, doc("Share read-only (:ro).")] = False
    tag: Annotated[str | None, doc("VirtioFS tag; custom tags are not automounted.")] = None


class Directory(Base, frozen=True):
    """A host directory shared into the VM (``directory { }``, repeatable)."""

    path: Annotated[str, doc("Absolute host path to share.")]
    name: Annotated[
        str | None, doc("Folder name in the guest; defaults to the path's last component.")
    ] = None
    options: DirectoryOptions | None = None


class TaskConfig(Base, frozen=True):
    """The job's ``config { }`` block for ``driver = "tart"``."""

    __secret_fields__: ClassVar[frozenset[str]] = frozenset({"ssh_password"})
    url: Annotated[str, doc("Tart image to clone, e.g. ghcr.io/cirruslabs/macos-sequoia-base.")]
    ssh_user: Annotated[
        str, doc("Guest user for logs and exec over SSH (required unless pull_only).")
    ] = ""
    ssh_password: Annotated[
        str, doc("Guest user's password; never logged (required unless pull_only).")
    ] = ""
    show_ui: Annotated[bool, doc("Open Tart's window instead of --no-graphics.")] = False
    disk_size: Annotated[
        int, Meta(ge=0, le=65535, description="Grow the disk to this many GB; 0 keeps it.")
    ] = 0
    auth: Auth | None = None
    network: Network | None = None
    root_disk: RootDisk | None = None
    directory: tuple[Directory, ...] = ()
    log_command: Annotated[
        tuple[str, ...],
        doc("Command run in the guest over SSH whose output becomes the task's stdout."),
    ] = DEFAULT_LOG_COMMAND
    force_pull: Annotated[
        bool, doc("Check a cached tag against the registry (tart pull) before cloning.")
    ] = False
    pull_only: Annotated[
        bool, doc("Only make the image present on the node, then exit 0 (no VM).")
    ] = False
    warm_start: Annotated[
        bool,
        doc(
            "Resume a suspended clone of the plugin's warm pool for this image when the task "
            "matches it exactly (a command task); otherwise, or on any doubt, boot cold."
        ),
    ] = False
    ports: Annotated[
        tuple[str, ...],
        doc(
            "Labels of the group network's ports to forward (TCP and UDP) from the host's "
            "allocated address to the VM's port `to` (or the same port)."
        ),
    ] = ()

    # -- a command (batch and CI jobs) -------------------------------------------------
    command: Annotated[
        str,
        doc("Run this in the guest once it answers SSH; the task ends with its exit code."),
    ] = ""
    args: Annotated[tuple[str, ...], doc("Arguments of command, each passed as written.")] = ()
    work_dir: Annotated[
        str,
        doc("Where command runs in the guest; relative paths start at the shared task dir."),
    ] = ""
    timeout: Annotated[
        str, doc("Kill command and fail the task after this long, e.g. 2h; empty: no limit.")
    ] = ""
    guest_logs: Annotated[
        bool | None,
        doc("Stream log_command's output into stdout; default true, false with command."),
    ] = None

    @property
    def streams_guest_logs(self) -> bool:
        """Whether the guest's logs (log_command) go to the task's stdout."""
        return self.guest_logs if self.guest_logs is not None else not self.command

    @property
    def timeout_seconds(self) -> float:
        """The command's time limit in seconds (0: none)."""
        return parse_duration(self.timeout) if self.timeout else 0.0


def _one_of(field: str, value: str | None, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        raise ConfigError(field, f"{value!r} is not one of: {', '.join(allowed)}")


def network_mode(network: Network | None) -> str:
    """The effective mode: shared (NAT), host, bridged or softnet."""
    if network is None:
        return "shared"
    if network.mode is None:
        return "softnet" if network.softnet_allow or network.softnet_expose else "shared"
    return "shared" if network.mode in NAT_MODES else network.mode


def _validate_network(network: Network) -> None:
    _one_of("network.mode", network.mode, NETWORK_MODES)
    mode = network_mode(network)
    softnet_fields = [
        name for name in ("softnet_allow", "softnet_expose") if getattr(network, name)
    ]
    if softnet_fields and mode != "softnet":
        raise ConfigError(
            f"network.{softnet_fields[0]}",
            f"only applies to softnet networking, but mode is {network.mode!r}; "
            'remove it or set mode = "softnet"',
        )
    if mode == "bridged" and not network.bridged_interface:
        raise ConfigError(
            "network.bridged_interface", 'is required with mode = "bridged" (e.g. "en0")'
        )
    if network.bridged_interface is not None and mode != "bridged":
        raise ConfigError(
            "network.bridged_interface", f'only applies to mode = "bridged", not {mode!r}'
        )
    for i, cidr in enumerate(network.softnet_allow):
        try:
            ipaddress.IPv4Network(cidr, strict=False)
        except ValueError:
            raise ConfigError(
                f"network.softnet_allow[{i}]",
                f"{cidr!r} is not an IPv4 CIDR such as 192.168.0.0/24",
            ) from None
    for i, spec in enumerate(network.softnet_expose):
        _validate_expose(f"network.softnet_expose[{i}]", spec)


def _validate_expose(field: str, spec: str) -> None:
    parts = spec.split(":")
    ok = len(parts) == 2 and all(p.isdigit() and 1 <= int(p) <= 65535 for p in parts)
    if not ok:
        raise ConfigError(
            field, f'{spec!r} is not EXTERNAL:INTERNAL with ports 1-65535, e.g. "2222:22"'
        )


def _validate_root_disk(root_disk: RootDisk) -> None:
    _one_of("root_disk.caching_mode", root_disk.caching_mode, CACHING_MODES)
    _one_of("root_disk.sync_mode", root_disk.sync_mode, SYNC_MODES)


def images_remote(url: str) -> bool:
    """Tart's test for a remote image name (``host/namespace[:tag|@digest]``)."""
    return "/" in url


_SHARE_FORBIDDEN: Final = (":", ",")


def share_name(directory: Directory) -> str | None:
    """The folder name a share gets in the guest (None: contents at the mount root)."""
    if directory.name is not None:
        return directory.name
    if directory.options is not None and directory.options.tag is not None:
        return None
    return directory.path.rstrip("/").rsplit("/", 1)[-1] or None


def command_shares(alloc_dir: str, task_name: str) -> list[tuple[str, str]]:
    """A command task's read-write shares: (name in the guest, host path)."""
    return [
        (name, os.path.join(alloc_dir, *path.format(task=task_name).split("/")))
        for name, path in COMMAND_SHARES
    ]


def share_tag(directory: Directory) -> str:
    """The VirtioFS tag a share is attached with."""
    if directory.options is not None and directory.options.tag is not None:
        return directory.options.tag
    return DEFAULT_TAG


def _validate_directories(
    directories: tuple[Directory, ...], reserved: tuple[str, ...] = (SECRETS_SHARE,)
) -> None:
    by_tag: dict[str, list[tuple[int, str | None]]] = {
        DEFAULT_TAG: [(-1 - n, name) for n, name in enumerate(reserved)]
    }
    for i, directory in enumerate(directories):
        field = f"directory[{i}]"
        if not directory.path.startswith("/"):
            raise ConfigError(f"{field}.path", f"{directory.path!r} is not an absolute path")
        checks = [("path", directory.path), ("name", directory.name)]
        if directory.options is not None:
            checks.append(("options.tag", directory.options.tag))
        for key, value in checks:
            if value is not None and (value == "" or any(c in value for c in _SHARE_FORBIDDEN)):
                raise ConfigError(
                    f"{field}.{key}",
                    f"{value!r} must be non-empty and contain "
                    "neither ':' nor ',' (Tart's --dir syntax)",
                )
        name = share_name(directory)
        if name is None and directory.path.rstrip("/") == "":
            raise ConfigError(f"{field}.name", "is required when sharing /")
        by_tag.setdefault(share_tag(directory), []).append((i, name))
    for tag, shares in by_tag.items():
        seen: dict[str, int] = {}
        for i, name in shares:
            if name is None and len(shares) > 1:
                raise ConfigError(
                    f"directory[{i}].name",
                    f"is required: tag {tag!r} has several shares, and each of them must be named",
                )
            if name is not None and name in seen:
                what = (
                    f"is reserved for the task's {name}/ directory"
                    if seen[name] < 0
                    else f"is already used by directory[{seen[name]}]"
                )
                raise ConfigError(f"directory[{i}].name", f"{name!r} {what} on tag {tag!r}")
            if name is not None:
                seen[name] = i


def validate_task_config(config: TaskConfig) -> None:
    """Check everything msgspec's types cannot, naming the field and the allowed values."""
    if not config.url.strip():
        raise ConfigError("url", "must not be empty")
    if config.pull_only:
        if not images_remote(config.url):
            raise ConfigError(
                "pull_only", f"needs a remote image, but url {config.url!r} names a local VM"
            )
    else:
        for field in ("ssh_user", "ssh_password"):
            if not getattr(config, field).strip():
                raise ConfigError(field, "is required (it may be left out only with pull_only)")
    if not config.log_command or not config.log_command[0]:
        raise ConfigError("log_command", 'must name a command, e.g. ["/usr/bin/log", ...]')
    if config.auth is not None and not config.auth.username:
        raise ConfigError("auth.username", "must not be empty")
    if config.network is not None:
        _validate_network(config.network)
    if config.root_disk is not None:
        _validate_root_disk(config.root_disk)
    _validate_command(config)
    _validate_ports(config)
    _validate_warm_start(config)
    reserved = (SECRETS_SHARE, *(name for name, _ in COMMAND_SHARES))
    reserved = reserved if config.command else (SECRETS_SHARE,)
    _validate_directories(config.directory, reserved)


def _validate_warm_start(config: TaskConfig) -> None:
    if config.warm_start and config.pull_only:
        raise ConfigError("warm_start", "does not apply with pull_only (no VM is started)")


def _validate_ports(config: TaskConfig) -> None:
    if config.ports and config.pull_only:
        raise ConfigError("ports", "does not apply with pull_only (no VM is started)")
    seen: set[str] = set()
    for i, label in enumerate(config.ports):
        if not label.strip():
            raise ConfigError(f"ports[{i}]", "must name a port label of the group's network block")
        if label in seen:
            raise ConfigError(f"ports[{i}]", f"{label!r} is listed twice")
        seen.add(label)


def check_ports(config: TaskConfig, allocated: Collection[str]) -> None:
    """Every label in ``ports`` is a port Nomad allocated to the group (StartTask's check)."""
    for i, label in enumerate(config.ports):
        if label not in allocated:
            offered = ", ".join(sorted(allocated)) or "none"
            raise ConfigError(
                f"ports[{i}]",
                f"port {label!r} is not in the group's network block (its ports: {offered}); "
                f'declare it there, e.g. network {{ port "{label}" {{ to = 8080 }} }}',
            )


def _validate_command(config: TaskConfig) -> None:
    """command, args, work_dir and timeout: what a shell in the guest can be given."""
    if config.command and config.pull_only:
        raise ConfigError("command", "does not apply with pull_only (no VM is started)")
    if not config.command:
        for field in ("args", "work_dir", "timeout"):
            if getattr(config, field):
                raise ConfigError(field, "only applies with command (the command to run)")
        return
    if not config.command.strip():
        raise ConfigError("command", 'must name a program, e.g. "/bin/bash"')
    texts = [("command", config.command), ("work_dir", config.work_dir)]
    texts += [(f"args[{i}]", arg) for i, arg in enumerate(config.args)]
    for field, text in texts:
        if "\0" in text:
            raise ConfigError(field, "must not contain a NUL character")
    if config.timeout:
        try:
            seconds = parse_duration(config.timeout)
        except ValueError as exc:
            raise ConfigError("timeout", str(exc)) from None
        if seconds < 1:
            raise ConfigError("timeout", "must be at least 1s")
        if seconds > TIMEOUT_MAX_SECONDS:
            raise ConfigError(
                "timeout",
                f"must be at most {TIMEOUT_MAX_SECONDS}s (about 68 years): the guest's sleep "
                "takes no longer",
            )
    quoted = len(" ".join(shlex.quote(word) for word in (config.command, *config.args)))
    if quoted > COMMAND_LINE_MAX:
        raise ConfigError(
            "args",
            f"command and args take {quoted} bytes as the guest's shell receives them; at most "
            f"{COMMAND_LINE_MAX} fit in the one argument Linux guests allow. Put large "
            "inputs in a file instead (a template or artifact in local/)",
        )
