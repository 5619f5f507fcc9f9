"""A task's port forwards as the host sees them: what to bind, and binding it.

A forward is one Nomad port label in one protocol: the host's allocated
``host_ip:host_port`` leads to ``guest_port`` in the VM. The plugin binds every forward
before anything is cloned (``reserve``), to fail early and clearly; the VM supervisor binds
them again for the VM's life (``bind``) and proxies them (``_host.forward``). Standard
library only (the supervisor uses it).
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from typing import Final

PROTOCOLS: Final = ("tcp", "udp")
#: The supervisor's exit status when a port it must forward cannot be bound.
EXIT_PORT_UNAVAILABLE: Final = 75  # EX_TEMPFAIL: another attempt may succeed


@dataclass(frozen=True)
class Forward:
    """``host_ip:host_port`` → the guest's ``guest_port``, for one label and protocol."""

    label: str
    proto: str
    host_ip: str
    host_port: int
    guest_port: int

    def spec(self) -> str:
        """One argv word for the supervisor (labels and addresses hold no comma)."""
        return ",".join(
            (self.proto, self.label, self.host_ip, str(self.host_port), str(self.guest_port))
        )

    @classmethod
    def parse(cls, spec: str) -> Forward:
        """The inverse of ``spec``; ValueError for anything else."""
        proto, label, host_ip, host_port, guest_port = spec.split(",")
        forward = cls(label, proto, host_ip, int(host_port), int(guest_port))
        if proto not in PROTOCOLS or not all(
            0 < port < 65536 for port in (forward.host_port, forward.guest_port)
        ):
            raise ValueError(f"not a port forward: {spec!r}")
        return forward

    def describe(self) -> str:
        """``port "http" (tcp 10.0.0.5:25000)``, as errors name it."""
        host = f"[{self.host_ip}]" if ":" in self.host_ip else self.host_ip or "*"
        return f'port "{self.label}" ({self.proto} {host}:{self.host_port})'


class PortUnavailable(OSError):
    """A forward's host address cannot be bound (taken, or not this host's)."""

    def __init__(self, forward: Forward, cause: OSError) -> None:
        super().__init__(cause.errno, f"{forward.describe()} cannot be bound: {cause.strerror}")
        self.forward = forward


def bind(forward: Forward) -> socket.socket:
    """A non-blocking socket bound to the forward's host address (not listening yet)."""
    family = socket.AF_INET6 if ":" in forward.host_ip else socket.AF_INET
    kind = socket.SOCK_STREAM if forward.proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            # The port's connections of an earlier run may linger in TIME_WAIT; a socket
            # that listens there still makes the bind fail.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((forward.host_ip, forward.host_port))
    except OSError as exc:
        sock.close()
        raise PortUnavailable(forward, exc) from None
    sock.setblocking(False)
    return sock


class Reservation:
    """Every forward bound at once, held until ``release`` (or the ``with`` block ends)."""

    def __init__(self, forwards: tuple[Forward, ...]) -> None:
        self.forwards = forwards
        self._sockets: list[socket.socket] = []
        try:
            for forward in forwards:
                self._sockets.append(bind(forward))
        except PortUnavailable:
            self.release()
            raise

    def release(self) -> None:
        """Let the ports go (idempotent)."""
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self._sockets.clear()

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()
