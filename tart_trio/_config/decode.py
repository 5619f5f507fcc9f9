"""Nomad's msgpack (go-cty) into the config Structs, errors naming the field.

Decoders are built once. A decoded config is validated before it is returned, so a bad job
is refused, naming the field and the allowed values, before anything is cloned.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from tart_trio._config.plugin import PluginConfig, validate_plugin_config
from tart_trio._config.task import TaskConfig, validate_task_config
from tart_trio._errors import ConfigError

_TASK_DECODER: Final = msgspec.msgpack.Decoder(TaskConfig, strict=False)
_PLUGIN_DECODER: Final = msgspec.msgpack.Decoder(PluginConfig, strict=False)
_AT_PATH: Final = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def _field_path(path: str) -> str:
    return path.lstrip(".").replace("`", "")


def _translate(exc: msgspec.ValidationError, scope: str) -> ConfigError:
    match = _AT_PATH.match(str(exc))
    assert match is not None
    message = match.group("msg").replace("`", "")
    message = message[:1].lower() + message[1:]
    return ConfigError(_field_path(match.group("path") or ""), message, scope=scope)


def decode_task_config(data: bytes) -> TaskConfig:
    """Decode go-cty msgpack from Nomad into a validated TaskConfig."""
    try:
        config = _TASK_DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise _translate(exc, "task config") from None
    except msgspec.DecodeError as exc:
        raise ConfigError("", f"undecodable msgpack ({exc})") from None
    validate_task_config(config)
    return config


def decode_plugin_config(data: bytes) -> PluginConfig:
    """Decode the agent's plugin config; empty bytes mean every default."""
    if not data:
        return PluginConfig()
    try:
        config = _PLUGIN_DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise _translate(exc, "plugin config") from None
    except msgspec.DecodeError as exc:
        raise ConfigError("", f"undecodable msgpack ({exc})", scope="plugin config") from None
    validate_plugin_config(config)
    return config
