"""What the driver reports about the host: attributes and a health with a stable reason."""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
from typing import Final

import trio

from tart_trio._config import PluginConfig
from tart_trio._errors import TartTrioError
from tart_trio._model import AttributeValue, Fingerprint
from tart_trio._tart.cli import Tart, UnknownUser, locate_tart, resolve_user, unreachable_user
from tart_trio._tart.vms import running_macos_vms

PREFIX: Final = "driver.tart"
TART_CALL_SECONDS: Final = 10.0
ATTRIBUTES: Final = tuple(
    f"{PREFIX}.{name}"
    for name in (
        "path",
        "version",
        "host_virtualization",
        "macos_version",
        "chip",
        "macos_vm_slots",
        "macos_vm_slots_free",
    )
)

DISABLED: Final = "The tart driver is disabled in the plugin configuration (enabled = false)."
NOT_FOUND: Final = (
    "The tart executable was not found: install Tart (brew install cirruslabs/cli/tart) "
    "or set tart_path in the plugin configuration."
)
VERSION_FAILED: Final = (
    "`tart --version` failed; check that the tart executable in tart_path runs for the "
    "user the Nomad client runs as."
)
LIST_FAILED: Final = (
    "`tart list` failed; check that TART_HOME (tart_home) exists and is writable by the "
    "user that runs tart."
)
SOFTNET_MISSING: Final = (
    "softnet was not found next to tart or in /opt/homebrew/bin, but allowed_network_modes "
    "allows softnet or host networking: install it (brew install cirruslabs/cli/softnet) "
    "or remove those modes."
)
ROOT_ON_MACOS_15: Final = (
    "Running as root on macOS 15 or later: macOS guests fail to start when tart runs as root. "
    "Set tart_user in the plugin configuration to the user who owns the VMs."
)
HOME_MISSING: Final = (
    "The home directory of tart_user does not exist; tart keeps its VMs in ~/.tart and "
    "needs it. Create the user's home directory or set tart_home."
)
HEALTHY: Final = "Healthy"


def host_supports_virtualization() -> bool:
    """Tart runs VMs only on Apple Silicon Macs."""
    return platform.system() == "Darwin" and platform.machine() == "arm64"


def _command_output(*argv: str) -> str:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


@functools.cache
def _probe(*argv: str) -> str:
    """A fact about the host that cannot change while it runs (its OS release, its chip)."""
    return _command_output(*argv)


def macos_version() -> str:
    """``sw_vers -productVersion`` (e.g. ``15.3.1``); "" where there is no sw_vers.

    Asked of sw_vers rather than read by Python, which reports 10.16 on macOS 11+ when
    the interpreter was built against an older SDK.
    """
    sw_vers = shutil.which("sw_vers") or shutil.which("sw_vers", path="/usr/bin")
    return _probe(sw_vers, "-productVersion") if sw_vers else ""


def _major(version: str) -> int:
    head = version.split(".", maxsplit=1)[0]
    return int(head) if head.isdigit() else 0


def host_attributes() -> dict[str, AttributeValue]:
    """The host's macOS version and chip ("" elsewhere, which deletes the attribute)."""
    darwin = platform.system() == "Darwin"
    return {
        f"{PREFIX}.host_virtualization": host_supports_virtualization(),
        f"{PREFIX}.macos_version": macos_version(),
        f"{PREFIX}.chip": _probe("sysctl", "-n", "machdep.cpu.brand_string") if darwin else "",
    }


def softnet_missing(config: PluginConfig, tart: Tart) -> bool:
    """Whether an allowed network mode needs softnet and tart would not find it."""
    if not {"softnet", "host"} & set(config.allowed_network_modes):
        return False
    return shutil.which("softnet", path=tart.env.get("PATH")) is None


async def fingerprint(config: PluginConfig) -> Fingerprint:
    """Probe tart once and describe the result."""
    if not config.enabled:
        return Fingerprint(attributes={}, health="undetected", description=DISABLED)
    path = locate_tart(config.tart_path)
    if path is None:
        return Fingerprint(attributes={}, health="undetected", description=NOT_FOUND)
    me = unreachable_user(config.tart_user)
    if me is not None:
        return Fingerprint(
            attributes={},
            health="unhealthy",
            description=(
                f"tart_user is {config.tart_user!r}, but the plugin runs as {me!r} and not as "
                f"root, so it cannot run tart as {config.tart_user!r}: run the Nomad client as "
                "root or as that user, or remove tart_user."
            ),
        )
    try:
        user = resolve_user(config.tart_user)
    except UnknownUser as exc:
        return Fingerprint(attributes={}, health="unhealthy", description=f"{exc}.")
    if user is not None and not await trio.Path(user.home).is_dir():
        return Fingerprint(attributes={}, health="unhealthy", description=HOME_MISSING)
    tart = Tart(path, config.tart_home, user=user)
    attributes: dict[str, AttributeValue] = {f"{PREFIX}.path": path, **host_attributes()}
    try:
        with trio.fail_after(TART_CALL_SECONDS):
            attributes[f"{PREFIX}.version"] = await tart.version()
    except (TartTrioError, OSError, trio.TooSlowError):
        return Fingerprint(attributes=attributes, health="unhealthy", description=VERSION_FAILED)
    try:
        with trio.fail_after(TART_CALL_SECONDS * 3):
            running = await running_macos_vms(tart)
    except (TartTrioError, OSError, trio.TooSlowError, ValueError):
        return Fingerprint(attributes=attributes, health="unhealthy", description=LIST_FAILED)
    attributes[f"{PREFIX}.macos_vm_slots"] = config.max_macos_vms
    attributes[f"{PREFIX}.macos_vm_slots_free"] = max(config.max_macos_vms - len(running), 0)
    as_root = os.geteuid() == 0 and user is None
    if as_root and _major(str(attributes[f"{PREFIX}.macos_version"])) >= 15:
        return Fingerprint(attributes=attributes, health="unhealthy", description=ROOT_ON_MACOS_15)
    if softnet_missing(config, tart):
        return Fingerprint(attributes=attributes, health="unhealthy", description=SOFTNET_MISSING)
    return Fingerprint(attributes=attributes, health="healthy", description=HEALTHY)


def with_removals(current: Fingerprint, previous_keys: set[str]) -> Fingerprint:
    """Send "" for attributes we reported before and no longer do (Nomad keeps them else)."""
    gone = dict.fromkeys(previous_keys - set(current.attributes), "")
    if not gone:
        return current
    return Fingerprint(
        attributes={**current.attributes, **gone},
        health=current.health,
        description=current.description,
    )
