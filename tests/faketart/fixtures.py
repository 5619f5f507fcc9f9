"""pytest fixtures for the fake Tart host (see docs/fake-tart.md).

Register with ``pytest_plugins = ["tests.faketart.fixtures"]``.  Nothing here
imports ``tart_trio``.

The ``fake_tart`` fixture gives a :class:`FakeTart`: a fresh ``TART_HOME``
per test, a registry file with a few Cirrus-like images, helpers to run
``tart``, start VMs, set failure knobs, read recorded calls and SSH into
guests, and a teardown that kills every ``tart run`` / guest of that
``TART_HOME`` and checks nothing is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
BIN_DIR = HERE  # holds the `tart` executable
SOFTNET_DIR = HERE / "bin"  # holds the fake `softnet`
HOST_DIR = HERE / "host"  # the fake macOS tools: `launchctl`
TART = BIN_DIR / "tart"

DEFAULT_IMAGES: dict[str, dict[str, Any]] = {
    "ghcr.io/cirruslabs/macos-sequoia-base:latest": {"os": "darwin", "mac": "7e:3a:51:00:00:01"},
    "ghcr.io/cirruslabs/macos-tahoe-base:latest": {"os": "darwin", "mac": "7e:3a:51:00:00:02"},
    "ghcr.io/cirruslabs/macos-sequoia-vanilla:latest": {
        "os": "darwin",
        "mac": "7e:3a:51:00:00:03",
        "guest_agent": False,
        "recovery_partition": True,
    },
    "ghcr.io/cirruslabs/ubuntu:latest": {"os": "linux", "mac": "7e:3a:51:00:00:11"},
    "ghcr.io/cirruslabs/debian:latest": {"os": "linux", "mac": "7e:3a:51:00:00:12"},
}
MACOS_IMAGE = "ghcr.io/cirruslabs/macos-sequoia-base:latest"
LINUX_IMAGE = "ghcr.io/cirruslabs/ubuntu:latest"


def read_calls(tart_home: str | os.PathLike) -> list[dict]:
    """Every recorded `tart` invocation under *tart_home*, oldest first."""
    path = Path(tart_home) / "faketart-calls.jsonl"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _normalise_ref(ref: str) -> str:
    name = ref.rsplit("/", 1)[-1]
    if "@" in ref or ":" in name:
        return ref
    return ref + ":latest"


def _proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, start time) of a pid, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return rest[0], int(rest[19])
    except (OSError, IndexError, ValueError):
        return None


def pid_alive(pid: int, start: int | None = None) -> bool:
    """True for a live (non-zombie) process; *start* guards against pid reuse."""
    st = _proc_state(pid)
    if st is None or st[0] in ("Z", "X"):
        return False
    return start is None or st[1] == start


def _listening(addr: str, port: int = 22) -> bool:
    want = "{:02X}{:02X}{:02X}{:02X}:{:04X}".format(
        *(*list(reversed([int(x) for x in addr.split(".")])), port)
    )
    try:
        with open("/proc/net/tcp") as f:
            return any(ln.split()[1] == want and ln.split()[3] == "0A" for ln in list(f)[1:])
    except OSError:
        return False


def _base_python() -> Path:
    return Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))


def _make_python_dir(root: Path, python: Path | None = None) -> Path:
    """A bare venv (no site-packages) around the interpreter running the tests.

    The fake is stdlib-only and runs under the first ``python3`` on PATH; this
    one starts in ~12 ms instead of paying for the base install's ``.pth``
    files and pyenv shims on every `tart` call.  Returns its bin directory.
    ``python`` replaces the test interpreter (e.g. one another user can run).
    """
    base = python or _base_python()
    (root / "bin").mkdir(parents=True, exist_ok=True)
    (root / "bin" / "python3").symlink_to(base)
    version = _python_version(base) if python else ".".join(map(str, sys.version_info[:3]))
    (root / "pyvenv.cfg").write_text(
        f"home = {base.parent}\ninclude-system-site-packages = false\nversion = {version}\n"
    )
    return root / "bin"


class RunningVM:
    """A `tart run` started by the fixture (a Popen with helpers)."""

    def __init__(self, ft: FakeTart, name: str, proc: subprocess.Popen, argv: list[str]):
        self.ft = ft
        self.name = name
        self.proc = proc
        self.argv = argv
        self.stdout = ""
        self.stderr = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ip(self, timeout: float = 15.0) -> str:
        return self.ft.wait_ip(self.name, timeout=timeout, proc=self.proc)

    def wait(self, timeout: float = 15.0) -> int:
        """Wait for exit; collects stdout/stderr; returns the exit status."""
        out, err = self.proc.communicate(timeout=timeout)
        self.stdout += out or ""
        self.stderr += err or ""
        return self.proc.returncode

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.wait(timeout=10)

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()


class FakeTart:
    def __init__(self, home: Path, scratch: Path, root: Path = BIN_DIR, python: Path | None = None):
        self.home = home
        self.scratch = scratch
        self.bin_dir = root
        self.softnet_dir = root / "bin"
        self.tart_path = root / "tart"
        self.registry_path = scratch / "faketart-registry.json"
        self.host_dir = HOST_DIR
        self.sessions_path = scratch / "faketart-sessions.json"
        self.control_path = home / "faketart-control.json"
        self.strict_teardown = False
        self.leftovers: list[str] = []
        self._procs: list[RunningVM] = []
        self.extra_env: dict[str, str] = {}
        self._pybin = _make_python_dir(scratch / "faketart-python", python)
        home.mkdir(parents=True, exist_ok=True)
        self._registry: dict[str, Any] = {
            "images": {k: dict(v) for k, v in DEFAULT_IMAGES.items()},
            "hosts": {},
        }
        self._write_registry()

    # -- environment -------------------------------------------------------
    def env(
        self, *, softnet: bool = True, ci: bool = True, base: dict | None = None, **extra: str
    ) -> dict[str, str]:
        """Environment for running `tart`: fake first on PATH, TART_HOME, registry, CI."""
        env = dict(os.environ if base is None else base)
        for k in (
            "TART_REGISTRY_USERNAME",
            "TART_REGISTRY_PASSWORD",
            "TART_REGISTRY_HOSTNAME",
            "FAKETART_VERSION",
        ):
            if base is None:
                env.pop(k, None)
        dirs = (
            [str(self.bin_dir)] + ([str(self.softnet_dir)] if softnet else []) + [str(self._pybin)]
        )
        path = env.get("PATH", os.defpath)
        if not softnet:
            path = os.pathsep.join(
                p for p in path.split(os.pathsep) if not os.path.exists(os.path.join(p, "softnet"))
            )
        env["PATH"] = os.pathsep.join([*dirs, path])
        env["TART_HOME"] = str(self.home)
        env["FAKETART_REGISTRY"] = str(self.registry_path)
        env["FAKETART_LOGIN_SESSIONS"] = str(self.sessions_path)
        if ci:
            env["CI"] = "true"
        else:
            env.pop("CI", None)
        env.update(self.extra_env)
        env.update(extra)
        return env

    @property
    def path_dirs(self) -> list[str]:
        return [str(self.bin_dir), str(self.softnet_dir), str(self._pybin)]

    # -- running tart --------------------------------------------------------
    def tart(
        self,
        *args: str,
        input: str | None = None,
        timeout: float = 60,
        env: dict | None = None,
        check: bool = False,
        cwd: str | None = None,
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.tart_path), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env or self.env(),
            check=check,
            cwd=cwd,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def run_vm(
        self, name: str, *args: str, no_graphics: bool = True, env: dict | None = None
    ) -> RunningVM:
        """Start `tart run NAME [--no-graphics] ARGS...` in the background (tracked)."""
        argv = (
            [str(self.tart_path), "run", name]
            + (["--no-graphics"] if no_graphics else [])
            + list(args)
        )
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env or self.env(),
            start_new_session=True,
        )
        vm = RunningVM(self, name, proc, argv[1:])
        self._procs.append(vm)
        return vm

    def start_vm(
        self, name: str, *args: str, timeout: float = 15.0, **kw: Any
    ) -> tuple[RunningVM, str]:
        """run_vm + wait for its IP."""
        vm = self.run_vm(name, *args, **kw)
        return vm, vm.wait_ip(timeout)

    def wait_ip(
        self, name: str, timeout: float = 15.0, proc: subprocess.Popen | None = None
    ) -> str:
        """Poll the VM's runtime record until its IP is visible (no `tart` call)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rt = self.runtime(name)
            up = rt.get("ip_visible_at") and rt.get("addr") and not rt.get("exited_at")
            if up and self.running_vms().get(name) == rt.get("pid"):
                return rt["addr"]
            if proc is not None and proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(
                    f"tart run {name} exited with {proc.returncode}: {out!r} {err!r}"
                )
            time.sleep(0.02)
        raise AssertionError(
            f"VM {name} got no IP within {timeout} s (runtime: {self.runtime(name)})"
        )

    # -- registry / knobs ------------------------------------------------------
    def _write_registry(self) -> None:
        tmp = self.registry_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._registry, indent=2))
        tmp.replace(self.registry_path)

    def add_image(self, ref: str, **fields: Any) -> str:
        """Add or replace a registry image; returns the normalised ref.

        Fields: os, cpu, cpuCountMin, memory, memoryMin, disk, mac, user, password,
        download_size, pull_speed, credentials, digest, guest_agent, display, knobs.
        """
        ref = _normalise_ref(ref)
        self._registry["images"][ref] = fields
        self._write_registry()
        return ref

    def remove_image(self, ref: str) -> None:
        self._registry["images"].pop(_normalise_ref(ref), None)
        self._write_registry()

    def set_host(self, host: str, **fields: Any) -> None:
        """Registry-host settings, e.g. ``credentials={"username": .., "password": ..}``."""
        self._registry.setdefault("hosts", {})[host] = fields
        self._write_registry()

    def control(self) -> dict:
        try:
            return json.loads(self.control_path.read_text())
        except FileNotFoundError:
            return {}

    def _write_control(self, data: dict) -> None:
        tmp = self.control_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.control_path)

    def set_knobs(self, vm: str = "*", **knobs: Any) -> None:
        """Merge knobs into the control file entry for VM-name glob *vm*."""
        data = self.control()
        data.setdefault("vms", {}).setdefault(vm, {}).update(knobs)
        self._write_control(data)

    def set_image_knobs(self, image: str, **knobs: Any) -> None:
        """Merge knobs into the control file entry for image-ref glob *image*."""
        data = self.control()
        data.setdefault("images", {}).setdefault(image, {}).update(knobs)
        self._write_control(data)

    def set_host_state(self, **state: Any) -> None:
        """Host-wide state, e.g. ``leaked_macos_slots=1`` (slots held by VMs that are gone)."""
        data = self.control()
        data.setdefault("host", {}).update(state)
        self._write_control(data)

    def clear_knobs(self) -> None:
        self._write_control({})

    def login(self, uid: int) -> None:
        """The user ``uid`` logs in at the GUI (see the fake ``launchctl``)."""
        self._set_session(uid, True)

    def logout(self, uid: int) -> None:
        """The user ``uid`` logs out of the GUI."""
        self._set_session(uid, False)

    def _set_session(self, uid: int, present: bool) -> None:
        try:
            users = set(json.loads(self.sessions_path.read_text()).get("gui", []))
        except FileNotFoundError:
            users = set()
        users = users | {uid} if present else users - {uid}
        self.sessions_path.write_text(json.dumps({"gui": sorted(users)}))

    # -- VMs ----------------------------------------------------------------
    def clone(self, image: str, name: str, *, random_mac: bool = True) -> None:
        r = self.tart("clone", image, name)
        assert r.returncode == 0, r.stderr
        if random_mac:
            r = self.tart("set", name, "--random-mac")
            assert r.returncode == 0, r.stderr

    def make_vm(self, name: str, image: str = MACOS_IMAGE, *, random_mac: bool = True) -> Path:
        """Create a local VM from a registry image without pulling (fast; no `tart` process)."""
        from .faketart import registry, storage

        ref = _normalise_ref(image)
        entry = self._registry["images"][ref]
        cfg = storage.make_config(entry)
        if random_mac:
            cfg["macAddress"] = storage.random_mac()
        disk = int(entry.get("disk", 50 if entry.get("os", "darwin") == "darwin" else 20))
        path = self.home / "vms" / name
        storage.write_bundle(
            str(path), cfg, disk, None, recovery_partition=bool(entry.get("recovery_partition"))
        )
        (path / ".faketart").mkdir(exist_ok=True)
        (path / ".faketart" / "image.json").write_text(
            json.dumps(
                {
                    "source": ref,
                    "digest": registry.digest_of(ref, entry),
                    "user": entry.get("user", "admin"),
                    "password": entry.get("password", "admin"),
                    "guest_agent": entry.get("guest_agent", True),
                    "knobs": entry.get("knobs") or {},
                }
            )
        )
        return path

    def vm_dir(self, name: str) -> Path:
        return self.home / "vms" / name

    def config(self, name: str) -> dict:
        return json.loads((self.vm_dir(name) / "config.json").read_text())

    def runtime(self, name: str) -> dict:
        try:
            return json.loads((self.vm_dir(name) / ".faketart" / "runtime.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def guest_log(self, name: str) -> list[str]:
        try:
            return (self.vm_dir(name) / ".faketart" / "guest.log").read_text().splitlines()
        except FileNotFoundError:
            return []

    def saved_state(self, name: str) -> dict | None:
        """The header of the VM's ``state.vzvmsave`` (fingerprint, saved memory), or None
        when it has none or it would not restore (cut short, not a saved state)."""
        from .faketart import vzstate

        return vzstate.read_header(str(self.vm_dir(name) / "state.vzvmsave"))[0]

    def rewrite_saved_state(self, name: str, header: dict) -> None:
        """Replace the header of the VM's saved state in place, e.g. to make it look saved
        an hour ago (``header["memory"]["paused_at"] -= 3600``)."""
        from .faketart import vzstate

        vzstate.rewrite_header(str(self.vm_dir(name) / "state.vzvmsave"), header)

    def running_vms(self) -> dict[str, int]:
        """{name: pid of its `tart run`} for VMs whose config.json is locked."""
        from .faketart.common import lock_holder

        res = {}
        vms = self.home / "vms"
        if vms.is_dir():
            for d in sorted(vms.iterdir()):
                pid = lock_holder(str(d / "config.json"))
                if pid:
                    res[d.name] = pid
        return res

    def calls(self) -> list[dict]:
        return read_calls(self.home)

    def calls_of(self, sub: str) -> list[list[str]]:
        """argv lists of recorded calls of one subcommand, e.g. calls_of("run")."""
        return [c["argv"] for c in self.calls() if c["argv"][:1] == [sub]]

    # -- SSH ----------------------------------------------------------------
    def _askpass(self) -> Path:
        p = self.scratch / "faketart-askpass.sh"
        if not p.exists():
            p.write_text("#!/bin/sh\nprintf '%s\\n' \"$FAKETART_SSH_PASSWORD\"\n")
            p.chmod(0o700)
        return p

    def ssh_argv(
        self, ip: str, command: str, user: str = "admin", extra: list[str] | None = None
    ) -> list[str]:
        return [
            "ssh",
            "-T",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "NumberOfPasswordPrompts=1",
            *(extra or []),
            f"{user}@{ip}",
            command,
        ]

    def ssh_env(self, password: str = "admin") -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
        env.update(
            SSH_ASKPASS=str(self._askpass()),
            SSH_ASKPASS_REQUIRE="force",
            DISPLAY=":0",
            FAKETART_SSH_PASSWORD=password,
        )
        return env

    def ssh(
        self,
        ip: str,
        command: str,
        *,
        user: str = "admin",
        password: str = "admin",
        timeout: float = 30,
        input: str | None = None,
    ) -> subprocess.CompletedProcess:
        """Run *command* in the guest (OpenSSH, password auth); returns a text CompletedProcess."""
        return subprocess.run(
            self.ssh_argv(ip, command, user),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.ssh_env(password),
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def ssh_popen(
        self, ip: str, command: str, *, user: str = "admin", password: str = "admin"
    ) -> subprocess.Popen:
        return subprocess.Popen(
            self.ssh_argv(ip, command, user),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.ssh_env(password),
        )

    @staticmethod
    def host_key(ip: str) -> str:
        """The guest's ed25519 host key (base64), via ssh-keyscan."""
        r = subprocess.run(
            ["ssh-keyscan", "-t", "ed25519", "-T", "5", ip],
            capture_output=True,
            text=True,
            timeout=15,
        )
        for ln in r.stdout.splitlines():
            parts = ln.split()
            if len(parts) >= 3 and parts[1] == "ssh-ed25519":
                return parts[2]
        raise AssertionError(f"no host key from {ip}: {r.stderr}")

    @staticmethod
    def port_open(ip: str, port: int = 22) -> bool:
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex((ip, port)) == 0

    # -- teardown -------------------------------------------------------------
    def our_processes(self) -> list[tuple[int, int, str]]:
        """Live processes of this TART_HOME: `tart`, guest inits, softnet (pid, start, cmdline)."""
        me = os.getpid()
        home = str(self.home)
        marks = (f"TART_HOME={home}".encode(), f"FAKETART_HOME={home}".encode())
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            pid = int(entry)
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read()
                if str(self.bin_dir).encode() not in cmd:
                    continue
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = f.read().split(b"\0")
            except OSError:
                continue
            if any(m in env for m in marks):
                st = _proc_state(pid)
                if st and st[0] not in ("Z", "X"):
                    found.append(
                        (pid, st[1], cmd.replace(b"\0", b" ").decode(errors="replace").strip())
                    )
        return found

    def guest_addresses(self) -> list[str]:
        addrs = []
        vms = self.home / "vms"
        if vms.is_dir():
            for d in vms.iterdir():
                rt = self.runtime(d.name)
                if rt.get("addr"):
                    addrs.append(rt["addr"])
        return addrs

    def cleanup(self) -> None:
        """Kill every `tart run`/guest/softnet of this TART_HOME; assert none survives."""
        for vm in self._procs:
            if vm.proc.poll() is None:
                self.leftovers.append(f"tart {' '.join(vm.argv)} (pid {vm.pid})")
                vm.proc.kill()
        for vm in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                vm.proc.communicate(timeout=10)
        for pid, start, cmd in self.our_processes():
            self.leftovers.append(f"{cmd} (pid {pid})")
            if pid_alive(pid, start):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        addrs = self.guest_addresses()
        deadline = time.monotonic() + 10
        while True:
            alive = self.our_processes()
            guests = []
            vms = self.home / "vms"
            if vms.is_dir():
                for d in vms.iterdir():
                    rt = self.runtime(d.name)
                    if rt.get("guest_pid") and pid_alive(
                        rt["guest_pid"], rt.get("guest_pid_start")
                    ):
                        guests.append(rt["guest_pid"])
            listening = [a for a in addrs if _listening(a) and not self.addr_owned_elsewhere(a)]
            if not alive and not guests and not listening:
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"fake tart teardown: still alive after SIGKILL: {alive} guests={guests} "
                    f"listening={listening}"
                )
            time.sleep(0.02)
        if self.strict_teardown and self.leftovers:
            raise AssertionError(
                f"fake tart: processes left running at the end of the test: {self.leftovers}"
            )

    def guest_gone(self, addr: str) -> bool:
        """Nothing of ours listens on *addr*:22 any more (another VM may have reused it)."""
        return not self.port_open(addr) or self.addr_owned_elsewhere(addr)

    def addr_owned_elsewhere(self, addr: str) -> bool:
        """An address we used may legitimately be reused by another TART_HOME's VM by now."""
        path = Path(os.environ.get("FAKETART_ADDR_DIR", "/tmp/faketart-addrs")) / f"{addr}.lock"
        try:
            owner = path.read_text()
        except OSError:
            return False
        return str(self.home) not in owner


@pytest.fixture
def fake_tart(tmp_path: Path) -> Iterator[FakeTart]:
    """A fresh fake Tart host: TART_HOME, registry, knobs, calls, VMs; cleaned up after the test."""
    ft = FakeTart(tmp_path / "tart-home", tmp_path)
    try:
        yield ft
    finally:
        ft.cleanup()


def needs_guest_reason() -> str | None:
    """Why SSH guests cannot run here (None when they can): root, unshare and sshd are needed."""
    from .faketart import linuxsys

    if os.geteuid() != 0:
        return "fake Tart guests need root (mount/PID namespaces, sshd)"
    if not os.path.exists("/usr/sbin/sshd"):
        return "fake Tart guests need OpenSSH's sshd (Debian package openssh-server)"
    if not linuxsys.namespaces_available():
        return "fake Tart guests need unshare(CLONE_NEWNS|CLONE_NEWPID)"
    return None


# ---------------------------------------------------------------------------
# `tart` run by another user (a Mac's dedicated tart account)

VMM = HERE / "faketart" / "vmm.py"


#: Serialises account changes machine-wide: test processes running side by side (pytest-xdist
#: workers, other checkouts) create the same accounts, and useradd, groupadd and usermod
#: fail rather than wait while another one holds /etc/passwd or /etc/group.
ACCOUNTS_LOCK = Path("/tmp/faketart-accounts.lock")


@contextlib.contextmanager
def _accounts_locked() -> Iterator[None]:
    import fcntl

    fd = os.open(ACCOUNTS_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def ensure_user(name: str) -> Any:
    """A local account (created on first use, needs root) with its home under /tmp.

    Returns its ``pwd`` entry. The home belongs to the user, like a Mac's tart account.
    """
    import pwd

    home = Path("/tmp") / f"{name}-home"
    with _accounts_locked():
        home.mkdir(mode=0o755, exist_ok=True)
        created = subprocess.run(
            ["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh", name],
            capture_output=True,
            text=True,
            check=False,
        )
        if created.returncode not in (0, 9):  # 9: the account exists already
            raise RuntimeError(f"useradd {name}: {created.stderr.strip()}")
        entry = pwd.getpwnam(name)
        os.chown(home, entry.pw_uid, entry.pw_gid)
    return entry


def ensure_groups(user: str, groups: list[str]) -> list[int]:
    """Make ``user`` a member of ``groups`` (created on first use); returns their gids."""
    import grp

    with _accounts_locked():
        for group in groups:
            subprocess.run(["groupadd", "-f", group], check=True)
        # Only when something is missing: /etc/group is not rewritten under tests that
        # read it meanwhile.
        if any(user not in grp.getgrnam(group).gr_mem for group in groups):
            subprocess.run(["usermod", "-a", "-G", ",".join(groups), user], check=True)
        return [grp.getgrnam(group).gr_gid for group in groups]


#: More supplementary groups than macOS's setgroups(2) takes (NGROUPS_MAX = 16).
MANY_GROUPS = [f"nomad-tart-g{i:02}" for i in range(1, 21)]


@contextlib.contextmanager
def running_vmm(sock: Path) -> Iterator[Path]:
    """The fake virtualization service (root), for `tart run` as another user."""
    proc = subprocess.Popen(
        [sys.executable, str(VMM), str(sock)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline() != b"ready\n":
            raise RuntimeError("the fake virtualization service did not start")
        yield sock
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def install_fake(dest: Path) -> Path:
    """A copy of the fake (``tart``, ``bin/softnet``, ``faketart/``) that every user can run.

    Another user's `tart` cannot run the checkout's own copy when the checkout lies where
    only root may look (a clone under ``/root``, mode 0700). The copy is compiled here,
    so that user's `tart` calls need not write bytecode. Returns the directory that holds
    ``tart`` (the ``root`` of a :class:`FakeTart`).
    """
    import compileall
    import shutil

    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    dest.mkdir(mode=0o755)
    shutil.copy2(TART, dest / "tart")
    shutil.copytree(SOFTNET_DIR, dest / "bin", ignore=skip)
    shutil.copytree(HERE / "faketart", dest / "faketart", ignore=skip)
    compileall.compile_dir(str(dest / "faketart"), quiet=1)
    for path in [dest, *dest.rglob("*")]:
        executable = path.is_dir() or os.access(path, os.X_OK)
        path.chmod(0o755 if executable else 0o644)
    return dest


def _python_version(python: Path) -> str:
    probe = "import sys; print('.'.join(map(str, sys.version_info[:3])))"
    return subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()


def python_for(user: Any) -> Path:
    """A Python 3.11+ that ``user`` can run: the test interpreter, else the system's.

    The test interpreter may live where only root may look (pyenv under ``/root``).
    """
    probe = "import sys; sys.exit(sys.version_info < (3, 11))"
    candidates = [_base_python(), Path("/usr/bin/python3"), Path("/usr/local/bin/python3")]
    for python in candidates:
        try:
            ok = (
                subprocess.run(
                    [str(python), "-c", probe],
                    user=user.pw_uid,
                    group=user.pw_gid,
                    extra_groups=[],
                    cwd="/",
                    capture_output=True,
                    check=False,
                ).returncode
                == 0
            )
        except OSError:  # not there, or not for this user
            ok = False
        if ok:
            return Path(os.path.realpath(python))
    raise RuntimeError(f"no Python 3.11+ that user {user.pw_name} may run: tried {candidates}")


@contextlib.contextmanager
def fake_tart_for_user(user: Any) -> Iterator[FakeTart]:
    """A fake Tart host whose `tart` runs as ``user``: public scratch, TART_HOME it owns.

    The fake itself is a copy in the public scratch directory (see :func:`install_fake`),
    and its ``python3`` one the user may run, so this works from any checkout.
    ``env()`` includes ``FAKETART_VMM``, so that user's `tart run` boots real guests.
    """
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="faketart-user-"))
    base.chmod(0o755)
    ft = FakeTart(
        base / "tart-home", base, root=install_fake(base / "fake"), python=python_for(user)
    )
    os.chown(ft.home, user.pw_uid, user.pw_gid)
    ft.extra_env["FAKETART_VMM"] = str(base / "vmm.sock")
    try:
        with running_vmm(base / "vmm.sock"):
            try:
                yield ft
            finally:
                ft.cleanup()
    finally:
        shutil.rmtree(base, ignore_errors=True)
