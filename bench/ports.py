"""Benchmark 10: a forwarded port (task option ``ports``) against a direct connection.

One Linux VM runs a guest service on its own address: a sink that answers with the byte
count once the client half-closes, and a one-byte echo. The same client talks to it
directly (the VM's address, as from the Mac itself) and through the forward (the node's
address and the allocated port), in alternating runs, so both see the same machine:

* throughput: 256 MiB sent, until the guest's count comes back;
* latency: 2,000 one-byte round trips, p50 of each run;
* idle cost: the VM supervisor's CPU time over 10 s with the forward listening and one
  idle connection open, against the same window of a VM without ports.
"""

from __future__ import annotations

import socket
import time
import uuid
from typing import Any

import trio

from bench.rig import PASSWORD, Rig, open_rig
from bench.util import CpuMeter, Sample, paired_ratios
from tart_trio._tart import processes
from tests.faketart.fixtures import LINUX_IMAGE

NODE = "127.0.0.1"
GUEST_PORT = 9000
BULK = 256 << 20
ROUND_TRIPS = 2000
IDLE_SECONDS = 10.0

SERVER = r"""
import socket, sys, threading
ip = sys.argv[1]
def serve(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    mode = c.recv(1)
    if mode == b"S":
        n = 0
        while chunk := c.recv(1 << 20):
            n += len(chunk)
        c.sendall(str(n).encode())
    else:
        while b := c.recv(1):
            c.sendall(b)
    c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((ip, int(sys.argv[2])))
s.listen(16)
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""

SCRIPT = 'set -- $SSH_CONNECTION\nexec python3 -c "$SERVER" "$3" ' + str(GUEST_PORT) + "\n"


def _hcl(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + escaped.replace("${", "$${").replace("%{", "%%{") + '"'


def service_hcl(*, ports: bool) -> str:
    option = '        ports = ["svc"]\n' if ports else ""
    return (
        'job "bench-ports" {\n  group "g" {\n    task "vm" {\n      driver = "tart"\n'
        f"      env {{\n        SERVER = {_hcl(SERVER)}\n      }}\n"
        f'      config {{\n        url = "{LINUX_IMAGE}"\n        ssh_user = "admin"\n'
        f'        ssh_password = "{PASSWORD}"\n        command = "/bin/sh"\n'
        f'        args = ["-c", {_hcl(SCRIPT)}]\n{option}      }}\n    }}\n  }}\n}}\n'
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((NODE, 0))
        return int(sock.getsockname()[1])


async def start(rig: Rig, *, host_port: int | None) -> dict[str, Any]:
    alloc = str(uuid.uuid4())
    ports = (
        [{"label": "svc", "value": host_port, "to": GUEST_PORT, "host_ip": NODE}]
        if host_port
        else []
    )
    task = {
        "alloc_id": alloc,
        "alloc_dir": str(rig.allocs / alloc),
        "env": {},
        "resources": {"cpu_shares": 1000, "memory_mb": 1024, "cpuset_cpus": "0", "ports": ports},
    }
    started: dict[str, Any] = await rig.sim.call(
        "start_task", task=task, job_hcl=service_hcl(ports=bool(host_port)), create_alloc_dir=True
    )
    started["vm"] = f"nomad-{alloc}"
    return started


def connect(address: tuple[str, int], seconds: float = 30) -> socket.socket:
    deadline = time.monotonic() + seconds
    while True:
        try:
            sock = socket.create_connection(address, timeout=30)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # the guest's service is still starting
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def bulk(address: tuple[str, int]) -> float:
    """Seconds to send BULK bytes and hear the guest's count."""
    payload = b"\0" * (1 << 20)
    with connect(address) as sock:
        t0 = time.perf_counter()
        sock.sendall(b"S")
        for _ in range(BULK // len(payload)):
            sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        answer = sock.recv(64)
        elapsed = time.perf_counter() - t0
    assert int(answer) == BULK, answer
    return elapsed


def round_trips(address: tuple[str, int]) -> Sample:
    sample = Sample()
    with connect(address) as sock:
        sock.sendall(b"E")
        for _ in range(ROUND_TRIPS):
            t0 = time.perf_counter()
            sock.sendall(b"x")
            sock.recv(1)
            sample.add(time.perf_counter() - t0)
    return sample


def supervisor_pid(vm: str) -> int:
    from pathlib import Path

    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = tuple((entry / "cmdline").read_bytes().rstrip(b"\0").decode().split("\0"))
        except OSError:
            continue
        if processes.is_supervisor(argv) and vm in argv:
            return int(entry.name)
    raise LookupError(f"no supervisor for {vm}")


async def idle_cpu(pid: int, address: tuple[str, int] | None) -> float:
    held = await trio.to_thread.run_sync(connect, address) if address else None
    try:
        meter = CpuMeter(pid)
        await trio.sleep(IDLE_SECONDS)
        return meter.read()["cpu"]
    finally:
        if held is not None:
            held.close()


async def run(*, runs: int = 5) -> dict[str, Any]:
    direct_bulk, forward_bulk = Sample(), Sample()
    direct_p50, forward_p50, added_p50 = Sample(), Sample(), Sample()
    forward_cpu = 0.0  # the supervisor's CPU seconds over the forwarded bulk runs
    host_port = free_port()
    async with open_rig("ports") as rig:
        await trio.to_thread.run_sync(lambda: rig.fake.tart("pull", LINUX_IMAGE, check=True))
        await rig.launch()
        forwarded = await start(rig, host_port=host_port)
        plain = await start(rig, host_port=None)
        try:
            guest = (forwarded["network_override"]["addr"], GUEST_PORT)
            node = (NODE, host_port)
            supervisor = supervisor_pid(forwarded["vm"])
            for _ in range(runs):
                direct_bulk.add(await trio.to_thread.run_sync(bulk, guest))
                meter = CpuMeter(supervisor)
                forward_bulk.add(await trio.to_thread.run_sync(bulk, node))
                forward_cpu += meter.read()["cpu"]
                direct = await trio.to_thread.run_sync(round_trips, guest)
                through = await trio.to_thread.run_sync(round_trips, node)
                direct_p50.add(direct.median)
                forward_p50.add(through.median)
                added_p50.add(through.median - direct.median)
            idle_forward = await idle_cpu(supervisor, node)
            idle_plain = await idle_cpu(supervisor_pid(plain["vm"]), None)
        finally:
            await rig.destroy_all([forwarded["task_id"], plain["task_id"]])
    mib = BULK / (1 << 20)
    # Throughput ratio per run: direct time / forwarded time (1.0 = as fast as direct).
    ratios = paired_ratios(direct_bulk, forward_bulk)
    return {
        "runs": runs,
        "bulk_mib": mib,
        "direct_mib_s": mib / direct_bulk.median,
        "forward_mib_s": mib / forward_bulk.median,
        "throughput_ratio": ratios.as_dict(),
        "direct_rtt": direct_p50.as_dict(),
        "forward_rtt": forward_p50.as_dict(),
        "added_rtt": added_p50.as_dict(),
        "round_trips": ROUND_TRIPS,
        "idle_seconds": IDLE_SECONDS,
        "idle_cpu_forward": idle_forward,
        "idle_cpu_plain": idle_plain,
        # CPU share of one core the forward used while it carried the bulk runs
        "forward_cpu_share": forward_cpu / sum(forward_bulk.values),
    }
