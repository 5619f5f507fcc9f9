"""Benchmark 1: plugin start, against ``python -c pass`` and a minimal Go go-plugin server.

Measured in alternating runs:

* exec -> handshake line read (this process's Popen and readline), for the plugin and for
  the Go server; exec -> exit for ``python -c pass`` (the same interpreter as the plugin);
* exec -> first successful ``PluginInfo`` through nomadsim (Nomad's loader: go-plugin
  launch, handshake, gRPC connect, dispense, then the call), against exec -> dispensed
  for the Go server through the same ``launch``;
* the import time of ``tart_trio._rpc.plugin`` in a fresh interpreter.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from typing import Any

import trio

from bench.gobuild import build_goplugin
from bench.rig import open_rig
from bench.util import Sample, paired_ratios
from tests.plugin_process import nomad_env, plugin_command

IMPORT_SNIPPET = (
    "import time; t = time.perf_counter(); import tart_trio._rpc.plugin; "
    "print(time.perf_counter() - t)"
)


def exec_to_handshake(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        elapsed = time.perf_counter() - t0
        if not line.count(b"|") >= 4:
            raise RuntimeError(f"{cmd[0]}: no handshake line ({line!r})")
        return elapsed
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def python_pass() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - t0


def import_seconds() -> float:
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_SNIPPET], capture_output=True, text=True, check=True
    ).stdout
    return float(out.strip())


def import_breakdown(top: int = 6) -> list[tuple[str, float]]:
    """The heaviest packages that tart_trio's modules import themselves (cumulative s).

    ``-X importtime`` lists a module after everything it imported (post-order), indented
    by depth; a module's parent is the next line with a smaller indent.
    """
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import tart_trio._rpc.plugin"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    rows: list[tuple[int, str, float]] = []
    for line in err.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if match:
            rows.append((len(match.group(2)), match.group(3), int(match.group(1)) / 1e6))
    by_package: dict[str, float] = {}
    stack: list[tuple[int, str]] = []
    for depth, name, cumulative in reversed(rows):
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parent = stack[-1][1] if stack else ""
        stack.append((depth, name))
        root = name.split(".")[0]
        if parent.startswith("tart_trio") and root != "tart_trio":
            by_package[root] = by_package.get(root, 0.0) + cumulative
    return sorted(by_package.items(), key=lambda kv: -kv[1])[:top]


async def run(*, runs: int = 7) -> dict[str, Any]:
    go_server = await trio.to_thread.run_sync(build_goplugin)
    plugin = plugin_command()
    py_pass, go_hs, plugin_hs, imports = Sample(), Sample(), Sample(), Sample()
    go_launch, plugin_info, go_launch_hs, plugin_launch_hs = Sample(), Sample(), Sample(), Sample()
    async with open_rig("start") as rig:
        sock = rig.root / "sock"
        plugin_env = nomad_env(PLUGIN_UNIX_SOCKET_DIR=str(sock))
        go_env = nomad_env(TMPDIR=str(sock))
        # warm the page cache (the first exec of anything is a disk read)
        await trio.to_thread.run_sync(python_pass)
        await trio.to_thread.run_sync(exec_to_handshake, plugin, plugin_env)
        await trio.to_thread.run_sync(exec_to_handshake, [str(go_server)], go_env)
        for _ in range(runs):
            py_pass.add(await trio.to_thread.run_sync(python_pass))
            go_hs.add(await trio.to_thread.run_sync(exec_to_handshake, [str(go_server)], go_env))
            plugin_hs.add(await trio.to_thread.run_sync(exec_to_handshake, plugin, plugin_env))
            imports.add(await trio.to_thread.run_sync(import_seconds))

            t0 = time.perf_counter()
            launched = await rig.sim.call(
                "launch",
                plugin="go",
                cmd=[str(go_server)],
                env={"TMPDIR": str(sock)},
                log_file=str(rig.root / "go.log"),
            )
            go_launch.add(time.perf_counter() - t0)
            go_launch_hs.add(float(launched["handshake_seconds"]))
            await rig.sim.call("sigkill", plugin="go")

            t0 = time.perf_counter()
            launched = await rig.sim.call(
                "launch",
                plugin="tart",
                cmd=plugin,
                env={"PLUGIN_UNIX_SOCKET_DIR": str(sock)},
                log_file=str(rig.root / "plugin.log"),
            )
            info = await rig.sim.call("plugin_info", plugin="tart")
            plugin_info.add(time.perf_counter() - t0)
            plugin_launch_hs.add(float(launched["handshake_seconds"]))
            assert info.get("name") == "tart", info
            await rig.sim.call("sigkill", plugin="tart")
        breakdown = await trio.to_thread.run_sync(import_breakdown)
    return {
        "python_pass": py_pass.as_dict(),
        "go_handshake": go_hs.as_dict(),
        "plugin_handshake": plugin_hs.as_dict(),
        "plugin_import": imports.as_dict(),
        "go_launch": go_launch.as_dict(),
        "plugin_info": plugin_info.as_dict(),
        "go_launch_handshake": go_launch_hs.as_dict(),
        "plugin_launch_handshake": plugin_launch_hs.as_dict(),
        "ratio_vs_python": paired_ratios(plugin_hs, py_pass).as_dict(),
        "ratio_vs_go": paired_ratios(plugin_hs, go_hs).as_dict(),
        "ratio_vs_pass_plus_import": Sample(
            [
                h / (p + i)
                for h, p, i in zip(plugin_hs.values, py_pass.values, imports.values, strict=True)
            ]
        ).as_dict(),
        "ratio_info_vs_go": paired_ratios(plugin_info, go_launch).as_dict(),
        "import_breakdown": breakdown,
        "go_server": str(go_server),
    }
