"""Operator controls: what a job may ask for, checked before anything is cloned.

With ``tart_user``, also that the job's shares are the tart user's to read (the host side
of that, handing Nomad's files over safely, is ``_host.shares``).
"""

from __future__ import annotations

import fnmatch
import os

from tart_trio._config.plugin import PluginConfig
from tart_trio._config.task import TaskConfig, network_mode
from tart_trio._driver.names import OUR_NAME
from tart_trio._errors import ConfigError
from tart_trio._host.shares import readable_by, share_secrets
from tart_trio._host.users import RunAs
from tart_trio._tart.images import is_remote


def _refuse(field: str, problem: str) -> ConfigError:
    return ConfigError(field, f"{problem} (operator policy in the plugin configuration)")


def check_task(plugin: PluginConfig, config: TaskConfig) -> None:
    """Refuse a job that asks for more than the operator allows."""
    _check_image(plugin, config.url)
    mode = network_mode(config.network)
    if mode not in plugin.allowed_network_modes:
        raise _refuse(
            "network.mode",
            f"{mode!r} networking is not allowed here; allowed: "
            f"{', '.join(plugin.allowed_network_modes) or 'none'}",
        )
    if plugin.allowed_directories:
        for i, directory in enumerate(config.directory):
            real = os.path.realpath(directory.path)
            if not any(_under(real, prefix) for prefix in plugin.allowed_directories):
                raise _refuse(
                    f"directory[{i}].path",
                    f"{directory.path!r} is outside the allowed host directories: "
                    f"{', '.join(plugin.allowed_directories)}",
                )


def _under(path: str, prefix: str) -> bool:
    root = os.path.realpath(prefix)
    return path == root or path.startswith(root.rstrip("/") + "/")


def _check_image(plugin: PluginConfig, url: str) -> None:
    local = not is_remote(url)
    if local and OUR_NAME.match(url):
        raise _refuse("url", f"{url!r} is another task's VM and can never be cloned")
    patterns = plugin.allowed_images
    if not patterns:
        if local:
            raise _refuse(
                "url",
                f"{url!r} is a local VM; only remote images are allowed "
                "unless allowed_images lists it",
            )
        return
    if not any(fnmatch.fnmatchcase(url, pattern) for pattern in patterns):
        raise _refuse("url", f"{url!r} matches none of the allowed images: {', '.join(patterns)}")


def share_with_tart_user(config: TaskConfig, secrets_dir: str, user: RunAs | None) -> None:
    """With tart_user, the VM's shares must be readable by that user.

    The secrets directory is Nomad's and made readable (see :func:`share_secrets`); a
    ``directory`` mount is the operator's host directory and is never changed: one the
    user cannot read is refused.
    """
    if user is None:
        return
    for i, d in enumerate(config.directory):
        if not readable_by(d.path, user):
            raise ConfigError(
                f"directory[{i}].path",
                f"{d.path!r} is not readable by tart_user {user.name!r}, "
                "which runs tart and so shares it with the VM",
            )
    share_secrets(secrets_dir, user)
