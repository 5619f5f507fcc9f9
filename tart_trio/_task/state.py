"""``driver_state``: what Nomad stores for us in the task handle, for RecoverTask.

Nomad persists the handle StartTask returns exactly once and never updates it, and after
an agent restart it hands ``msgpack_driver_config`` back empty. So the state holds
everything a new plugin process needs to reattach: the VM, its supervisor's identity, where
the exit status will appear, the guest's address and pinned host key, and the decoded task
config. Evolution rules: new fields get defaults; nothing is renamed, retyped or removed.
Golden files of every released version live in tests/golden/ and must keep decoding.
"""

from __future__ import annotations

from typing import Final

import msgspec

from tart_trio._config.task import TaskConfig

STATE_VERSION: Final = 1


class DriverState(msgspec.Struct, frozen=True, kw_only=True):
    """Everything RecoverTask needs; encoded as msgpack into ``TaskHandle.driver_state``."""

    version: int = STATE_VERSION
    vm_name: str
    task_config: TaskConfig
    supervisor_pid: int
    supervisor_token: str | None
    runtime_dir: str
    status_file: str
    tart_path: str
    tart_home: str
    started_at: float
    ip: str
    host_key: str
    stdout_path: str = ""
    stderr_path: str = ""
    log_cursor: str = ""
    #: With a command: its job directory in the guest (``~/.nomad-tart/<job>``), when it
    #: started (Unix time), and the guest's OS (which decides where the shares are).
    command_job: str = ""
    command_started: float = 0.0
    guest_os: str = ""
    #: A warm start's slot (``<pool>/<index>``), held until the task is destroyed.
    warm_slot: str = ""


_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(DriverState)


def encode_state(state: DriverState) -> bytes:
    """Bytes for the task handle."""
    return _ENCODER.encode(state)


def decode_state(data: bytes) -> DriverState:
    """Decode any released state version."""
    return _DECODER.decode(data)
