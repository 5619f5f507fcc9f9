"""A task's ports: the forwards its ``ports`` option asks for, held from before the clone
until the VM supervisor takes them, and the guest's address handed to that supervisor.

The supervisor (``_host.supervisor``) binds and serves the forwards for the VM's life
(``_host.forward``); the plugin only reserves them first, so that a port another process
holds fails the start before anything is cloned, and tells the supervisor where the guest
is once ``tart ip`` has said so.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Final

from tart_trio._config.task import TaskConfig
from tart_trio._errors import RecoverableError
from tart_trio._host import ports
from tart_trio._host.safefs import open_own_file
from tart_trio._model import NomadTask

#: The runtime directory's file with the guest's address, for the supervisor.
GUEST_ADDRESS_FILE: Final = "guest-address"


def forwards(task: NomadTask, config: TaskConfig) -> tuple[ports.Forward, ...]:
    """Each label of ``ports`` in TCP and UDP, as Docker publishes a port."""
    allocated = {port.label: port for port in task.ports}
    return tuple(
        ports.Forward(
            label=label,
            proto=proto,
            host_ip=allocated[label].host_ip,
            host_port=allocated[label].value,
            guest_port=allocated[label].guest_port,
        )
        for label in config.ports
        if label in allocated
        for proto in ports.PROTOCOLS
    )


def reserve(wanted: tuple[ports.Forward, ...]) -> ports.Reservation:
    """Bind every forward now; a port that cannot be bound is a retryable error."""
    try:
        return ports.Reservation(wanted)
    except ports.PortUnavailable as exc:
        raise RecoverableError(
            f"{exc.strerror}; another process holds it or the address is not this host's "
            "(the task option ports forwards it to the VM)"
        ) from None


def supervisor_arguments(runtime_dir: Path, wanted: tuple[ports.Forward, ...]) -> list[str]:
    """The supervisor's options for the forwards (none without ports)."""
    if not wanted:
        return []
    with contextlib.suppress(FileNotFoundError):
        os.unlink(runtime_dir / GUEST_ADDRESS_FILE)
    arguments = ["--guest-address-file", str(runtime_dir / GUEST_ADDRESS_FILE)]
    for one in wanted:
        arguments += ["--forward", one.spec()]
    return arguments


def tell_guest_address(runtime_dir: Path, ip: str, supervisor_pid: int) -> None:
    """Write the guest's address beside the supervisor's files and wake the supervisor."""
    fd = open_own_file(str(runtime_dir / GUEST_ADDRESS_FILE), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, ip.encode("ascii") + b"\n")
    finally:
        os.close(fd)
    with contextlib.suppress(ProcessLookupError):
        os.kill(supervisor_pid, signal.SIGUSR1)


def port_unavailable(returncode: int) -> bool:
    """Whether the supervisor ended because a forward could not be bound."""
    return returncode == ports.EXIT_PORT_UNAVAILABLE
