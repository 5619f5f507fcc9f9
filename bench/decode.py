"""Benchmark 2: task config decode, msgspec Structs against builtins + hand validation.

The payloads are the bytes Nomad would send: nomadsim's ``encode_job`` (go-cty msgpack
through Nomad's two-step pipeline) of the seed's example job and of a richer job with
network, root_disk, auth and three directory blocks. Each run times a loop of calls in
this process; figure and baseline runs alternate.
"""

from __future__ import annotations

import base64
import gc
import time
from collections.abc import Callable
from typing import Any

import msgspec
import trio

from bench import handvalidate
from bench.rig import open_rig
from tart_trio._config.decode import decode_task_config
from tests.conformance.conftest import EXAMPLES
from tests.plugin_process import plugin_command

SEED_JOB = EXAMPLES / "macos-sequoia-vanilla.nomad.hcl"
RICH_JOB = """\
job "rich" {
  group "g" {
    task "vm" {
      driver = "tart"
      config {
        url          = "registry.example.com/ci/macos-xcode:16"
        ssh_user     = "admin"
        ssh_password = "${SSH_PASSWORD}"
        disk_size    = 120
        log_command  = ["/usr/bin/log", "stream", "--style", "syslog", "--level", "debug"]
        auth {
          username = "ci-bot"
          password = "token"
        }
        network {
          mode           = "softnet"
          softnet_allow  = ["192.168.0.0/24", "10.0.0.0/8"]
          softnet_expose = ["2222:22", "8080:80"]
        }
        root_disk {
          readonly     = true
          caching_mode = "cached"
          sync_mode    = "none"
        }
        directory {
          name = "assets"
          path = "/Users/me/project/assets"
          options {
            readonly = true
            tag      = "assets"
          }
        }
        directory {
          name = "cache"
          path = "/Users/me/cache"
        }
        directory {
          path = "/Users/me/project/build"
        }
      }
    }
  }
}
"""


def per_call(fn: Callable[[bytes], object], data: bytes, loops: int) -> float:
    gc.collect()
    t0 = time.perf_counter_ns()
    for _ in range(loops):
        fn(data)
    return (time.perf_counter_ns() - t0) / loops / 1e9


def calibrate(fn: Callable[[bytes], object], data: bytes, target: float = 0.15) -> int:
    loops = 100
    while True:
        t = per_call(fn, data, loops) * loops
        if t >= target / 4:
            return max(100, int(loops * target / t))
        loops *= 4


def measure(payloads: dict[str, bytes], runs: int) -> dict[str, Any]:
    from bench.util import Sample, paired_ratios

    out: dict[str, Any] = {}
    for name, data in payloads.items():
        ours = msgspec.json.encode(decode_task_config(data))
        same = msgspec.json.decode(ours) == msgspec.json.decode(
            msgspec.json.encode(handvalidate.decode(data))
        )
        loops = max(calibrate(decode_task_config, data), calibrate(handvalidate.decode, data))
        figure, baseline = Sample(), Sample()
        for _ in range(runs):
            figure.add(per_call(decode_task_config, data, loops))
            baseline.add(per_call(handvalidate.decode, data, loops))
        raw = Sample()
        for _ in range(runs):
            raw.add(per_call(msgspec.msgpack.decode, data, loops))
        out[name] = {
            "bytes": len(data),
            "loops": loops,
            "same_result": same,
            "figure": figure.as_dict(),
            "baseline": baseline.as_dict(),
            "builtins_decode_only": raw.as_dict(),
            "ratio": paired_ratios(figure, baseline).as_dict(),
        }
    return out


async def run(*, runs: int = 7) -> dict[str, Any]:
    async with open_rig("decode") as rig:
        await rig.sim.call(
            "launch",
            cmd=plugin_command(),
            env={"PLUGIN_UNIX_SOCKET_DIR": str(rig.root / "sock")},
            log_file=str(rig.root / "plugin.log"),
        )
        env = {"SSH_PASSWORD": "admin"}
        seed = await rig.sim.call("encode_job", job_file=str(SEED_JOB), env=env)
        rich = await rig.sim.call("encode_job", job_hcl=RICH_JOB, env=env)
    payloads = {
        "seed example": base64.b64decode(seed["tasks"]["vm"]["msgpack_b64"]),
        "rich (network, root_disk, auth, 3 directories)": base64.b64decode(
            rich["tasks"]["vm"]["msgpack_b64"]
        ),
    }
    return await trio.to_thread.run_sync(measure, payloads, runs)
