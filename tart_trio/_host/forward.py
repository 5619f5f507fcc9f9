"""The proxy that carries a task's ports into its VM, inside the VM's supervisor.

The supervisor binds every forward before ``tart run`` starts (``_host.ports``) and hands
the sockets to a ``Forwarder``, which runs an asyncio loop in a thread of its own, beside
the supervisor's copy of ``tart run``'s output. It lives exactly as long as the VM: the
plugin can be killed, restarted or replaced meanwhile. The guest's address comes from the
plugin once it knows it (``set_guest``); until then, and until the guest's port first
accepts a connection, a TCP port is bound but not listening, so a client (a Consul check)
is refused rather than told that a service is up. Standard library only.

TCP is spliced with asyncio Protocols (the streams API halves the throughput), each
direction pausing its reader while the other side's write buffer is above a mark, and a
half-close is passed on. UDP keeps one connected socket to the guest per client address,
dropped after ``UDP_IDLE_SECONDS`` of silence. Everything is bounded: at most
``TCP_CONNECTIONS_MAX`` connections and ``UDP_PEERS_MAX`` UDP clients per VM (past them a
connection is reset at once and a datagram dropped), and what one connection buffers.
An idle forward wakes nothing: no timers run without UDP clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Final, cast

from tart_trio._host.ports import Forward

#: TCP connections at once per VM (each holds two descriptors and at most
#: 2 * (HIGH_WATER + 256 KiB) of buffers); more are reset at once.
TCP_CONNECTIONS_MAX: Final = 256
#: UDP clients (source addresses) at once per VM, each with one socket to the guest.
UDP_PEERS_MAX: Final = 256
#: A UDP client that sent nothing for this long is forgotten (Docker's proxy: 90 s).
UDP_IDLE_SECONDS: Final = 90.0
#: Datagrams held for a new UDP client while its socket to the guest opens.
UDP_PENDING_MAX: Final = 32
#: How long a connection to the guest may take before the client is reset.
CONNECT_SECONDS: Final = 10.0
#: Until the guest's port first accepts: one try this often (each bounded by the same).
PROBE_SECONDS: Final = 1.0
HIGH_WATER: Final = 256 << 10
LOW_WATER: Final = 64 << 10
#: Descriptors the supervisor asks for (macOS starts processes with a soft limit of 256).
FILES_WANTED: Final = 2 * TCP_CONNECTIONS_MAX + UDP_PEERS_MAX + 256


def raise_file_limit() -> None:
    """Lift the soft descriptor limit to what the bounds above need (best effort)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FILES_WANTED if hard == resource.RLIM_INFINITY else min(FILES_WANTED, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _backlog(transport: asyncio.DatagramTransport) -> int:
    """Bytes a datagram transport holds for sending (its stub does not declare the method)."""
    size = getattr(transport, "get_write_buffer_size", None)
    return int(size()) if size is not None else 0


def _reset(transport: asyncio.Transport) -> None:
    """Close a TCP connection with a reset, as a refused connection would end."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _Splice(asyncio.Protocol):
    """One side of a proxied TCP connection; ``other`` is the side it writes to."""

    def __init__(self, owner: Forwarder, release: Callable[[], None] | None = None) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.other: _Splice | None = None
        self.eof = False
        self.closed = False
        self._release = release

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.owner.splices.add(self)
        transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)

    def data_received(self, data: bytes) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        other = self.other
        if other is None or other.transport is None:
            return False
        if other.eof:
            other.transport.close()
            return False
        if other.transport.can_write_eof():
            other.transport.write_eof()
            return True
        return False

    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.owner.splices.discard(self)
        if self._release is not None:
            self._release()
            self._release = None
        other = self.other
        if other is not None and other.transport is not None and not other.closed:
            if exc is None:
                other.transport.close()
            else:
                _reset(other.transport)


class _TcpForward:
    """One TCP port: listens once the guest's port first accepts, splices each client."""

    def __init__(self, owner: Forwarder, forward: Forward, sock: socket.socket) -> None:
        self.owner = owner
        self.forward = forward
        self.sock = sock
        self.server: asyncio.Server | None = None

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = server = await loop.create_server(
            self._accepted, sock=self.sock, start_serving=False, backlog=128
        )
        while True:
            if await self._guest_accepts():
                break
            await asyncio.sleep(PROBE_SECONDS)  # a connect attempt, not a state to wait on
        await server.start_serving()

    async def _guest_accepts(self) -> bool:
        ip = await self.owner.guest_ip()
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(asyncio.Protocol, ip, self.forward.guest_port),
                PROBE_SECONDS,
            )
        except (TimeoutError, OSError):
            return False
        transport.close()
        return True

    def _accepted(self) -> asyncio.Protocol:
        owner = self.owner
        if owner.tcp_connections >= TCP_CONNECTIONS_MAX:
            return _Refused()
        owner.tcp_connections += 1
        return _Client(self)

    async def connect(self, client: _Client) -> None:
        """Open the guest side of a client; the client is read only once it is there."""
        assert client.transport is not None
        loop = asyncio.get_running_loop()
        upstream = _Splice(self.owner)
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: upstream, self.owner.current_ip, self.forward.guest_port
                ),
                CONNECT_SECONDS,
            )
        except (TimeoutError, OSError):
            if not client.closed:
                _reset(client.transport)
            return
        assert upstream.transport is not None
        if client.closed:
            upstream.transport.close()
            return
        upstream.other, client.other = client, upstream
        client.transport.resume_reading()


class _Client(_Splice):
    """The accepted side: not read until its connection to the guest is open."""

    def __init__(self, port: _TcpForward) -> None:
        super().__init__(port.owner, release=port.owner.release_tcp)
        self.port = port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()
        loop = asyncio.get_running_loop()
        self.port.owner.keep(loop.create_task(self.port.connect(self)))


class _Refused(asyncio.Protocol):
    """A connection past the limit: reset as soon as it is accepted."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        _reset(cast(asyncio.Transport, transport))


class _UdpPeer(asyncio.DatagramProtocol):
    """One UDP client: its connected socket to the guest and the way back."""

    def __init__(self, front: _UdpForward, address: tuple[str, int]) -> None:
        self.front = front
        self.address = address
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: list[bytes] = []
        self.last_seen = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        for data in self.pending:
            self.transport.sendto(data)
        self.pending.clear()

    def send(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        if self.transport is None:
            if len(self.pending) < UDP_PENDING_MAX:
                self.pending.append(data)
        elif _backlog(self.transport) < HIGH_WATER:
            self.transport.sendto(data)

    def datagram_received(self, data: bytes, _addr: tuple[str | object, ...]) -> None:
        self.front.reply(data, self.address)

    def error_received(self, exc: Exception) -> None:
        """An ICMP error (nothing listens in the guest yet): UDP just loses the datagram."""

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _UdpForward(asyncio.DatagramProtocol):
    """One UDP port: datagrams from each client go out on that client's own socket."""

    def __init__(self, owner: Forwarder, forward: Forward, sock: socket.socket) -> None:
        self.owner = owner
        self.forward = forward
        self.sock = sock
        self.transport: asyncio.DatagramTransport | None = None
        self.peers: dict[tuple[str, int], _UdpPeer] = {}
        self._sweep: asyncio.TimerHandle | None = None

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, sock=self.sock)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's datagram transports do not all derive from DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        address = (str(addr[0]), int(str(addr[1])))
        peer = self.peers.get(address)
        if peer is None:
            peer = self._open(address)
            if peer is None:
                return
        peer.send(data)

    def error_received(self, exc: Exception) -> None:
        """Errors of the host-side socket (a client that went away): nothing to do."""

    def close(self) -> None:
        for peer in list(self.peers.values()):
            self._drop(peer)
        if self._sweep is not None:
            self._sweep.cancel()
        if self.transport is not None:
            self.transport.close()

    def _open(self, address: tuple[str, int]) -> _UdpPeer | None:
        ip = self.owner.current_ip
        if not ip or self.owner.udp_peers >= UDP_PEERS_MAX:
            return None
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect((ip, self.forward.guest_port))
        except OSError:
            sock.close()
            return None
        peer = _UdpPeer(self, address)
        self.peers[address] = peer
        self.owner.udp_peers += 1
        loop = asyncio.get_running_loop()
        self.owner.keep(loop.create_task(self._attach(peer, sock)))
        if self._sweep is None:
            self._sweep = loop.call_later(UDP_IDLE_SECONDS / 3, self._forget_idle)
        return peer

    async def _attach(self, peer: _UdpPeer, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_datagram_endpoint(lambda: peer, sock=sock)
        except OSError:
            sock.close()
            self._drop(peer)

    def reply(self, data: bytes, address: tuple[str, int]) -> None:
        transport = self.transport
        if transport is not None and _backlog(transport) < HIGH_WATER:
            transport.sendto(data, address)

    def _drop(self, peer: _UdpPeer) -> None:
        if self.peers.pop(peer.address, None) is peer:
            self.owner.udp_peers -= 1
            peer.close()

    def _forget_idle(self) -> None:
        self._sweep = None
        now = time.monotonic()
        for peer in list(self.peers.values()):
            if now - peer.last_seen >= UDP_IDLE_SECONDS:
                self._drop(peer)
        if self.peers:
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(UDP_IDLE_SECONDS / 3, self._forget_idle)


class Forwarder:
    """Every forward of one VM, served by an asyncio loop in a daemon thread."""

    def __init__(self, bound: list[tuple[Forward, socket.socket]]) -> None:
        self._bound = bound
        # Not the policy's loop: a process that also runs trio-asyncio would get its loop.
        self._loop = asyncio.SelectorEventLoop()
        self._known = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread: threading.Thread | None = None
        self._ports: list[_TcpForward | _UdpForward] = []
        self.splices: set[_Splice] = set()
        self.current_ip = ""
        self.tcp_connections = 0
        self.udp_peers = 0

    def start(self) -> None:
        """Serve in a daemon thread (it ends with the supervisor's process)."""
        self._thread = threading.Thread(target=self._run, name="forward", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving, end every connection and let the ports go (the supervisor does
        not need this: its process ends with the VM)."""
        if self._thread is not None:
            with contextlib.suppress(TimeoutError):
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        for _, sock in self._bound:
            sock.close()
        self._loop.close()

    async def _shutdown(self) -> None:
        for port in self._ports:
            port.close()
        for splice in list(self.splices):
            if splice.transport is not None:
                splice.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        for _ in range(3):  # the transports' connection_lost callbacks
            await asyncio.sleep(0)

    def set_guest(self, ip: str) -> None:
        """The guest's address (again, when it changed); callable from any thread."""
        if ip:
            self._loop.call_soon_threadsafe(self._set_guest, ip)

    def _set_guest(self, ip: str) -> None:
        self.current_ip = ip
        self._known.set()

    async def guest_ip(self) -> str:
        """The guest's address, once the plugin has told it."""
        await self._known.wait()
        return self.current_ip

    def keep(self, task: asyncio.Task[None]) -> None:
        """Hold a background task until it ends (the loop keeps only weak references)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def release_tcp(self) -> None:
        self.tcp_connections -= 1

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.create_task(self._serve())
        self._loop.run_forever()

    async def _serve(self) -> None:
        for forward, sock in self._bound:
            port: _TcpForward | _UdpForward
            if forward.proto == "tcp":
                port = _TcpForward(self, forward, sock)
            else:
                port = _UdpForward(self, forward, sock)
            self._ports.append(port)
            self.keep(asyncio.get_running_loop().create_task(port.serve()))
