"""Benchmarks 3 and 5: guest log throughput, and control-plane latency under log load.

Ten fake Linux VMs run with a ``log_command`` that the bench drives through a shared
directory (``directory { name = "ctl" }``, which the guests mount at ``/mnt/shared/ctl``):
``gen.sh <task>`` cats a fixed data file once for every ``go.<task>.<n>``
file the bench creates, and back to back while a ``load`` file exists; otherwise it sleeps.

Throughput (task 0 alone): the plugin path (guest ``cat`` -> SSH -> plugin -> stdout FIFO ->
nomadsim's logmon-like reader -> ``vm.stdout.0``) against OpenSSH (``ssh guest cat`` of the
same file into a file), in alternating runs. Both are timed the same way: by watching the
output file grow, from the first to the last byte.

Latency: InspectTask round trips (bench -> nomadsim -> gRPC -> plugin and back), alternating
rounds with the ten streams idle and with all ten streaming at full speed; ExecTask too when
the driver advertises ``exec``.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any

import trio

from bench.rig import PASSWORD, Rig, job_hcl, open_rig
from bench.util import CpuMeter, Sample, paired_ratios
from tests.faketart.fixtures import LINUX_IMAGE

GUEST_DIR = "/mnt/shared/ctl"
#: Linux guests mount Tart's shares themselves (nothing is automounted there).
MOUNT = (
    "mountpoint -q /mnt/shared || sudo mount -t virtiofs com.apple.virtio-fs.automount /mnt/shared"
)
GEN_SH = """\
#!/bin/sh
# gen.sh TASK: cat data once per go.TASK.N file; back to back while "load" exists.
D=${0%/*}
n=0
while :; do
  if [ -e "$D/load" ]; then cat "$D/data"; continue; fi
  if [ -e "$D/go.$1.$n" ]; then cat "$D/data"; n=$((n+1)); continue; fi
  sleep 0.2
done
"""
LINE = "{ts}.{us:06d}+0000  localhost bench[{pid}]: seq={seq} (com.example.bench) log line\n"


def make_data(path: Path, lines: int) -> int:
    """A syslog-style log of ``lines`` lines (~100 bytes each); returns its size."""
    chunks = []
    for seq in range(lines):
        chunks.append(LINE.format(ts="2026-11-27 07:35:31", us=seq % 1_000_000, pid=4242, seq=seq))
    data = "".join(chunks).encode()
    path.write_bytes(data)
    path.chmod(0o644)
    return len(data)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


async def watch_growth(
    path: Path, start: int, expected: int, quiet: float = 1.0
) -> dict[str, float]:
    """Poll ``path`` until ``expected`` more bytes arrived, or it stopped growing.

    Returns the bytes seen between the first and the last observed growth and that time.
    """
    began = time.monotonic()
    first: tuple[float, int] | None = None
    last: tuple[float, int] = (began, start)
    while True:
        now = time.monotonic()
        size = _size(path)
        if size > last[1]:
            last = (now, size)
            first = first or last
            if size - start >= expected:
                break
        idle_for = now - last[0]
        if (first is not None and idle_for > quiet) or idle_for > 20:
            break
        await trio.sleep(0.002)
    if first is None:
        return {"bytes": 0.0, "seconds": float("nan"), "received": 0.0}
    return {
        "bytes": float(last[1] - first[1]),
        "seconds": last[0] - first[0],
        "received": float(last[1] - start),
    }


async def plugin_run(
    rig: Rig, share: Path, stdout_log: Path, n: int, size: int, line_len: float
) -> dict[str, float]:
    assert rig.plugin_pid is not None
    start = _size(stdout_log)
    meter = CpuMeter(rig.plugin_pid)
    (share / f"go.0.{n}").touch()
    grown = await watch_growth(stdout_log, start, size)
    cpu = meter.read()
    lines = grown["received"] / line_len
    return {
        "lines_per_s": grown["bytes"] / line_len / grown["seconds"],
        "mb_per_s": grown["bytes"] / grown["seconds"] / 1e6,
        "loss_pct": 100 * (size - grown["received"]) / size,
        "cpu_per_10k_lines": cpu["cpu"] / max(lines, 1) * 10_000,
    }


async def openssh_run(rig: Rig, ip: str, out: Path, size: int, line_len: float) -> dict[str, float]:
    out.unlink(missing_ok=True)
    argv = rig.fake.ssh_argv(ip, f"cat '{GUEST_DIR}/data'")
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=sink, env=rig.fake.ssh_env(PASSWORD)
        )
    try:
        grown = await watch_growth(out, 0, size)
        _, status, usage = await trio.to_thread.run_sync(os.wait4, proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    lines = grown["received"] / line_len
    return {
        "lines_per_s": grown["bytes"] / line_len / grown["seconds"],
        "mb_per_s": grown["bytes"] / grown["seconds"] / 1e6,
        "loss_pct": 100 * (size - grown["received"]) / size,
        "cpu_per_10k_lines": (usage.ru_utime + usage.ru_stime) / max(lines, 1) * 10_000,
    }


def asyncssh_alone(ip: str, path: str, alg: str | None) -> dict[str, float]:
    """The same transfer with asyncssh on a plain asyncio loop (no trio, no pump, no FIFO).

    Runs in its own thread; CPU is that thread's CPU time.
    """
    import asyncio

    import asyncssh

    async def transfer() -> dict[str, float]:
        options: dict[str, Any] = {"encryption_algs": [alg]} if alg else {}
        async with asyncssh.connect(
            ip,
            username="admin",
            password=PASSWORD,
            known_hosts=None,
            client_keys=None,
            agent_path=None,
            preferred_auth="password",
            **options,
        ) as conn:
            cipher = str(conn.get_extra_info("send_cipher") or alg or "default")
            cpu0, t0 = time.thread_time(), time.perf_counter()
            received = 0
            async with conn.create_process(f"cat '{path}'", encoding=None) as proc:
                while chunk := await proc.stdout.read(65536):
                    received += len(chunk)
            return {
                "seconds": time.perf_counter() - t0,
                "cpu": time.thread_time() - cpu0,
                "bytes": float(received),
                "cipher": cipher,  # type: ignore[dict-item]
            }

    return asyncio.run(transfer())


def pump_cpu(data_path: Path) -> float | None:
    """CPU seconds of the plugin's log line pump alone over the data, in 64 KiB chunks."""
    try:
        from tart_trio._guest.cursor import LinePump
    except ImportError:
        return None
    data = data_path.read_bytes()
    scratch = data_path.parent / "pump.cursor"
    best = float("inf")
    for _ in range(3):
        pump = LinePump(lambda _b: None, scratch, skipping_untimed=False)
        cpu0 = time.thread_time()
        for at in range(0, len(data), 65536):
            pump.feed(data[at : at + 65536])
        best = min(best, time.thread_time() - cpu0)
    scratch.unlink(missing_ok=True)
    return best


def saved_every() -> int:
    """Bytes between two saves of the log cursor: one a write to the FIFO (at most
    ``PIPE_BUF`` bytes), or one a 64 KiB chunk before writes were cut so."""
    try:
        from tart_trio._host.fifo import ATOMIC_WRITE
    except ImportError:
        return 65536
    return ATOMIC_WRITE


def cursor_save_seconds(scratch: Path) -> float | None:
    """CPU seconds of one save of the log cursor file (``saved_every`` says how often)."""
    try:
        from tart_trio._guest.cursor import Cursor, CursorFile
    except ImportError:
        return None
    path = scratch / "save.cursor"
    cursor = Cursor("2026-11-27 07:35:31.123456+0000", 1)
    saver = CursorFile(path)
    cpu0 = time.thread_time()
    for _ in range(500):
        saver.save(cursor)
    took = (time.thread_time() - cpu0) / 500
    saver.close()
    path.unlink(missing_ok=True)
    return took


async def quiesce(paths: list[Path], quiet: float = 1.0) -> None:
    """Wait until none of ``paths`` grew for ``quiet`` seconds."""
    sizes = [_size(p) for p in paths]
    still = time.monotonic()
    while time.monotonic() - still < quiet:
        await trio.sleep(0.1)
        now = [_size(p) for p in paths]
        if now != sizes:
            sizes, still = now, time.monotonic()


def count_gaps(path: Path, lines: int) -> tuple[int, int]:
    """(lines, sequence breaks) in back-to-back copies of the data: drops show as breaks."""
    breaks = count = 0
    prev = None
    with path.open("rb") as f:
        for raw in f:
            count += 1
            at = raw.find(b"seq=")
            try:
                seq: int | None = int(raw[at + 4 : raw.find(b" ", at)]) if at >= 0 else None
            except ValueError:  # a line cut by a drop, glued to the next one
                seq = None
            if seq is None or (prev is not None and seq != (prev + 1) % lines):
                breaks += 1
            prev = seq
    return count, breaks


async def latency_round(
    rig: Rig, task_ids: list[str], calls: int, exec_calls: int
) -> tuple[Sample, Sample]:
    inspect, execs = Sample(), Sample()
    for _ in range(calls):
        task_id = random.choice(task_ids)
        t0 = time.perf_counter()
        await rig.sim.call("inspect_task", task_id=task_id)
        inspect.add(time.perf_counter() - t0)
    for _ in range(exec_calls):
        task_id = random.choice(task_ids)
        t0 = time.perf_counter()
        await rig.sim.call("exec_task", task_id=task_id, command=["/bin/true"], timeout_seconds=30)
        execs.add(time.perf_counter() - t0)
    return inspect, execs


async def run(
    *,
    runs: int = 5,
    lines: int = 500_000,
    tasks: int = 10,
    rounds: int = 3,
    calls: int = 100,
    exec_calls: int = 10,
) -> dict[str, Any]:
    out: dict[str, Any] = {"plugin": [], "openssh": []}
    async with open_rig("logs") as rig:
        rig.fake.set_knobs("*", log_rate=0)
        share = rig.root / "ctl"
        share.mkdir()
        share.chmod(0o755)
        (share / "gen.sh").write_text(GEN_SH)
        (share / "gen.sh").chmod(0o755)
        size = await trio.to_thread.run_sync(make_data, share / "data", lines)
        line_len = size / lines
        out["data"] = {"lines": lines, "bytes": size, "line_bytes": line_len}
        await trio.to_thread.run_sync(lambda: rig.fake.tart("pull", LINUX_IMAGE, check=True))
        await rig.launch()
        caps = (await rig.sim.call("capabilities"))["capabilities"]
        out["exec_capability"] = bool(caps.get("exec"))
        started: list[dict[str, Any]] = []
        try:
            # One at a time: concurrent clones race with `tart set` (see the tasks benchmark).
            for i in range(tasks):
                job = job_hcl(
                    log_command=[
                        "/bin/sh",
                        "-c",
                        f'{MOUNT}; exec /bin/sh {GUEST_DIR}/gen.sh "$0"',
                        str(i),
                    ],
                    directories=[("ctl", str(share))],
                )
                started.append(await rig.start(job))
            logs = [Path(s["stdout_log"]) for s in started]
            ip = (await rig.sim.call("inspect_task", task_id=started[0]["task_id"]))["driver"][
                "attributes"
            ]["ip"]
            await trio.sleep(1)

            # -- benchmark 3: one stream, plugin vs OpenSSH, alternating ---------------------
            await openssh_run(rig, ip, rig.root / "warm.out", size, line_len)  # warm caches
            for n in range(runs):
                out["plugin"].append(await plugin_run(rig, share, logs[0], n, size, line_len))
                await quiesce([logs[0]], 0.5)
                out["openssh"].append(
                    await openssh_run(rig, ip, rig.root / "openssh.out", size, line_len)
                )
            (rig.root / "openssh.out").unlink(missing_ok=True)
            await breakdown(rig, out, ip, share, size, line_len)

            # -- benchmark 5: control-plane latency, idle vs. ten streams at full speed ----------
            await latency(
                rig, out, share, started, logs, lines, line_len, rounds, calls, exec_calls
            )
        except Exception as exc:  # keep what was measured; the report says what failed
            out["error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        finally:
            with contextlib.suppress(FileNotFoundError):
                (share / "load").unlink()
            with trio.CancelScope(shield=True), trio.move_on_after(60):
                await rig.destroy_all([s["task_id"] for s in started])
    plugin = Sample([r["lines_per_s"] for r in out["plugin"]])
    openssh = Sample([r["lines_per_s"] for r in out["openssh"]])
    out["ratio"] = paired_ratios(plugin, openssh).as_dict()
    return out


async def breakdown(
    rig: Rig, out: dict[str, Any], ip: str, share: Path, size: int, line_len: float
) -> None:
    """Where the plugin's CPU per line goes: asyncssh alone, and the line pump alone."""
    lines = size / line_len
    for key, alg in (("asyncssh_default", None), ("asyncssh_aes128gcm", "aes128-gcm@openssh.com")):
        runs = []
        for _ in range(3):
            r = await trio.to_thread.run_sync(asyncssh_alone, ip, f"{GUEST_DIR}/data", alg)
            runs.append(r)
        best = max(runs, key=lambda r: r["bytes"] / r["seconds"])
        out[key] = {
            "cipher": best["cipher"],
            "lines_per_s": best["bytes"] / line_len / best["seconds"],
            "mb_per_s": best["bytes"] / best["seconds"] / 1e6,
            "cpu_per_10k_lines": min(r["cpu"] for r in runs) / lines * 10_000,
        }
    pump = await trio.to_thread.run_sync(pump_cpu, share / "data")
    if pump is not None:
        out["pump_cpu_per_10k_lines"] = pump / lines * 10_000
    save = await trio.to_thread.run_sync(cursor_save_seconds, rig.root)
    if save is not None:
        every = saved_every()
        out["cursor_save_seconds"] = save
        out["cursor_save_bytes"] = every
        out["cursor_save_per_10k_lines"] = save * size / every / lines * 10_000


async def latency(
    rig: Rig,
    out: dict[str, Any],
    share: Path,
    started: list[dict[str, Any]],
    logs: list[Path],
    lines: int,
    line_len: float,
    rounds: int,
    calls: int,
    exec_calls: int,
) -> None:
    """Benchmark 5: InspectTask (and ExecTask) round trips, idle vs. ten full-speed streams."""
    task_ids = [s["task_id"] for s in started]
    execs = exec_calls if out["exec_capability"] else 0
    idle_i, load_i, idle_e, load_e = Sample(), Sample(), Sample(), Sample()
    load_rates = Sample()
    gaps = 0
    total_lines = 0
    for _ in range(rounds):
        await quiesce(logs, 0.5)
        i_s, e_s = await latency_round(rig, task_ids, calls, execs)
        idle_i.values += i_s.values
        idle_e.values += e_s.values
        for log in logs:
            with contextlib.suppress(FileNotFoundError):
                os.truncate(log, 0)
        (share / "load").touch()
        await trio.sleep(1.0)
        sizes0, t0 = [_size(p) for p in logs], time.monotonic()
        i_s, e_s = await latency_round(rig, task_ids, calls, execs)
        sizes1, t1 = [_size(p) for p in logs], time.monotonic()
        (share / "load").unlink()
        load_i.values += i_s.values
        load_e.values += e_s.values
        load_rates.add((sum(sizes1) - sum(sizes0)) / line_len / (t1 - t0))
        await quiesce(logs, 1.0)
        for log in logs:
            n_lines, breaks = await trio.to_thread.run_sync(count_gaps, log, lines)
            gaps += breaks
            total_lines += n_lines
            os.truncate(log, 0)
    out["inspect_idle"] = idle_i.as_dict()
    out["inspect_load"] = load_i.as_dict()
    out["exec_idle"] = idle_e.as_dict()
    out["exec_load"] = load_e.as_dict()
    out["load_lines_per_s"] = load_rates.as_dict()
    out["load_sequence_breaks"] = gaps
    out["load_lines"] = total_lines
    for key in ("p50", "p99"):
        pct = 50 if key == "p50" else 99
        out[f"inspect_idle_{key}"] = idle_i.percentile(pct)
        out[f"inspect_load_{key}"] = load_i.percentile(pct)
        out[f"exec_idle_{key}"] = idle_e.percentile(pct)
        out[f"exec_load_{key}"] = load_e.percentile(pct)
