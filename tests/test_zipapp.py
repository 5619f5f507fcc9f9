"""The single-file zipapp (``nox -s zipapp``) runs on a machine that has only Python.

One zipapp is built per test run (pytest-xdist workers share it) with
``tools/build_zipapp.py`` for this platform, then run by a Python that sees no third-party
package: by hand, and as ``plugin_dir/nomad-driver-tart`` under the Go Nomad-client
stand-in.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import pwd
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
import trio

from tart_trio._version import __version__
from tests.conformance.conftest import live_supervisor_pids, plugin_log, until
from tests.conformance.nomadsim import open_nomadsim
from tests.conformance.test_command import COUNT, PLUGIN_CONFIG, job, numbers
from tests.conformance.test_command import start as start_command
from tests.conformance.test_exec import exec_task
from tests.conformance.test_lifecycle import _variant, start, vm_names
from tests.conformance.test_recovery import seqs
from tests.faketart.fixtures import FakeTart

REPO = Path(__file__).resolve().parent.parent
TOOL = REPO / "tools" / "build_zipapp.py"
SYSTEM_PATH = "/usr/bin:/bin"


def _load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_zipapp", TOOL)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_scope(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temporary directory of the whole test run: with pytest-xdist, that of every worker."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def zipapp_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The zipapp for this platform and Python, built once per test run.

    pytest-xdist workers share it: the first one to take the lock builds it, the others wait
    for it. Tests only read it (they install copies).
    """
    build_dir = _run_scope(tmp_path_factory) / "zipapp-build"
    build_dir.mkdir(exist_ok=True)
    output = build_dir / "nomad-driver-tart.pyz"
    with (build_dir / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not output.exists():
            _build_zipapp(output)
        fcntl.flock(lock, fcntl.LOCK_UN)
    assert os.access(output, os.X_OK)
    assert output.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    return output


def _build_zipapp(output: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        if "the package index is unreachable" in proc.stderr:
            pytest.skip(f"cannot build the zipapp, PyPI is unreachable:\n{tail}")
        pytest.fail(f"tools/build_zipapp.py failed (exit {proc.returncode}):\n{proc.stderr}")
    assert proc.stdout.startswith(str(output)), proc.stdout
    print(f"\n{proc.stdout.strip()}")


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``bin`` directory whose ``python3`` has the build's version and no site-packages.

    /usr/bin/python3 when it is the same minor version as this interpreter (the compiled
    dependencies are built for one), else the interpreter this virtualenv was made from.
    ``-I -S``: no user or system site-packages, no PYTHON* variables.
    """
    python = Path("/usr/bin/python3")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if (
        not python.exists()
        or subprocess.run(
            [
                python,
                "-c",
                f"import sys; sys.exit(0 if sys.version.startswith('{version}.') else 1)",
            ],
            check=False,
        ).returncode
    ):
        python = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
    bin_dir = tmp_path_factory.mktemp("bare-python")
    wrapper = bin_dir / "python3"
    wrapper.write_text(f'#!/bin/sh\nexec "{python}" -I -S "$@"\n')
    wrapper.chmod(0o755)
    check = subprocess.run(
        [wrapper, "-c", "import sys; print(sys.version_info[:2], [p for p in sys.path if p])"],
        env={"PATH": SYSTEM_PATH},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "site-packages" not in check.stdout and "dist-packages" not in check.stdout, check
    return bin_dir


def _install(zipapp: Path, plugin_dir: Path) -> Path:
    plugin_dir.mkdir(parents=True)
    plugin = plugin_dir / "nomad-driver-tart"
    shutil.copy(zipapp, plugin)
    return plugin


def _run(
    plugin: Path, *args: str, env: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.perf_counter()
    proc = subprocess.run(
        [plugin, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    return proc, time.perf_counter() - started


def _versions(cache: Path) -> list[Path]:
    return sorted(cache.iterdir())


def argv_of(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")


def in_dir(pid: int, directory: Path) -> bool:
    """Whether a process's environment names ``directory`` (its TART_HOME, say)."""
    try:
        return str(directory).encode() in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def test_version_without_home_extracts_next_to_the_zipapp(
    zipapp_file: Path, bare_python: Path, tmp_path: Path
) -> None:
    plugin = _install(zipapp_file, tmp_path / "plugins")
    env = {"PATH": f"{bare_python}:{SYSTEM_PATH}"}  # env -i: no HOME, as under launchd
    cold, cold_seconds = _run(plugin, "--version", env=env)
    assert (cold.returncode, cold.stdout, cold.stderr) == (
        0,
        f"nomad-driver-tart {__version__}\n",
        "",
    )
    cache = tmp_path / "plugins" / ".nomad-driver-tart-cache"
    (extracted,) = _versions(cache)
    assert (extracted / "tart_trio" / "_main.py").is_file()
    # Byte-compiled at extraction (--version never imports trio): starts after the first
    # need not write __pycache__, nor be allowed to.
    tag = sys.implementation.cache_tag
    assert (extracted / "trio" / "__pycache__" / f"__init__.{tag}.pyc").is_file()
    assert oct(cache.stat().st_mode & 0o777) == oct(0o700)
    inode = extracted.stat().st_ino

    warm_runs = [_run(plugin, "--version", env=env) for _ in range(3)]
    for warm, _ in warm_runs:
        assert (warm.returncode, warm.stdout, warm.stderr) == (0, cold.stdout, "")
    assert _versions(cache) == [extracted] and extracted.stat().st_ino == inode
    warm_seconds = min(seconds for _, seconds in warm_runs)
    print(f"\n--version: cold {cold_seconds:.3f}s, warm {warm_seconds:.3f}s")


def test_started_by_hand_explains_and_exits_1(
    zipapp_file: Path, bare_python: Path, tmp_path: Path
) -> None:
    plugin = _install(zipapp_file, tmp_path / "plugins")
    home = tmp_path / "home"
    home.mkdir()
    proc, _ = _run(plugin, env={"PATH": f"{bare_python}:{SYSTEM_PATH}", "HOME": str(home)})
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "is a Nomad task driver plugin; Nomad starts it, not you." in proc.stderr
    caches = home / ("Library/Caches" if sys.platform == "darwin" else ".cache")
    assert len(_versions(caches / "nomad-driver-tart")) == 1
    assert not (tmp_path / "plugins" / ".nomad-driver-tart-cache").exists()


def test_simultaneous_cold_starts_extract_once(
    zipapp_file: Path, bare_python: Path, tmp_path: Path
) -> None:
    plugin = _install(zipapp_file, tmp_path / "plugins")
    cache = tmp_path / "cache"
    env = {"PATH": f"{bare_python}:{SYSTEM_PATH}", "XDG_CACHE_HOME": str(cache)}
    procs = [
        subprocess.Popen(
            [plugin, "--version"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert (proc.returncode, out, err) == (
            0,
            f"nomad-driver-tart {__version__}\n".encode(),
            b"",
        )
    assert [p.name for p in _versions(cache / "nomad-driver-tart")] == [
        _versions(cache / "nomad-driver-tart")[0].name
    ]
    assert not any(p.name.startswith(".extract-") for p in (cache / "nomad-driver-tart").iterdir())


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("PYTHON = (", "PYTHON = (2, 7) or (", "was built for"),
        ("TARGETS = (", "TARGETS = (('plan9', ('mips',)),) or (", "rebuild it with"),
    ],
)
def test_refuses_another_python_or_platform(
    zipapp_file: Path, bare_python: Path, tmp_path: Path, old: str, new: str, message: str
) -> None:
    plugin = tmp_path / "nomad-driver-tart"
    with zipfile.ZipFile(zipapp_file) as src, plugin.open("wb") as raw:
        raw.write(b"#!/usr/bin/env python3\n")
        with zipfile.ZipFile(raw, "w") as dst:
            launcher = src.read("__main__.py").decode()
            assert old in launcher
            dst.writestr("__main__.py", launcher.replace(old, new, 1))
    plugin.chmod(0o755)
    proc, _ = _run(plugin, "--version", env={"PATH": f"{bare_python}:{SYSTEM_PATH}"})
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr.startswith("nomad-driver-tart: ") and message in proc.stderr, proc.stderr
    assert not (tmp_path / ".nomad-driver-tart-cache").exists()


async def test_nomad_loads_it_from_plugin_dir(
    zipapp_file: Path, bare_python: Path, tmp_path: Path
) -> None:
    plugin = _install(zipapp_file, tmp_path / "plugins")
    env = {"PATH": f"{bare_python}:{SYSTEM_PATH}", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    log_file = tmp_path / "plugin.log"
    seconds = []
    async with open_nomadsim() as sim:
        for _ in range(2):  # cold (extracts), then warm
            launched = await sim.call("launch", cmd=[str(plugin)], env=env, log_file=str(log_file))
            seconds.append(launched["handshake_seconds"])
            info = await sim.call("plugin_info")
            assert (info["name"], info["plugin_version"]) == ("tart", __version__)
            assert (await sim.call("config_schema"))["valid"]
            killed = await sim.call("kill")
            assert killed["graceful"], killed
            assert killed["exit_error"] is None, killed
    assert len(_versions(tmp_path / "cache" / "nomad-driver-tart")) == 1
    errors = [line for line in plugin_log(log_file) if line.get("@level") == "error"]
    assert not errors, errors
    print(f"\nexec to handshake under nomadsim: cold {seconds[0]:.3f}s, warm {seconds[1]:.3f}s")


def test_platform_tags_map_to_what_the_launcher_checks() -> None:
    tool = _load_tool()
    assert tool.targets_for(["macosx_11_0_arm64"]) == [("darwin", ("arm64",))]
    assert tool.targets_for(["macosx_10_12_x86_64", "macosx_11_0_universal2"]) == [
        ("darwin", ("x86_64",)),
        ("darwin", ("arm64", "x86_64")),
    ]
    assert tool.targets_for(["manylinux_2_17_aarch64", "manylinux2014_x86_64"]) == [
        ("linux", ("aarch64",)),
        ("linux", ("x86_64",)),
    ]
    assert tool.targets_for(["win_amd64"]) == []  # not understood: not checked
    assert tool.targets_for([]) == [(sys.platform, (os.uname().machine,))]
    assert tool.python_version("3.12") == tool.python_version("312") == (3, 12)


@pytest.mark.slow
async def test_a_whole_task_life_runs_from_the_zipapp(
    zipapp_file: Path, bare_python: Path, tmp_path: Path, fake_tart: FakeTart
) -> None:
    """Start, logs, exec, plugin SIGKILL, recover, stop and destroy, with and without a
    command, by a plugin that exists only as the zipapp in plugin_dir."""
    plugin = _install(zipapp_file, tmp_path / "plugins")
    cache = tmp_path / "cache"
    env = fake_tart.env(base={"PATH": f"{bare_python}:{SYSTEM_PATH}", "XDG_CACHE_HOME": str(cache)})
    log_file = tmp_path / "plugin.log"

    async def launch() -> None:
        await sim.call("launch", cmd=[str(plugin)], env=env, log_file=str(log_file))
        await sim.call("set_config", hcl=PLUGIN_CONFIG, with_nomad_config=True)

    async with open_nomadsim() as sim:
        await launch()
        service = await start(sim, _variant(""))
        build = await start_command(sim, job(COUNT, "300", "0.01", "4"))
        service_log, build_log = Path(service["stdout_log"]), Path(build["stdout_log"])
        await until(lambda: len(seqs(service_log)) >= 3)
        await until(lambda: len(numbers(build_log)) >= 20)
        ran = await exec_task(sim, service["task_id"], ["/bin/echo", "from", "the guest"])
        assert (ran["exit_code"], ran["stdout"]) == (0, b"from the guest\n")

        (payload,) = _versions(cache / "nomad-driver-tart")
        supervisors = [argv_of(pid) for pid in live_supervisor_pids() if in_dir(pid, tmp_path)]
        assert len(supervisors) == 2
        for argv in supervisors:
            assert argv[1:4] == ["-I", str(payload), "supervise"], argv

        await sim.call("sigkill")
        await launch()
        for task in (service, build):
            await sim.call("recover_task", handle=task["handle"], drop_driver_config=True)
        assert len(fake_tart.calls_of("run")) == 2, "recovered, not run again"
        with trio.fail_after(60):
            done = await sim.call("wait_task", task_id=build["task_id"])
        assert done["result"]["exit_code"] == 4
        ran = await exec_task(sim, service["task_id"], ["/bin/echo", "recovered"])
        assert ran["stdout"] == b"recovered\n"
        await sim.call("stop_task", task_id=service["task_id"], timeout_seconds=5)
        stopped = await sim.call("wait_task", task_id=service["task_id"])
        assert stopped["result"]["exit_code"] == 0
        for task in (service, build):
            await sim.call("destroy_task", task_id=task["task_id"])
        assert numbers(build_log) == list(range(1, 301)), "no gap and no duplicate"
        await sim.call("kill")
    assert vm_names(fake_tart) == []
    entries = plugin_log(log_file)
    assert not [e for e in entries if e.get("@level") == "error"], entries
    assert len(_versions(cache / "nomad-driver-tart")) == 1


def test_the_extracted_payload_runs_the_run_as_helper(
    zipapp_file: Path, bare_python: Path, tmp_path: Path
) -> None:
    """``runas`` from the zipapp: the helper that becomes the tart user before tart runs."""
    if os.geteuid() != 0:
        pytest.skip("becoming another user needs root")
    plugin = _install(zipapp_file, tmp_path / "plugins")
    cache = tmp_path / "cache"
    env = {"PATH": f"{bare_python}:{SYSTEM_PATH}", "XDG_CACHE_HOME": str(cache)}
    proc, _ = _run(plugin, "--version", env=env)
    assert proc.returncode == 0, proc.stderr
    (payload,) = _versions(cache / "nomad-driver-tart")
    nobody = pwd.getpwnam("nobody")
    ran = subprocess.run(
        [
            str(bare_python / "python3"),
            str(payload),
            "runas",
            "nobody",
            str(nobody.pw_uid),
            str(nobody.pw_gid),
            "--",
            "/usr/bin/id",
            "-u",
        ],
        env={"PATH": SYSTEM_PATH},
        capture_output=True,
        text=True,
        check=False,
    )
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, f"{nobody.pw_uid}\n", "")
