"""The agent's plugin block: ``plugin "nomad-driver-tart" { config { } }``.

``PluginConfig`` and its blocks (``gc``, ``pre_pull`` and its ``auth``), each next to the
checks msgspec's types cannot make.
"""

from __future__ import annotations

import re
import sys
from typing import Annotated, ClassVar, Final

from msgspec import Meta

from tart_trio._config.base import Base, doc
from tart_trio._config.durations import parse_duration
from tart_trio._errors import ConfigError


class RegistryAuth(Base, frozen=True):
    """Credentials the pre-pull uses for one registry (``pre_pull { auth { } }``)."""

    __secret_fields__: ClassVar[frozenset[str]] = frozenset({"password"})
    registry: Annotated[str, doc("Registry host (with its port), e.g. ghcr.io.")]
    username: Annotated[str, doc("Registry user name.")]
    password: Annotated[str, doc("Registry password or token; never logged.")]


class PrePull(Base, frozen=True):
    """Images kept present on the node (``pre_pull { }``)."""

    images: Annotated[tuple[str, ...], doc("Remote images to pull and keep.")] = ()
    concurrency: Annotated[int, Meta(ge=1, description="Most pre-pulls at a time.")] = 1
    period: Annotated[
        str, doc("How often to check the images again (moving tags follow the registry).")
    ] = "1h"
    auth: tuple[RegistryAuth, ...] = ()


#: Pool names become attribute keys (``driver.tart.warm.<name>.ready``), which job files
#: read as HCL traversals: letters, digits and underscores only.
POOL_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
WARM_NETWORK_MODES: Final = ("shared", "softnet")
#: Where the driver keeps its warm pools' slot directories (root's, never the tart user's).
DEFAULT_WARM_DIR: Final = (
    "/var/db/nomad-driver-tart/warm"
    if sys.platform == "darwin"
    else "/var/lib/nomad-driver-tart/warm"
)


class WarmPool(Base, frozen=True):
    """Suspended golden VMs of one image and shape (``warm_pool { }``, repeatable)."""

    __secret_fields__: ClassVar[frozenset[str]] = frozenset({"ssh_password"})
    name: Annotated[str, doc("The pool's name: lower-case letters, digits, underscores.")]
    image: Annotated[str, doc("Remote macOS image; pinned by digest when a golden is built.")]
    cores: Annotated[int, Meta(ge=1, description="The VM's cores; a job must ask the same.")]
    memory: Annotated[
        int, Meta(ge=1, description="The VM's memory in MB; a job must ask the same.")
    ]
    network: Annotated[str, doc("shared (default) or softnet; a job must use the same.")] = "shared"
    slots: Annotated[
        int, Meta(ge=1, le=2, description="Golden VMs kept ready (each serves one job at once).")
    ] = 1
    max_age: Annotated[str, doc("A golden older than this is built again.")] = "24h"
    resume_timeout: Annotated[
        str, doc("How long a resumed clone may take to answer before the job boots cold.")
    ] = "15s"
    ssh_user: Annotated[str, doc("The image's user, to reach a golden over SSH.")] = "admin"
    ssh_password: Annotated[str, doc("That user's password; never logged.")] = "admin"


class GCConfig(Base, frozen=True):
    """The orphan reconciler (``gc { }``): removes ``nomad-<alloc id>`` VMs no task owns."""

    enabled: Annotated[bool, doc("Remove orphaned VMs.")] = True
    period: Annotated[str, doc("How often to look for orphans.")] = "5m"
    creation_grace: Annotated[
        str, doc("Leave VMs (and a freshly started plugin) this long before judging.")
    ] = "10m"
    dry_run: Annotated[bool, doc("Only log what would be removed.")] = False


class PluginConfig(Base, frozen=True):
    """The agent's ``plugin "nomad-driver-tart" { config { } }`` block."""

    enabled: Annotated[bool, doc("Enable the driver.")] = True
    tart_path: Annotated[
        str, doc("The tart executable; empty finds tart on PATH, then /opt/homebrew/bin/tart.")
    ] = ""
    tart_user: Annotated[
        str, doc("When the plugin runs as root, run every tart command as this user.")
    ] = ""
    tart_home: Annotated[
        str, doc("TART_HOME for every tart command; empty keeps tart's default (~/.tart).")
    ] = ""
    run_in_login_session: Annotated[
        bool,
        doc(
            "With tart_user: start tart run in that user's GUI login session (launchctl "
            "asuser), where macOS 15.2+ guests can use its login keychain."
        ),
    ] = False
    fingerprint_period: Annotated[
        str, doc("How often the driver re-checks tart and reports to Nomad.")
    ] = "30s"
    boot_timeout: Annotated[str, doc("How long a VM may take from tart run until SSH answers.")] = (
        "10m"
    )
    image_pull_timeout: Annotated[str, doc("Longest an image download may take.")] = "60m"
    image_pull_inactivity_timeout: Annotated[
        str, doc("A download that shows no progress for this long is abandoned.")
    ] = "5m"

    gc: GCConfig | None = None
    allowed_images: Annotated[
        tuple[str, ...],
        doc("Glob patterns of images jobs may use; empty allows any remote image."),
    ] = ()
    allowed_directories: Annotated[
        tuple[str, ...],
        doc("Host directory prefixes jobs may share; empty allows any absolute path."),
    ] = ()
    allowed_network_modes: Annotated[
        tuple[str, ...], doc("Network modes jobs may use: shared, host, bridged, softnet.")
    ] = ("shared", "host", "bridged", "softnet")
    max_macos_vms: Annotated[
        int, Meta(ge=0, description="Most macOS VMs at once on this host (Apple allows 2).")
    ] = 2
    pre_pull: PrePull | None = None
    disk_reserve: Annotated[
        Annotated[int, Meta(ge=0)] | None,
        doc(
            "GB that pulls and clones leave free on TART_HOME's volume; "
            "unset: a tenth of the volume, at most 20."
        ),
    ] = None
    image_cache_budget: Annotated[
        Annotated[int, Meta(ge=0)] | None,
        doc("GB Tart's caches may use, pruned after each pull; unset: no budget."),
    ] = None
    warm_pool: tuple[WarmPool, ...] = ()
    warm_dir: Annotated[
        str, doc("Root's directory for the warm pools' shares (default under /var/db).")
    ] = ""

    @property
    def warm_root(self) -> str:
        """The warm pools' directory."""
        return self.warm_dir or DEFAULT_WARM_DIR

    @property
    def gc_config(self) -> GCConfig:
        """The reconciler settings (defaults when the block is absent)."""
        return self.gc if self.gc is not None else GCConfig()

    def seconds(self, field: str) -> float:
        """A duration field in seconds."""
        return parse_duration(getattr(self, field))

    @property
    def fingerprint_period_seconds(self) -> float:
        """The fingerprint period in seconds."""
        return parse_duration(self.fingerprint_period)


_DURATIONS: Final = (
    "fingerprint_period",
    "boot_timeout",
    "image_pull_timeout",
    "image_pull_inactivity_timeout",
)


def validate_plugin_config(config: PluginConfig) -> None:
    """Check the values msgspec's types cannot."""
    if config.run_in_login_session and not config.tart_user:
        raise ConfigError(
            "run_in_login_session",
            "needs tart_user: the session is that user's (a plugin without tart_user runs "
            "tart in its own session)",
            scope="plugin config",
        )
    for i, mode in enumerate(config.allowed_network_modes):
        if mode not in ("shared", "host", "bridged", "softnet"):
            raise ConfigError(
                f"allowed_network_modes[{i}]",
                f"{mode!r} is not one of: shared, host, bridged, softnet",
                scope="plugin config",
            )
    for i, prefix in enumerate(config.allowed_directories):
        if not prefix.startswith("/"):
            raise ConfigError(
                f"allowed_directories[{i}]",
                f"{prefix!r} is not an absolute path",
                scope="plugin config",
            )
    _validate_pre_pull(config.pre_pull)
    _validate_warm_pools(config)
    durations = [(field, getattr(config, field)) for field in _DURATIONS]
    durations += [(f"gc.{f}", getattr(config.gc_config, f)) for f in ("period", "creation_grace")]
    for field, text in durations:
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            raise ConfigError(field, str(exc), scope="plugin config") from None
        if seconds < 1:
            raise ConfigError(field, "must be at least 1s", scope="plugin config")


def _validate_pre_pull(pre_pull: PrePull | None) -> None:
    if pre_pull is None:
        return
    for i, image in enumerate(pre_pull.images):
        if "/" not in image or not image.strip():
            raise ConfigError(
                f"pre_pull.images[{i}]",
                f"{image!r} is not a remote image such as ghcr.io/cirruslabs/macos-sequoia-base",
                scope="plugin config",
            )
    for i, auth in enumerate(pre_pull.auth):
        for name in ("registry", "username"):
            if not getattr(auth, name).strip():
                raise ConfigError(
                    f"pre_pull.auth[{i}].{name}", "must not be empty", scope="plugin config"
                )
    try:
        seconds = parse_duration(pre_pull.period)
    except ValueError as exc:
        raise ConfigError("pre_pull.period", str(exc), scope="plugin config") from None
    if seconds < 1:
        raise ConfigError("pre_pull.period", "must be at least 1s", scope="plugin config")


def _validate_warm_pools(config: PluginConfig) -> None:
    seen: set[str] = set()
    for i, pool in enumerate(config.warm_pool):
        field = f"warm_pool[{i}]"
        if not POOL_NAME.fullmatch(pool.name):
            raise ConfigError(
                f"{field}.name",
                f"{pool.name!r} must be lower-case letters, digits and underscores, starting "
                "with a letter (it names the attribute driver.tart.warm.<name>.ready)",
                scope="plugin config",
            )
        if pool.name in seen:
            raise ConfigError(
                f"{field}.name", f"{pool.name!r} names two pools", scope="plugin config"
            )
        seen.add(pool.name)
        if "/" not in pool.image or not pool.image.strip():
            raise ConfigError(
                f"{field}.image",
                f"{pool.image!r} is not a remote image such as "
                "ghcr.io/cirruslabs/macos-sequoia-xcode:latest",
                scope="plugin config",
            )
        if pool.network not in WARM_NETWORK_MODES:
            raise ConfigError(
                f"{field}.network",
                f"{pool.network!r} is not one of: {', '.join(WARM_NETWORK_MODES)}",
                scope="plugin config",
            )
        if pool.slots > config.max_macos_vms:
            raise ConfigError(
                f"{field}.slots",
                f"{pool.slots} is more than max_macos_vms ({config.max_macos_vms})",
                scope="plugin config",
            )
        try:
            seconds = parse_duration(pool.max_age)
        except ValueError as exc:
            raise ConfigError(f"{field}.max_age", str(exc), scope="plugin config") from None
        if seconds < 60:
            raise ConfigError(f"{field}.max_age", "must be at least 1m", scope="plugin config")
        try:
            seconds = parse_duration(pool.resume_timeout)
        except ValueError as exc:
            raise ConfigError(f"{field}.resume_timeout", str(exc), scope="plugin config") from None
        if not 1 <= seconds <= 600:
            raise ConfigError(
                f"{field}.resume_timeout", "must be between 1s and 10m", scope="plugin config"
            )
    if config.warm_dir and not config.warm_dir.startswith("/"):
        raise ConfigError(
            "warm_dir", f"{config.warm_dir!r} is not an absolute path", scope="plugin config"
        )
