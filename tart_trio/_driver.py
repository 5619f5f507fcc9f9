"""The driver: plugin config, capabilities, fingerprinting and the task-event fan-out."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from tart_trio import _fingerprint
from tart_trio._config import PluginConfig, decode_plugin_config
from tart_trio._events import EventBus
from tart_trio._model import Capabilities, Fingerprint, PluginInfo, TaskEvent
from tart_trio._version import __version__

NAME: Final = "tart"
API_VERSIONS: Final = ("v0.1.0",)
log = logging.getLogger("driver")


class Driver:
    """Domain entry point behind the rpc layer. Pure trio."""

    def __init__(self) -> None:
        self.config = PluginConfig()
        self.api_version = ""
        self.client_port_range: tuple[int, int] | None = None
        self.events = EventBus()
        self._config_changed = trio.Event()

    def plugin_info(self) -> PluginInfo:
        """Name, version and the plugin API versions we speak."""
        return PluginInfo(name=NAME, version=__version__, api_versions=API_VERSIONS)

    def set_config(
        self, msgpack_config: bytes, api_version: str, client_ports: tuple[int, int] | None
    ) -> None:
        """Decode and keep the agent's plugin config. Cheap and free of side effects."""
        self.config = decode_plugin_config(msgpack_config)
        self.api_version = api_version
        if client_ports is not None:
            self.client_port_range = client_ports
        self._config_changed.set()
        self._config_changed = trio.Event()
        log.debug("plugin configured", extra={"api_version": api_version})

    def capabilities(self) -> Capabilities:
        """Only what works: no exec or signals yet, the VM is its own image and network."""
        return Capabilities(
            send_signals=False,
            exec=False,
            fs_isolation="image",
            network_isolation_modes=("host",),
            must_create_network=False,
            mount_configs="none",
            disable_log_collection=False,
            dynamic_workload_users=False,
        )

    async def watch_fingerprints(self, deliver: Callable[[Fingerprint], Awaitable[None]]) -> None:
        """Deliver a fingerprint at once, then every period and whenever the config changes.

        Never returns on its own: Nomad treats an ended stream as a dead plugin.
        """
        while True:
            changed = self._config_changed
            await deliver(await _fingerprint.fingerprint(self.config))
            with trio.move_on_after(self.config.fingerprint_period_seconds):
                await changed.wait()

    async def watch_events(self, deliver: Callable[[TaskEvent], Awaitable[None]]) -> None:
        """Deliver every task event until cancelled."""
        await self.events.subscribe(deliver)
