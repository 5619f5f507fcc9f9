"""What the driver reports about the host: attributes and a health with a stable reason."""

from __future__ import annotations

import platform
from typing import Final

import trio

from tart_trio._config import PluginConfig
from tart_trio._errors import TartTrioError
from tart_trio._model import AttributeValue, Fingerprint
from tart_trio._tart.cli import Tart, locate_tart

PREFIX: Final = "driver.tart"
TART_CALL_SECONDS: Final = 10.0

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
HEALTHY: Final = "Healthy"


def host_supports_virtualization() -> bool:
    """Tart runs VMs only on Apple Silicon Macs."""
    return platform.system() == "Darwin" and platform.machine() == "arm64"


async def fingerprint(config: PluginConfig) -> Fingerprint:
    """Probe tart once and describe the result."""
    if not config.enabled:
        return Fingerprint(attributes={}, health="undetected", description=DISABLED)
    path = locate_tart(config.tart_path)
    if path is None:
        return Fingerprint(attributes={}, health="undetected", description=NOT_FOUND)
    tart = Tart(path, config.tart_home)
    attributes: dict[str, AttributeValue] = {
        f"{PREFIX}.path": path,
        f"{PREFIX}.host_virtualization": host_supports_virtualization(),
    }
    try:
        with trio.fail_after(TART_CALL_SECONDS):
            attributes[f"{PREFIX}.version"] = await tart.version()
    except (TartTrioError, OSError, trio.TooSlowError):
        return Fingerprint(attributes=attributes, health="unhealthy", description=VERSION_FAILED)
    try:
        with trio.fail_after(TART_CALL_SECONDS):
            await tart.run("list", "--format", "json")
    except (TartTrioError, OSError, trio.TooSlowError):
        return Fingerprint(attributes=attributes, health="unhealthy", description=LIST_FAILED)
    return Fingerprint(attributes=attributes, health="healthy", description=HEALTHY)
