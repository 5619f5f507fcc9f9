"""The supervisor's port forwarder on its own: what a client of a forwarded port sees.

A real Forwarder (its own thread and asyncio loop, as in the supervisor) in front of a
small TCP/UDP service on another loopback address, as a guest's service would be.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tart_trio._host import forward, ports

GUEST = "127.0.0.77"
NODE = "127.0.0.1"


def free_port() -> int:
    while True:
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind((NODE, 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind((NODE, port))
            except OSError:
                continue
            return port


class Service:
    """The guest's service: TCP echo (a half-close answered with "bye") and UDP echo."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.tcp = socket.socket()
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((GUEST, port))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((GUEST, port))
        self.peers: set[tuple[str, int]] = set()
        self.connections = 0

    def listen(self) -> None:
        self.tcp.listen(512)
        threading.Thread(target=self._accept, daemon=True).start()
        threading.Thread(target=self._datagrams, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.tcp.accept()
                self.connections += 1
                threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.sendall(b"bye")

    def _datagrams(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                data, peer = self.udp.recvfrom(2048)
                self.peers.add(peer)
                self.udp.sendto(data, peer)

    def close(self) -> None:
        self.tcp.close()
        self.udp.close()


@pytest.fixture(autouse=True)
def descriptors() -> None:
    """This process holds every end of every connection (the client's, both of the
    forwarder's and the guest's): four times what a flood costs the supervisor alone."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 8 * forward.TCP_CONNECTIONS_MAX + 4 * forward.UDP_PEERS_MAX
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@pytest.fixture
def forwarded() -> Iterator[tuple[Service, int]]:
    """A service at GUEST:port behind a forwarder at NODE:port (TCP and UDP)."""
    port = free_port()
    service = Service(port)
    wanted = [ports.Forward("web", proto, NODE, port, port) for proto in ports.PROTOCOLS]
    forwarder = forward.Forwarder([(one, ports.bind(one)) for one in wanted])
    forwarder.start()
    forwarder.set_guest(GUEST)
    yield service, port
    forwarder.close()
    service.close()


def connect(port: int, seconds: float = 10) -> socket.socket:
    deadline = time.monotonic() + seconds
    while True:
        sock = socket.socket()
        sock.settimeout(seconds)
        try:
            sock.connect((NODE, port))
            return sock
        except ConnectionRefusedError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # the next attempt of a client that retries
        except BaseException:
            sock.close()
            raise


def test_a_port_is_refused_until_the_guest_listens_then_spliced_with_half_close(
    forwarded: tuple[Service, int],
) -> None:
    service, port = forwarded
    with pytest.raises(ConnectionRefusedError), socket.create_connection((NODE, port)):
        pass  # the guest's service is not up: a check sees "refused", not the proxy
    service.listen()
    with connect(port) as client:
        client.sendall(b"hello")
        assert client.recv(100) == b"hello"
        client.shutdown(socket.SHUT_WR)  # the guest sees EOF and can still answer
        assert client.recv(100) == b"bye"
        assert client.recv(100) == b""


def test_bulk_data_arrives_whole_through_the_forward(forwarded: tuple[Service, int]) -> None:
    service, port = forwarded
    service.listen()
    payload = os.urandom(8 << 20)
    with connect(port) as client:
        threading.Thread(target=client.sendall, args=(payload,), daemon=True).start()
        received = bytearray()
        while len(received) < len(payload):
            chunk = client.recv(1 << 20)
            assert chunk
            received += chunk
    assert received == payload


def echoed(port: int) -> bool:
    """Whether a new connection is served (echoed), or reset by the forwarder."""
    try:
        with connect(port) as sock:
            sock.sendall(b"?")
            return sock.recv(10) == b"?"
    except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
        return False


def test_a_connection_flood_is_cut_at_the_limit_and_the_port_serves_again(
    forwarded: tuple[Service, int],
) -> None:
    service, port = forwarded
    service.listen()
    held = [connect(port) for _ in range(forward.TCP_CONNECTIONS_MAX)]
    try:
        for sock in held[:3]:
            sock.sendall(b"x")
            assert sock.recv(10) == b"x"
        assert not any(echoed(port) for _ in range(20)), "past the limit: reset at once"
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while not echoed(port):  # the forwarder frees the slots as the closes arrive
        assert time.monotonic() < deadline, "the port never served again"
        time.sleep(0.05)
    # The guest saw the held ones, the forwarder's one probe and the last: no reset one.
    assert service.connections == forward.TCP_CONNECTIONS_MAX + 2


def test_udp_clients_each_get_their_answers_and_a_flood_of_clients_is_capped(
    forwarded: tuple[Service, int],
) -> None:
    service, port = forwarded
    service.listen()
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for n, client in enumerate(clients):
            client.settimeout(5)
            client.sendto(b"q%d" % n, (NODE, port))
        for n, client in enumerate(clients):
            assert client.recvfrom(100) == (b"q%d" % n, (NODE, port))
        flood = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(300)]
        try:
            for sock in flood:
                sock.sendto(b"f", (NODE, port))
            deadline = time.monotonic() + 5
            while len(service.peers) < forward.UDP_PEERS_MAX and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            for sock in flood:
                sock.close()
        # One socket to the guest per client, never more than the limit.
        assert len(service.peers) == forward.UDP_PEERS_MAX
        clients[0].sendto(b"still", (NODE, port))  # a known client keeps its answers
        assert clients[0].recvfrom(100)[0] == b"still"
    finally:
        for client in clients:
            client.close()
