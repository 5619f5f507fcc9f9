"""What the driver reports about the host: attributes and a health with a stable reason.

A few gates come first (the driver is enabled, tart exists, the tart user can be used);
then each concern of the host is one function (:data:`CONCERNS`) that returns a
:class:`Finding`: attributes, and optionally a *problem* (the driver is unhealthy: Nomad
places no tart task here; the first problem is the health description) or a *notice* (the
driver stays healthy, but some jobs cannot run here; notices follow "Healthy" in the
description). A concern that fails unexpectedly becomes a problem naming it and is logged:
nothing ends the Fingerprint stream. To report something new, add a concern, and its
attributes to :data:`ATTRIBUTES`.

Every report names every attribute of :data:`ATTRIBUTES`, "" for those that do not apply
(the driver disabled, tart missing, a check that could not tell, an empty image cache):
Nomad's client keeps an attribute a report leaves out, and removes one only when it
changes to "" (``client/node_updater.go``).
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import pwd
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

import trio

from tart_trio._config.plugin import PluginConfig
from tart_trio._errors import TartTrioError
from tart_trio._host import login
from tart_trio._host.users import UnknownUser, resolve_user, unreachable_user
from tart_trio._images import cache
from tart_trio._model import AttributeValue, Fingerprint, Health
from tart_trio._tart import softnet as softnet_tool
from tart_trio._tart import versions
from tart_trio._tart.cli import Tart, locate_tart
from tart_trio._tart.vms import running_macos_vms
from tart_trio._task import slots

log = logging.getLogger("fingerprint")

PREFIX: Final = "driver.tart"
TART_CALL_SECONDS: Final = 10.0
#: Every attribute the driver can report; each report names them all (:func:`report`).
ATTRIBUTES: Final = (
    *(
        f"{PREFIX}.{name}"
        for name in (
            "path",
            "version",
            "host_virtualization",
            "macos_version",
            "chip",
            "macos_vm_slots",
            "softnet",
            "login_session",
        )
    ),
    slots.FREE,
    slots.LEAKED,
    *cache.ATTRIBUTES,
)

DISABLED: Final = "The tart driver is disabled in the plugin configuration (enabled = false)."
NOT_FOUND: Final = (
    "The tart executable was not found: install Tart (brew install openai/tools/tart) "
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
SOFTNET_UNAVAILABLE: Final = "softnet and host networking are unavailable:"
ROOT_ON_MACOS_15: Final = (
    "Running as root on macOS 15 or later: macOS guests fail to start when tart runs as root. "
    "Set tart_user in the plugin configuration to the user who owns the VMs."
)
HOME_MISSING: Final = (
    "The home directory of tart_user does not exist; tart keeps its VMs in ~/.tart and "
    "needs it. Create the user's home directory or set tart_home."
)
NO_LAUNCHCTL: Final = (
    "run_in_login_session is set, but launchctl was not found: it starts tart run in "
    "tart_user's login session, which exists only on macOS."
)
HEALTHY: Final = "Healthy"


@dataclass(frozen=True)
class Finding:
    """What one concern found: attributes, and a problem or a notice (one sentence each)."""

    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    problem: str = ""
    notice: str = ""
    #: With a problem: the concerns after this one cannot tell anything (tart is unusable).
    final: bool = False


@dataclass
class Probe:
    """What the concerns share: the configuration, tart, and what earlier concerns learnt."""

    config: PluginConfig
    tart: Tart
    macos_version: str = ""
    tart_version: versions.Version | None = None


Concern = Callable[[Probe], Awaitable[Finding]]


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
    """The host's macOS version and chip ("" elsewhere)."""
    darwin = platform.system() == "Darwin"
    return {
        f"{PREFIX}.host_virtualization": host_supports_virtualization(),
        f"{PREFIX}.macos_version": macos_version(),
        f"{PREFIX}.chip": _probe("sysctl", "-n", "machdep.cpu.brand_string") if darwin else "",
    }


# ---- the concerns, in the order they are checked -----------------------------------


async def host(probe: Probe) -> Finding:
    """The Mac: macOS version, chip, whether it can run VMs at all."""
    attributes = host_attributes()
    probe.macos_version = str(attributes[f"{PREFIX}.macos_version"])
    return Finding(attributes)


async def tart_version(probe: Probe) -> Finding:
    """``tart --version``: it must run, and be at least the oldest supported version."""
    attributes: dict[str, AttributeValue] = {f"{PREFIX}.path": probe.tart.path}
    try:
        with trio.fail_after(TART_CALL_SECONDS):
            raw = await versions.installed(probe.tart, fresh=True)
    except (TartTrioError, OSError, trio.TooSlowError):
        return Finding(attributes, problem=VERSION_FAILED, final=True)
    probe.tart_version = versions.parse(raw)
    # Parsed (2.35.0) so that constraints can use Nomad's "version" operator; a build
    # from source prints SNAPSHOT, which is published as it is.
    shown = raw if probe.tart_version is None else versions.text(probe.tart_version)
    attributes[f"{PREFIX}.version"] = shown
    return Finding(attributes, problem=versions.too_old(probe.tart_version))


async def vm_slots(probe: Probe) -> Finding:
    """Apple's limit of running macOS VMs, counted over every VM on the host."""
    try:
        with trio.fail_after(TART_CALL_SECONDS * 3):
            running = await running_macos_vms(probe.tart)
    except (TartTrioError, OSError, trio.TooSlowError, ValueError):
        return Finding(problem=LIST_FAILED, final=True)
    limit = probe.config.max_macos_vms
    return Finding(
        {
            f"{PREFIX}.macos_vm_slots": limit,
            slots.FREE: max(limit - len(running), 0),
        }
    )


async def root_on_macos_15(probe: Probe) -> Finding:
    """macOS guests do not start when tart runs as root on macOS 15 and later."""
    as_root = os.geteuid() == 0 and probe.tart.user is None
    if as_root and _major(probe.macos_version) >= 15:
        return Finding(problem=ROOT_ON_MACOS_15)
    return Finding()


async def softnet(probe: Probe) -> Finding:
    """softnet, which softnet and host networking need; shared and bridged do not.

    ``driver.tart.softnet`` says whether jobs may use those modes here (allowed, softnet
    found and able to get root); when they may not, the driver stays healthy for the
    others and says why.
    """
    key = f"{PREFIX}.softnet"
    if not set(softnet_tool.MODES) & set(probe.config.allowed_network_modes):
        return Finding({key: False})
    found = await softnet_tool.check(probe.tart)
    if found.runs:
        return Finding({key: True})
    return Finding({key: False}, notice=f"{SOFTNET_UNAVAILABLE} {found.problem}")


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


async def login_session(probe: Probe) -> Finding:
    """Whether the user that runs tart has a GUI login session, which macOS 15.2 and later
    guests need (on macOS 15 and later hosts), and whether tart runs in it."""
    launchctl = login.launchctl(probe.tart.env)
    if launchctl is None:
        if probe.config.run_in_login_session:
            return Finding(problem=NO_LAUNCHCTL)
        return Finding()  # not a Mac
    user = probe.tart.user
    uid = user.uid if user is not None else os.geteuid()
    if uid == 0:
        return Finding()  # root has no login session of its own: see root_on_macos_15
    logged_in = await login.logged_in(launchctl, uid)
    attributes = {f"{PREFIX}.login_session": logged_in}
    if _major(probe.macos_version) < 15:
        return Finding(attributes)
    name = user.name if user is not None else _user_name(uid)
    if not logged_in:
        return Finding(
            attributes,
            notice=f"{name} has no GUI login session: macOS 15.2 and later guests fail to "
            f"start without one (Tart FAQ, Headless machines). Log {name} in at the console, "
            "e.g. with automatic login.",
        )
    if user is not None and not probe.config.run_in_login_session:
        return Finding(
            attributes,
            notice=f"tart runs as {name} outside its login session, where macOS 15.2 and later "
            "guests fail to start: set run_in_login_session = true.",
        )
    return Finding(attributes)


async def image_cache(probe: Probe) -> Finding:
    """The images in Tart's cache and the free disk, for constraints and affinities."""
    return Finding(await cache.fingerprint_attributes(probe.tart))


CONCERNS: Final[tuple[tuple[str, Concern], ...]] = (
    ("the host", host),
    ("the tart version", tart_version),
    ("the macOS VM slots", vm_slots),
    ("running as root", root_on_macos_15),
    ("softnet", softnet),
    ("the login session", login_session),
    ("the image cache", image_cache),
)


async def _checked(what: str, concern: Concern, probe: Probe) -> Finding:
    try:
        return await concern(probe)
    except Exception as exc:
        log.error("a fingerprint check failed unexpectedly", exc_info=exc, extra={"check": what})
        return Finding(
            problem=f"Checking {what} failed unexpectedly ({type(exc).__name__}: {exc}); "
            "see the plugin's log."
        )


def report(
    attributes: Mapping[str, AttributeValue], health: Health, description: str
) -> Fingerprint:
    """A fingerprint that names every attribute of :data:`ATTRIBUTES`: "" where none applies.

    An attribute that is not declared there is a mistake in this module, and fails the
    fingerprint (as an unhealthy driver that names it) rather than go out once and stay
    on the node for good.
    """
    undeclared = sorted(set(attributes) - set(ATTRIBUTES))
    if undeclared:
        raise ValueError(f"attributes not declared in ATTRIBUTES: {', '.join(undeclared)}")
    return Fingerprint({**dict.fromkeys(ATTRIBUTES, ""), **attributes}, health, description)


def _gate(config: PluginConfig) -> Fingerprint | Tart:
    """The driver is enabled, tart exists and the tart user can be used: then ``Tart``."""
    if not config.enabled:
        return report({}, "undetected", DISABLED)
    path = locate_tart(config.tart_path)
    if path is None:
        return report({}, "undetected", NOT_FOUND)
    me = unreachable_user(config.tart_user)
    if me is not None:
        return report(
            {},
            "unhealthy",
            f"tart_user is {config.tart_user!r}, but the plugin runs as {me!r} and not as "
            f"root, so it cannot run tart as {config.tart_user!r}: run the Nomad client as "
            "root or as that user, or remove tart_user.",
        )
    try:
        user = resolve_user(config.tart_user)
    except UnknownUser as exc:
        return report({}, "unhealthy", f"{exc}.")
    if user is not None and not os.path.isdir(user.home):
        return report({}, "unhealthy", HOME_MISSING)
    return Tart(path, config.tart_home, user=user)


async def fingerprint(config: PluginConfig) -> Fingerprint:
    """Probe the host once and describe the result."""
    gate = _gate(config)
    if isinstance(gate, Fingerprint):
        return gate
    probe = Probe(config, gate)
    attributes: dict[str, AttributeValue] = {}
    problems: list[str] = []
    notices: list[str] = []
    for what, concern in CONCERNS:
        finding = await _checked(what, concern, probe)
        attributes.update(finding.attributes)
        if finding.problem:
            problems.append(finding.problem)
        if finding.notice:
            notices.append(finding.notice)
        if finding.problem and finding.final:
            break
    if problems:
        return report(attributes, "unhealthy", problems[0])
    description = " ".join([f"{HEALTHY}.", *notices]) if notices else HEALTHY
    return report(attributes, "healthy", description)


async def safe_fingerprint(config: PluginConfig) -> Fingerprint:
    """:func:`fingerprint`, with any unexpected error turned into an unhealthy report."""
    try:
        return await fingerprint(config)
    except Exception as exc:
        log.error("fingerprinting failed unexpectedly", exc_info=exc)
        return report(
            {},
            "unhealthy",
            f"Fingerprinting failed unexpectedly ({type(exc).__name__}: {exc}); "
            "see the plugin's log.",
        )
