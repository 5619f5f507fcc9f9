"""Self-check of nomadsim (the Nomad client stand-in) against a tiny fixture plugin.

These tests prove the rig itself: go-plugin launch and handshake, the base
and driver RPCs, hclspec conversion and go-cty msgpack encoding, the alloc
dir and log FIFOs, streams, exec, kill/sigkill/reattach and cleanup.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from .build import REPO, build_nomadsim
from .nomadsim import NomadSim, NomadSimError, SimStream, StreamEnded, open_nomadsim

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixture_plugin.py"
PROTOS = [
    "hashicorp/nomad/plugins/base/base.proto",
    "hashicorp/nomad/plugins/drivers/driver.proto",
    "hashicorp/nomad/plugins/shared/hclspec/hcl_spec.proto",
    "hashicorp/nomad/plugins/shared/structs/attribute.proto",
    "hashicorp/nomad/plugins/shared/structs/recoverable_error.proto",
    "plugin/grpc_controller.proto",
]

JOB = """
variable "msg" {
  default = "from-var"
}

job "demo" {
  datacenters = ["dc1"]
  group "g" {
    count = 1
    task "t1" {
      driver = "fixture"
      config {
        message = "hello ${NOMAD_TASK_NAME} ${var.msg} ${env["X_EXTRA"]}"
        tags {
          name = "a"
        }
        tags {
          name = "b"
        }
      }
      resources {
        cpu = 100
      }
    }
    task "other" {
      driver = "docker"
      config {
        image = "busybox"
      }
    }
  }
}
"""


@pytest.fixture(scope="session")
def proto_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pyproto")
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '')}"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{REPO / 'proto'}",
            f"--python_out={out}",
            f"--grpclib_python_out={out}",
            *PROTOS,
        ],
        check=True,
        env=env,
        cwd=REPO / "proto",
    )
    return out


@pytest.fixture(scope="session")
def nomadsim_binary() -> Path:
    return build_nomadsim()


def fixture_launch_args(proto_path: Path, log_file: Path, **extra_env: str) -> dict[str, Any]:
    return {
        "cmd": [sys.executable, str(FIXTURE)],
        "env": {"PYTHONPATH": str(proto_path), **extra_env},
        "log_file": str(log_file),
    }


def log_entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pid_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


async def wait_for_file(path: Path, text: str) -> str:
    with trio.fail_after(10):
        while True:
            tpath = trio.Path(path)
            if await tpath.exists() and text in (content := await tpath.read_text()):
                return content
            await trio.sleep(0.02)


@pytest.fixture
async def sim(nomadsim_binary: Path, proto_path: Path, tmp_path: Path) -> AsyncIterator[NomadSim]:
    """A nomadsim with the fixture plugin launched (log in tmp_path/plugin.log)."""
    async with open_nomadsim(binary=nomadsim_binary) as sim:
        await sim.call("launch", **fixture_launch_args(proto_path, tmp_path / "plugin.log"))
        yield sim


def test_build_is_cached() -> None:
    first = build_nomadsim()
    assert first.is_file() and os.access(first, os.X_OK)
    assert build_nomadsim() == first
    assert first.parent == REPO / "build"


async def test_decode_spec_matches_go_cty_worked_example(nomadsim_binary: Path) -> None:
    """Section 5.2 of the protocol notes: exact bytes for a known spec/config."""
    spec = {
        "object": {
            "attributes": {
                "command": {"Attr": {"type": "string", "required": True}},
                "args": {"Attr": {"type": "list(string)"}},
                "env": {"block_attrs": {"type": "string"}},
                "opts": {
                    "block_value": {
                        "nested": {"object": {"attributes": {"x": {"Attr": {"type": "number"}}}}}
                    }
                },
                "ratio": {"Attr": {"type": "number"}},
                "n": {"Attr": {"type": "number"}},
                "k": {"Attr": {"type": "number"}},
                "neg": {"Attr": {"type": "number"}},
            }
        }
    }
    hcl = 'command = "/bin/echo"\nargs = ["hi"]\nratio = 0.1\nn = 1.5\nk = 300\nneg = -5\n'
    async with open_nomadsim(binary=nomadsim_binary) as sim:
        out = await sim.call("decode_spec", spec=spec, hcl=hcl)
    expected = (
        "88"
        "a46172677391a26869"
        "a7636f6d6d616e64a92f62696e2f6563686f"
        "a3656e76c0"
        "a16bcd012c"
        "a16ecb3ff8000000000000"
        "a36e6567fb"
        "a46f707473c0"
        "a5726174696fa3302e31"
    )
    assert base64.b64decode(out["msgpack_b64"]).hex() == expected


async def test_decode_spec_semantics(nomadsim_binary: Path) -> None:
    obj = {
        "object": {
            "attributes": {
                "enabled": {
                    "default": {
                        "primary": {"Attr": {"name": "enabled", "type": "bool"}},
                        "default": {"literal": {"value": "true"}},
                    }
                },
                "mode": {
                    "default": {
                        "primary": {"Attr": {"name": "mode", "type": "string"}},
                        "default": {"literal": {"value": '"private"'}},
                    }
                },
                "disks": {
                    "block_list": {
                        "nested": {"object": {"attributes": {"size": {"Attr": {"type": "number"}}}}}
                    }
                },
                "net": {
                    "block_value": {
                        "nested": {
                            "object": {
                                "attributes": {"ip": {"Attr": {"type": "string", "required": True}}}
                            }
                        }
                    }
                },
                "labels": {"block_attrs": {"type": "string"}},
                "port": {"Attr": {"type": "number"}},
            }
        }
    }
    async with open_nomadsim(binary=nomadsim_binary) as sim:
        out = await sim.call("decode_spec", spec=obj, hcl='port = "8080"\nlabels {\n}\n')
        assert out["json"] == {
            "disks": [],
            "enabled": True,
            "labels": {},
            "mode": "private",
            "net": None,
            "port": 8080,
        }
        # Default children get no implied name
        bad = {
            "object": {
                "attributes": {
                    "x": {
                        "default": {
                            "primary": {"Attr": {"type": "bool"}},
                            "default": {"literal": {"value": "false"}},
                        }
                    }
                }
            }
        }
        with pytest.raises(NomadSimError, match="Missing name in attribute spec") as info:
            await sim.call("decode_spec", spec=bad, hcl="")
        assert info.value.kind == "hcl" and info.value.code is None
        # Nomad's client decodes JSON, and renames the summary
        with pytest.raises(NomadSimError, match="Invalid label"):
            await sim.call("decode_spec", spec=obj, hcl="bogus = 1\n")
        with pytest.raises(NomadSimError, match="Unsupported argument"):
            await sim.call("decode_spec", spec=obj, hcl="bogus = 1\n", mode="native")
        with pytest.raises(NomadSimError, match="Missing required argument"):
            await sim.call("decode_spec", spec=obj, hcl="net {\n}\n")
        interp = {"object": {"attributes": {"s": {"Attr": {"type": "string"}}}}}
        out = await sim.call(
            "decode_spec",
            spec=interp,
            hcl='s = "${NOMAD_ALLOC_ID}-${env["A"]}-${attr.os.name}-${upper(var.v)}"',
            env={"NOMAD_ALLOC_ID": "abc", "A": "x", "attr.os.name": "darwin"},
            vars={"v": "jobvar"},
        )
        assert out["json"] == {"s": "abc-x-darwin-JOBVAR"}
        # submit time keeps the client's variables as text
        assert out["config_json"] == {"s": '${NOMAD_ALLOC_ID}-${env["A"]}-${attr.os.name}-JOBVAR'}


async def test_nomad_pipeline_shapes(nomadsim_binary: Path) -> None:
    """jobspec2 turns blocks and object attributes into lists of maps."""
    spec = {
        "object": {
            "attributes": {
                "lm": {"Attr": {"type": "list(map(string))"}},
                "m": {"Attr": {"type": "map(string)"}},
                "ba": {"block_attrs": {"type": "string"}},
                "blk": {
                    "block_value": {
                        "nested": {"object": {"attributes": {"x": {"Attr": {"type": "number"}}}}}
                    }
                },
            }
        }
    }
    hcl = 'lm = { a = "1" }\nba {\n  k = "v"\n}\nblk {\n  x = 2\n}\n'
    async with open_nomadsim(binary=nomadsim_binary) as sim:
        out = await sim.call("decode_spec", spec=spec, hcl=hcl)
        assert out["config_json"] == {"lm": [{"a": "1"}], "ba": [{"k": "v"}], "blk": [{"x": 2}]}
        assert out["json"] == {"lm": [{"a": "1"}], "m": None, "ba": {"k": "v"}, "blk": {"x": 2}}
        # a map(string) Attr cannot be written as `m = {...}` in a Nomad job ...
        with pytest.raises(NomadSimError, match="Incorrect attribute value type"):
            await sim.call("decode_spec", spec=spec, hcl='m = { a = "1" }\n')
        # ... although plain hcldec would accept it
        native = await sim.call("decode_spec", spec=spec, hcl='m = { a = "1" }\n', mode="native")
        assert native["json"]["m"] == {"a": "1"}


async def test_launch_and_base_rpcs(sim: NomadSim, tmp_path: Path) -> None:
    launched = (await sim.call("plugins"))["plugins"]["default"]
    assert launched["network"] == "unix" and launched["pid"] > 0 and not launched["exited"]

    info = await sim.call("plugin_info")
    assert info == {
        "type": "DRIVER",
        "plugin_api_versions": ["v0.1.0"],
        "plugin_version": "0.1.0",
        "name": "fixture",
    }
    schema = await sim.call("config_schema")
    assert schema["valid"] and "greeting" in schema["spec"]["object"]["attributes"]

    agent_hcl = 'plugin "fixture" {\n  config {\n    ratio = 0.5\n  }\n}\n'
    cfg = await sim.call("set_config", hcl=agent_hcl, with_nomad_config=True)
    assert cfg["json"] == {"greeting": "hello", "ratio": 0.5}
    with pytest.raises(NomadSimError, match="Invalid label") as bad:
        await sim.call("set_config", hcl='plugin "fixture" {\n  config {\n    nope = 1\n  }\n}\n')
    assert bad.value.kind == "hcl" and bad.value.diagnostics

    fp = await sim.open_stream("fingerprint")
    first = await fp.receive()
    assert first["health"] == "HEALTHY"
    attrs = first["attributes"]
    plugin_cfg = msgspec.msgpack.decode(
        base64.b64decode(attrs["driver.fixture.config"]["string_val"])
    )
    assert plugin_cfg == {"greeting": "hello", "ratio": 0.5}
    # jsonpb renders int64 as a string
    assert attrs["driver.fixture.min_port"]["int_val"] == "14000"

    await sim.close_stream(fp)
    with pytest.raises(StreamEnded):
        while True:
            await fp.receive()
    assert fp.end is not None and fp.end["cancelled_by_client"] and fp.end["code"] == "Canceled"

    tschema = await sim.call("task_config_schema")
    assert tschema["valid"] is True
    caps = await sim.call("capabilities")
    assert caps["capabilities"]["fs_isolation"] == "IMAGE"

    killed = await sim.call("kill")
    assert killed["graceful"] is True and killed["seconds"] < 2 and killed["exit_error"] is None
    assert pid_gone(launched["pid"])

    entries = log_entries(tmp_path / "plugin.log")
    serving = [e for e in entries if e["@message"] == "fixture plugin serving"]
    assert serving and serving[0]["@level"] == "info" and serving[0]["@module"] == "fixture"
    raw = (tmp_path / "plugin.log.raw").read_text()
    assert '"@message": "fixture plugin serving"' in raw


async def test_error_codes(sim: NomadSim) -> None:
    with pytest.raises(NomadSimError) as unimpl:
        await sim.call("init")
    assert unimpl.value.code == "Unimplemented" and unimpl.value.kind == "rpc"
    # grpclib quirk, seen through grpc-go: an unregistered method is
    # answered without content-type, so the code is Unknown.
    with pytest.raises(NomadSimError) as unknown:
        await sim.call("inspect_task", task_id="x")
    assert unknown.value.code == "Unknown" and "content-type" in unknown.value.message

    config = {"message": "m", "fail": True, "exit_code": 0, "tags": []}
    with pytest.raises(NomadSimError) as failed:
        await sim.call(
            "start_task",
            task={"name": "t1"},
            msgpack_b64=base64.b64encode(msgspec.msgpack.encode(config)).decode(),
        )
    assert failed.value.code == "FailedPrecondition" and failed.value.recoverable is True
    with pytest.raises(NomadSimError) as nf:
        await sim.call("wait_task", task_id="nope")
    assert nf.value.code == "NotFound" and nf.value.recoverable is None


async def test_encode_job(sim: NomadSim, tmp_path: Path) -> None:
    job = tmp_path / "demo.nomad.hcl"
    job.write_text(JOB)
    encoded = await sim.call(
        "encode_job", job_file=str(job), driver="fixture", env={"X_EXTRA": "extra"}
    )
    assert list(encoded["tasks"]) == ["t1"]
    t1 = encoded["tasks"]["t1"]
    decoded = msgspec.msgpack.decode(base64.b64decode(t1["msgpack_b64"]))
    assert decoded == {
        "exit_code": 0,
        "fail": False,
        "message": "hello t1 from-var extra",
        "tags": [{"name": "a"}, {"name": "b"}],
    }
    assert t1["json"] == decoded
    with pytest.raises(NomadSimError, match="Failed Validation") as bad:
        await sim.call(
            "encode_job",
            job_hcl=JOB.replace('name = "a"', "name = 1\n bogus = 2"),
            driver="fixture",
            env={"X_EXTRA": "e"},
        )
    assert bad.value.kind == "hcl"
    with pytest.raises(NomadSimError, match="Invalid index"):
        await sim.call("encode_job", job_file=str(job), task_name="t1")  # no X_EXTRA
    with pytest.raises(NomadSimError, match="Unknown variable"):
        await sim.call("encode_job", job_hcl=JOB.replace("NOMAD_TASK_NAME", "NOPE"), task_name="t1")


async def test_task_lifecycle_logs_events(sim: NomadSim, tmp_path: Path) -> None:
    alloc_dir = tmp_path / "alloc"
    job = tmp_path / "demo.nomad.hcl"
    job.write_text(JOB)
    events = await sim.open_stream("task_events")
    resources = {"cpu_shares": 500, "memory_mb": 256, "cpuset_cpus": "0,1"}
    started = await sim.call(
        "start_task",
        task={
            "name": "t1",
            "alloc_dir": str(alloc_dir),
            "env": {"X_EXTRA": "x"},
            "resources": resources,
        },
        job_file=str(job),
        create_alloc_dir=True,
    )
    task_id = started["task_id"]
    handle = started["handle"]
    assert handle["config"]["id"] == task_id
    assert handle["version"] == 1 and handle["state"] == "RUNNING"
    sent = handle["config"]
    assert sent["resources"]["allocated_resources"]["cpu"]["cpu_shares"] == "500"
    assert sent["resources"]["linux_resources"]["cpuset_cpus"] == "0,1"
    assert sent["resources"]["linux_resources"]["memory_limit_bytes"] == str(256 << 20)
    assert sent["env"]["NOMAD_TASK_NAME"] == "t1"
    assert (sent["job_name"], sent["task_group_name"], sent["env"]["NOMAD_JOB_NAME"]) == (
        "demo",
        "g",
        "demo",
    )
    assert sent["env"]["NOMAD_ALLOC_ID"] == sent["alloc_id"]
    assert sent["stdout_path"] == str(alloc_dir / "alloc/logs/.t1.stdout.fifo")
    subdirs = ["alloc/logs", "alloc/tmp", "alloc/data", "t1/local", "t1/secrets", "t1/private"]
    assert all((alloc_dir / sub).is_dir() for sub in subdirs)
    assert await wait_for_file(Path(started["stdout_log"]), "hello t1 from-var x\n")
    assert await wait_for_file(Path(started["stderr_log"]), "stderr of t1\n")

    event = await events.receive()
    assert (event["task_id"], event["task_name"], event["message"]) == (task_id, "t1", "started")

    waited = await sim.call("wait_task", task_id=task_id)
    assert waited["result"]["exit_code"] == 0 and waited["err"] == ""

    # the FIFO reader reopens after the writer closed: a second writer works
    fd = os.open(started["stdout_path"], os.O_WRONLY | os.O_NONBLOCK)
    os.write(fd, b"second writer\n")
    os.close(fd)
    await wait_for_file(Path(started["stdout_log"]), "second writer\n")

    await sim.call("destroy_task", task_id=task_id)
    recovered = await sim.call("recover_task", handle=handle, drop_driver_config=True)
    assert recovered["task_id"] == task_id

    entries = log_entries(tmp_path / "plugin.log")
    starting = [e for e in entries if e["@message"] == "starting task"]
    assert starting and starting[0]["@level"] == "info" and starting[0]["task_id"] == task_id


HOOKS_JOB = """
job "hooks" {
  group "g" {
    task "t1" {
      driver = "fixture"
      env {
        FROM_BLOCK = "block-${NOMAD_ALLOC_ID}"
        OVERRIDDEN = "by the env block"
      }
      artifact {
        source = "ARTIFACT_URL"
      }
      template {
        data        = "OVERRIDDEN={{ env \\"NOMAD_TASK_NAME\\" }}-template\\nexport QUOTED='a b'\\n"
        destination = "secrets/vars.env"
        env         = true
        perms       = "600"
      }
      template {
        data        = "task {{ env \\"NOMAD_TASK_NAME\\" }}"
        destination = "local/rendered.txt"
      }
      config {
        message = "${OVERRIDDEN}"
      }
    }
  }
}
"""


async def test_task_hooks_build_the_env_and_the_task_dir_as_nomad_does(
    sim: NomadSim, tmp_path: Path
) -> None:
    """Directory variables for image isolation, env block, artifacts, templates."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "input.txt").write_text("artifact body\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/input.txt"
        alloc_dir = tmp_path / "alloc"
        started = await sim.call(
            "start_task",
            task={"name": "t1", "alloc_dir": str(alloc_dir), "env": {}},
            job_hcl=HOOKS_JOB.replace("ARTIFACT_URL", url),
            create_alloc_dir=True,
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    env = started["task_config"]["env"]
    alloc_id = started["task_config"]["alloc_id"]
    assert (env["NOMAD_ALLOC_DIR"], env["NOMAD_TASK_DIR"], env["NOMAD_SECRETS_DIR"]) == (
        "/alloc",
        "/local",
        "/secrets",
    )
    assert env["FROM_BLOCK"] == f"block-{alloc_id}"
    assert env["OVERRIDDEN"] == "t1-template" and env["QUOTED"] == "a b"
    assert started["driver_config"]["message"] == "t1-template"
    assert (alloc_dir / "t1/local/input.txt").read_text() == "artifact body\n"
    assert (alloc_dir / "t1/local/rendered.txt").read_text() == "task t1"
    assert stat.S_IMODE((alloc_dir / "t1/secrets/vars.env").stat().st_mode) == 0o600
    for sub in ("alloc", "alloc/data", "t1", "t1/local", "t1/secrets"):
        assert stat.S_IMODE((alloc_dir / sub).stat().st_mode) == 0o777, sub
    await sim.call("destroy_task", task_id=started["task_id"])


async def test_stop_signal_exec_stats(sim: NomadSim) -> None:
    events = await sim.open_stream("task_events")
    await sim.call("stop_task", task_id="t", signal="SIGTERM", timeout_seconds=2.5)
    assert (await events.receive())["message"] == "stop signal='SIGTERM' timeout=2.5"
    await sim.call("stop_task", task_id="t")  # Nomad defaults: kill_timeout 5s, signal ""
    assert (await events.receive())["message"] == "stop signal='' timeout=5.0"
    await sim.call("signal_task", task_id="t", signal="SIGHUP")
    assert (await events.receive())["message"] == "signal SIGHUP"

    ran = await sim.call("exec_task", task_id="t", command=["echo", "hi"], timeout_seconds=3)
    assert base64.b64decode(ran["stdout_b64"]) == b"echo hi" and ran["exit_code"] == 7

    stats = await sim.open_stream("task_stats", task_id="t", interval_seconds=0.05)
    samples = [await stats.receive() for _ in range(3)]
    assert all(s["stats"]["agg_resource_usage"]["memory"]["rss"] == "1024" for s in samples)
    assert samples[0]["stats"]["timestamp"].endswith("Z")  # a decoded Timestamp
    await sim.close_stream(stats)


async def test_exec_streaming(sim: NomadSim) -> None:
    config = {"message": "m", "fail": False, "exit_code": 0, "tags": []}
    started = await sim.call(
        "start_task", msgpack_b64=base64.b64encode(msgspec.msgpack.encode(config)).decode()
    )
    ex = await sim.open_stream(
        "exec_streaming", task_id=started["task_id"], command=["sh", "-c", "cat"], tty=True
    )
    await sim.call("exec_stdin", stream=ex.id, data_b64=base64.b64encode(b"abc").decode())
    await sim.call("exec_resize", stream=ex.id, height=24, width=80)
    await sim.call("exec_heartbeat", stream=ex.id)
    await sim.call("exec_stdin_close", stream=ex.id)
    msgs = [m async for m in ex]
    assert ex.error is None and ex.end is not None
    assert base64.b64decode(msgs[0]["stdout"]["data"]) == b"ABC"
    assert base64.b64decode(msgs[1]["stderr"]["data"]) == b"24x80\n"
    assert msgs[-1]["exited"] is True and msgs[-1]["result"]["exit_code"] == 3


async def test_kill_ungraceful_env_override(
    nomadsim_binary: Path, proto_path: Path, tmp_path: Path
) -> None:
    async with open_nomadsim(binary=nomadsim_binary) as sim:
        launched = await sim.call(
            "launch",
            **fixture_launch_args(proto_path, tmp_path / "p.log", FIXTURE_IGNORE_SHUTDOWN="1"),
        )
        killed = await sim.call("kill")
        assert killed["graceful"] is False
        assert 1.9 < killed["seconds"] < 10
        assert killed["exit_error"] == "signal: killed"
        assert pid_gone(launched["pid"])
    assert any(
        e["@message"] == "plugin failed to exit gracefully" for e in log_entries(tmp_path / "p.log")
    )


async def test_forget_reattach_sigkill(
    nomadsim_binary: Path, proto_path: Path, tmp_path: Path
) -> None:
    async with open_nomadsim(binary=nomadsim_binary) as sim:
        launched = await sim.call(
            "launch", plugin="a", **fixture_launch_args(proto_path, tmp_path / "a.log")
        )
        forgotten = await sim.call("forget", plugin="a")
        assert forgotten["addr"] == launched["addr"]
        with pytest.raises(NomadSimError, match="no plugin named"):
            await sim.call("plugin_info", plugin="a")
        attached = await sim.call(
            "reattach", plugin="b", addr=launched["addr"], pid=launched["pid"], network="unix"
        )
        assert attached["pid"] == launched["pid"]
        assert (await sim.call("plugin_info", plugin="b"))["name"] == "fixture"
        gone = await sim.call("sigkill", plugin="b")
        assert gone["exited"] is True
        with pytest.raises(NomadSimError) as dead:
            await sim.call("plugin_info", plugin="b")
        assert dead.value.code in ("Unavailable", "Canceled")
        # an exited plugin's name can be launched again (plugin crash -> relaunch)
        again = await sim.call(
            "launch", plugin="b", **fixture_launch_args(proto_path, tmp_path / "b.log")
        )
        assert again["pid"] != launched["pid"]
        assert (await sim.call("plugin_info", plugin="b"))["name"] == "fixture"


async def _node_after(stream: SimStream) -> dict[str, str]:
    """The node's attributes right after the next report on the stream."""
    with trio.fail_after(10):
        await stream.receive()
    assert stream.node is not None
    attributes: dict[str, str] = stream.node["attributes"]
    return attributes


async def test_the_node_merges_fingerprints_as_nomads_client_does(
    nomadsim_binary: Path, proto_path: Path, tmp_path: Path
) -> None:
    """client/node_updater.go: a first report is copied whole; after it, a change to ""
    deletes, a left-out attribute keeps its value, and the comparison is with the
    driver's previous report, which a failed stream (a dead plugin) empties."""
    first = [
        {"d.a": "1", "d.empty": "", "d.n": 3, "d.b": True, "d.f": 0.5},
        {"d.a": "", "d.n": 4},  # a changed to "": deleted; empty, b and f left out: kept
        {"d.b": False, "d.empty": ""},
    ]
    log = tmp_path / "n.log"
    async with open_nomadsim(binary=nomadsim_binary) as sim:
        assert await sim.node_attributes(plugin="n") == {}
        script = json.dumps([first])
        await sim.call(
            "launch",
            plugin="n",
            **fixture_launch_args(proto_path, log, FIXTURE_FINGERPRINTS=script),
        )
        stream = await sim.open_stream("fingerprint", plugin="n")
        assert await _node_after(stream) == {
            "d.a": "1",
            "d.empty": "",
            "d.n": "3",
            "d.b": "true",
            "d.f": "0.5",
        }
        assert await _node_after(stream) == {
            "d.empty": "",
            "d.n": "4",
            "d.b": "true",
            "d.f": "0.5",
        }
        after = {"d.empty": "", "d.n": "4", "d.b": "false", "d.f": "0.5"}
        assert await _node_after(stream) == after
        node = await sim.call("node", plugin="n")
        assert node["driver"]["attributes"] == {"d.b": "false", "d.empty": ""}

        await sim.call("sigkill", plugin="n")  # the plugin dies under its stream
        with trio.fail_after(10), pytest.raises(StreamEnded):
            await stream.receive()
        node = await sim.call("node", plugin="n")
        assert node["attributes"] == after
        assert node["driver"] == {
            "attributes": {},
            "detected": False,
            "healthy": False,
            "health_description": "failed to fingerprint driver",
        }
        # the relaunched plugin cannot delete what its driver report no longer holds
        script = json.dumps([[{"d.n": "", "d.f": 0.5}]])
        await sim.call(
            "launch",
            plugin="n",
            **fixture_launch_args(proto_path, log, FIXTURE_FINGERPRINTS=script),
        )
        again = await sim.open_stream("fingerprint", plugin="n")
        assert await _node_after(again) == after

        # a stream the plugin ends is no failure: the next one's "" still deletes
        script = json.dumps([[{"e.x": "1"}, "end"], [{"e.x": ""}]])
        await sim.call(
            "launch",
            plugin="e",
            **fixture_launch_args(proto_path, log, FIXTURE_FINGERPRINTS=script),
        )
        ended = await sim.open_stream("fingerprint", plugin="e")
        assert await _node_after(ended) == {"e.x": "1"}
        with trio.fail_after(10), pytest.raises(StreamEnded):
            await ended.receive()
        assert ended.error is None
        second = await sim.open_stream("fingerprint", plugin="e")
        assert await _node_after(second) == {}
        # nor is a stream the client closes
        await sim.close_stream(second)
        with trio.fail_after(10), pytest.raises(StreamEnded):
            await second.receive()
        node = await sim.call("node", plugin="e")
        assert node["driver"]["attributes"] == {"e.x": ""} and node["driver"]["healthy"]
        assert await sim.node_attributes(plugin="n") == after, "one node per plugin name"


async def test_launch_failure_is_reported(nomadsim_binary: Path, tmp_path: Path) -> None:
    async with open_nomadsim(binary=nomadsim_binary) as sim:
        with pytest.raises(
            NomadSimError,
            match=r"Unrecognized remote plugin message|plugin exited before we could connect",
        ) as err:
            await sim.call(
                "launch",
                cmd=["/bin/sh", "-c", "echo oops >&2; exit 3"],
                log_file=str(tmp_path / "x.log"),
            )
        assert err.value.kind == "local"
        with pytest.raises(NomadSimError, match="unknown op"):
            await sim.call("no_such_op")


async def test_cleanup_on_cancellation(
    nomadsim_binary: Path, proto_path: Path, tmp_path: Path
) -> None:
    pids: list[int] = []
    sims: list[NomadSim] = []
    with trio.move_on_after(60) as scope:
        async with open_nomadsim(binary=nomadsim_binary) as sim:
            sims.append(sim)
            launched = await sim.call(
                "launch", **fixture_launch_args(proto_path, tmp_path / "c.log")
            )
            pids.append(launched["pid"])
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert sims[0].process.returncode == 0
    assert pid_gone(pids[0])
