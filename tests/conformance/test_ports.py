"""Service ports: Nomad's allocated ports reach the guest (task option ``ports``).

The fake's guests share the host's network namespace (each has its own 127.0.0.N), so a
guest service here listens on its own address, which it reads from ``SSH_CONNECTION``; on a
Mac it would listen on 0.0.0.0. The node's address (``host_ip``) is 127.0.0.1.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conformance.conftest import until
from tests.conformance.nomadsim import NomadSim, NomadSimError
from tests.conformance.test_command import hcl_string, launch, start
from tests.conformance.test_lifecycle import vm_names
from tests.faketart.fixtures import LINUX_IMAGE, MACOS_IMAGE, FakeTart, needs_guest_reason

pytestmark = pytest.mark.skipif(needs_guest_reason() is not None, reason=needs_guest_reason() or "")

NODE_IP = "127.0.0.1"

#: A guest service on every port in argv[2:]: TCP answers one HTTP GET with where it was
#: reached and who asked, or echoes lines; UDP answers each datagram with "guest:" + it.
SERVER = r"""
import socket, sys, threading
ip = sys.argv[1]
def serve(c, peer, port):
    f = c.makefile("rb")
    line = f.readline()
    if line.startswith(b"GET "):
        while f.readline() not in (b"\r\n", b"\n", b""):
            pass
        body = ("guest %s:%d, client %s\n" % (ip, port, peer[0])).encode()
        c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    else:
        while line:
            c.sendall(line)
            line = f.readline()
    c.close()
def tcp(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, port))
    s.listen(16)
    while True:
        c, peer = s.accept()
        threading.Thread(target=serve, args=(c, peer, port), daemon=True).start()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, port))
    while True:
        d, a = s.recvfrom(2048)
        s.sendto(b"guest:" + d, a)
for port in map(int, sys.argv[2:]):
    threading.Thread(target=tcp, args=(port,), daemon=True).start()
    threading.Thread(target=udp, args=(port,), daemon=True).start()
threading.Event().wait()
"""

#: The command: note Nomad's port variables, then serve the guest ports given as args.
SERVE = r"""
env | grep -E '^NOMAD_(PORT|HOST_PORT|ADDR|IP)_' | sort > "$NOMAD_ALLOC_DIR/data/ports.env"
set -- $SSH_CONNECTION "$@"
ip=$3
shift 4
exec python3 -c "$SERVER" "$ip" "$@"
"""


def service_job(
    *guest_ports: int, ports: tuple[str, ...], image: str = MACOS_IMAGE, network: str = ""
) -> str:
    argv = ", ".join(hcl_string(a) for a in ["-c", SERVE, "job", *map(str, guest_ports)])
    labels = ", ".join(f'"{label}"' for label in ports)
    return (
        f'job "web" {{\n  group "g" {{\n    task "vm" {{\n      driver = "tart"\n'
        f"      env {{\n        SERVER = {hcl_string(SERVER)}\n      }}\n"
        f'      config {{\n        url = "{image}"\n        ssh_user = "admin"\n'
        f'        ssh_password = "admin"\n        command = "/bin/sh"\n'
        f"        args = [{argv}]\n        ports = [{labels}]\n{network}"
        "      }\n    }\n  }\n}\n"
    )


def free_port() -> int:
    """A port nothing on this host holds now, for both TCP and UDP."""
    while True:
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind((NODE_IP, 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind((NODE_IP, port))
            except OSError:
                continue
            return port


async def connect(address: str, port: int) -> trio.SocketStream:
    """Connect as a check does, again until the guest's service is up (refused till then)."""
    with trio.fail_after(20):
        while True:
            try:
                return await trio.open_tcp_stream(address, port)
            except OSError:
                await trio.sleep(0.1)  # the next check


async def http_get(address: str, port: int) -> str:
    """One HTTP GET as Nomad's http check makes it; the response body."""
    stream = await connect(address, port)
    with trio.fail_after(10):
        async with stream:
            await stream.send_all(b"GET / HTTP/1.0\r\nHost: check\r\n\r\n")
            response = b""
            while chunk := await stream.receive_some():
                response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), response
    return body.decode()


async def udp_round_trip(port: int, payload: bytes) -> bytes:
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
        await sock.connect((NODE_IP, port))
        with trio.fail_after(10):
            while True:  # the guest's server may still be starting: UDP only retries
                await sock.send(payload)
                with trio.move_on_after(0.5):
                    return await sock.recv(2048)


def bindable(port: int) -> bool:
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        try:
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((NODE_IP, port))
            udp.bind((NODE_IP, port))
        except OSError:
            return False
        return True


async def start_service(
    sim: NomadSim,
    ports: list[dict[str, Any]],
    *guest_ports: int,
    image: str = MACOS_IMAGE,
    network: str = "",
) -> dict[str, Any]:
    labels = tuple(str(p["label"]) for p in ports)
    resources = {"cpu_shares": 4000, "memory_mb": 4096, "cpuset_cpus": "0,1,2,3", "ports": ports}
    job_hcl = service_job(*guest_ports, ports=labels, image=image, network=network)
    return await start(sim, job_hcl, resources=resources)


async def test_tcp_udp_and_service_addresses_reach_the_guest_in_both_address_modes(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    await launch(sim, fake_tart, tmp_path)
    http, raw = free_port(), free_port()
    ports = [
        {"label": "http", "value": http, "to": 8080, "host_ip": NODE_IP},
        {"label": "raw", "value": raw, "host_ip": NODE_IP},  # no `to`: the same port inside
    ]
    started = await start_service(sim, ports, 8080, raw, image=LINUX_IMAGE)
    task_id = started["task_id"]
    guest_ip = started["network_override"]["addr"]
    assert started["network_override"] == {
        "addr": guest_ip,
        "port_map": {"http": 8080, "raw": raw},
        "auto_advertise": False,
    }

    # A service and its http check in the default modes: the node's address and host port.
    for mode in ("auto", "host"):
        found = await sim.call(
            "service_address", task_id=task_id, port_label="http", address_mode=mode
        )
        assert (found["ip"], found["port"]) == (NODE_IP, http)
        body = await http_get(found["ip"], found["port"])
        # The guest is reached at its port `to`, from the host's side of the VM network.
        assert body == f"guest {guest_ip}:8080, client {NODE_IP}\n"
    # address_mode = "driver": the VM's own address and `to`, reachable from the host.
    found = await sim.call(
        "service_address", task_id=task_id, port_label="http", address_mode="driver"
    )
    assert (found["ip"], found["port"]) == (guest_ip, 8080)
    assert (await http_get(found["ip"], found["port"])).startswith(f"guest {guest_ip}:8080,")

    assert await http_get(NODE_IP, raw) == f"guest {guest_ip}:{raw}, client {NODE_IP}\n"
    assert await udp_round_trip(http, b"ping") == b"guest:ping"
    assert await udp_round_trip(raw, b"pong") == b"guest:pong"

    # Inside the guest the variables mean what they mean inside a Docker container.
    env = (Path(started["alloc_dir"]) / "alloc" / "data" / "ports.env").read_text().splitlines()
    assert env == sorted(
        [
            f"NOMAD_ADDR_http={NODE_IP}:{http}",
            f"NOMAD_ADDR_raw={NODE_IP}:{raw}",
            f"NOMAD_HOST_PORT_http={http}",
            f"NOMAD_HOST_PORT_raw={raw}",
            f"NOMAD_IP_http={NODE_IP}",
            f"NOMAD_IP_raw={NODE_IP}",
            "NOMAD_PORT_http=8080",
            f"NOMAD_PORT_raw={raw}",
        ]
    )

    await sim.call("stop_task", task_id=task_id, timeout_seconds=5)
    assert bindable(http) and bindable(raw), "the ports are free once StopTask returned"
    await sim.call("destroy_task", task_id=task_id)
    assert vm_names(fake_tart) == []


def vm_job(*, ports: tuple[str, ...]) -> str:
    """A VM service with no command: the guest's own sshd is the service."""
    labels = ", ".join(f'"{label}"' for label in ports)
    return (
        f'job "vm" {{\n  group "g" {{\n    task "vm" {{\n      driver = "tart"\n'
        f'      config {{\n        url = "{MACOS_IMAGE}"\n        ssh_user = "admin"\n'
        f'        ssh_password = "admin"\n        ports = [{labels}]\n      }}\n    }}\n  }}\n}}\n'
    )


async def read_line(stdout: trio.abc.ReceiveStream, seen: bytearray) -> bytes:
    with trio.fail_after(15):
        while b"\n" not in seen:
            chunk = await stdout.receive_some()
            if not chunk:
                return b""
            seen += chunk
    line, _, rest = bytes(seen).partition(b"\n")
    seen[:] = rest
    return line


async def test_ssh_through_the_node_port_survives_a_plugin_kill_mid_session(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    await launch(sim, fake_tart, tmp_path)
    port = free_port()
    ports = [{"label": "ssh", "value": port, "to": 22, "host_ip": NODE_IP}]
    resources = {"cpu_shares": 4000, "memory_mb": 4096, "cpuset_cpus": "0,1,2,3", "ports": ports}
    started = await start(sim, vm_job(ports=("ssh",)), resources=resources)
    guest_ip = started["network_override"]["addr"]

    # `ssh -p $NOMAD_HOST_PORT_ssh admin@<node>`: the guest's sshd, reached from the host's side.
    argv = fake_tart.ssh_argv(NODE_IP, 'echo "$SSH_CONNECTION"', extra=["-p", str(port)])
    await (await connect(NODE_IP, port)).aclose()  # listening once the guest's port accepts
    login = await trio.run_process(argv, env=fake_tart.ssh_env(), capture_stdout=True, check=False)
    client, _, server, server_port = login.stdout.decode().split()
    assert (client, server, server_port) == (NODE_IP, guest_ip, "22")

    session_argv = fake_tart.ssh_argv(
        NODE_IP, 'while read -r line; do echo "got $line"; done', extra=["-p", str(port)]
    )
    session = await trio.lowlevel.open_process(
        session_argv,
        env=fake_tart.ssh_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert session.stdin is not None and session.stdout is not None
        seen = bytearray()
        await session.stdin.send_all(b"before\n")
        assert await read_line(session.stdout, seen) == b"got before"

        await sim.call("sigkill")
        await session.stdin.send_all(b"while no plugin runs\n")
        assert await read_line(session.stdout, seen) == b"got while no plugin runs"

        await launch(sim, fake_tart, tmp_path)
        await sim.call("recover_task", handle=started["handle"], drop_driver_config=True)
        await session.stdin.send_all(b"after\n")
        assert await read_line(session.stdout, seen) == b"got after"

        await sim.call("stop_task", task_id=started["task_id"], timeout_seconds=5)
        assert await read_line(session.stdout, seen) == b"", "the session ends with the VM"
    finally:
        with trio.CancelScope(shield=True):
            session.kill()
            await session.wait()
            for pipe in (session.stdin, session.stdout):
                if pipe is not None:
                    await pipe.aclose()
    assert bindable(port), "the port is free once StopTask returned"
    await sim.call("destroy_task", task_id=started["task_id"])
    assert vm_names(fake_tart) == []


async def test_a_port_another_process_holds_fails_the_start_before_the_clone(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    await launch(sim, fake_tart, tmp_path)
    free, taken = free_port(), free_port()
    ports = [
        {"label": "web", "value": free, "to": 80, "host_ip": NODE_IP},
        {"label": "api", "value": taken, "to": 81, "host_ip": NODE_IP},
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind((NODE_IP, taken))  # only UDP: TCP and UDP are forwarded alike
        with pytest.raises(NomadSimError) as failed:
            await start_service(sim, ports, 80, 81)
    assert failed.value.recoverable is True, failed.value.reply
    assert f'port "api" (udp {NODE_IP}:{taken}) cannot be bound' in failed.value.message
    assert fake_tart.calls_of("clone") == [] and vm_names(fake_tart) == []
    await until(lambda: bindable(free) and bindable(taken))


async def test_ports_must_name_the_groups_ports_before_anything_is_cloned(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    await launch(sim, fake_tart, tmp_path)
    ports = [{"label": "http", "value": free_port(), "to": 80, "host_ip": NODE_IP}]
    job_hcl = service_job(80, ports=("http", "metrics"))
    resources = {"cpu_shares": 4000, "memory_mb": 4096, "cpuset_cpus": "0,1,2,3", "ports": ports}
    with pytest.raises(NomadSimError) as failed:
        await start(sim, job_hcl, resources=resources)
    assert failed.value.code == "InvalidArgument"
    message = failed.value.message
    assert (
        "ports[1]: port 'metrics' is not in the group's network block (its ports: http)" in message
    )
    assert fake_tart.calls_of("clone") == []


async def test_ports_forward_into_a_softnet_vm_beside_its_softnet_expose(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    await launch(sim, fake_tart, tmp_path)
    http = free_port()
    ports = [{"label": "http", "value": http, "to": 8080, "host_ip": NODE_IP}]
    network = '        network {\n          softnet_expose = ["2222:22"]\n        }\n'
    started = await start_service(sim, ports, 8080, network=network)
    (run,) = fake_tart.calls_of("run")
    assert "--net-softnet" in run and "--net-softnet-expose" in run
    guest_ip = started["network_override"]["addr"]
    assert await http_get(NODE_IP, http) == f"guest {guest_ip}:8080, client {NODE_IP}\n"
    assert await udp_round_trip(http, b"soft") == b"guest:soft"
    await sim.call("stop_task", task_id=started["task_id"], timeout_seconds=5)
    assert bindable(http)
    await sim.call("destroy_task", task_id=started["task_id"])
