"""The `tart run` supervisor: guest process, softnet, address, leases, signals (§3.7.4)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request

from . import knobs as _knobs
from . import network, storage, vzstate
from .common import SwiftErr, err, out, write_json_atomic
from .run import PKG_DIR, SignalFlags


def _proc_start(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _choose_uid() -> int:
    used = set()
    try:
        with open("/etc/passwd") as f:
            for ln in f:
                parts = ln.split(":")
                if len(parts) > 3 and parts[2].isdigit():
                    used.add(int(parts[2]))
                    used.add(int(parts[3]) if parts[3].isdigit() else -1)
        with open("/etc/group") as f:
            for ln in f:
                parts = ln.split(":")
                if len(parts) > 2 and parts[2].isdigit():
                    used.add(int(parts[2]))
    except OSError:
        pass
    if 501 not in used:
        return 501  # what macOS gives the first user (and Cirrus images' admin)
    uid = 61000
    while uid in used:
        uid += 1
    return uid


def _guest_python() -> tuple[str, list[str]]:
    root_dev = os.stat("/").st_dev
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(cand) and os.stat(cand).st_dev == root_dev:
            return cand, []
    exe = os.path.realpath(sys.executable)
    if os.stat(exe).st_dev == root_dev:
        traverse = []
        d = os.path.dirname(exe)
        while d != "/":
            if not os.stat(d).st_mode & 0o001:
                traverse.append(d)
            d = os.path.dirname(d)
        return exe, traverse
    return "/usr/bin/python3", []


def parse_ro(o: dict) -> bool:
    """Whether `--root-disk-opts` makes the root disk read-only."""
    return "ro" in [x for x in (o.get("root_disk_opts") or "").split(",") if x]


def guest_mode() -> str:
    want = os.environ.get("FAKETART_GUEST", "auto")
    if want == "none":
        return "none"
    from . import linuxsys

    ok = os.path.exists("/usr/sbin/sshd") and (
        linuxsys.namespaces_available() or _vmm_socket() is not None
    )
    if want == "ssh" and not ok:
        raise SwiftErr(
            "faketart: FAKETART_GUEST=ssh needs root (or FAKETART_VMM), unshare(2) and "
            "/usr/sbin/sshd"
        )
    return "ns" if ok else "none"


def _vmm_socket() -> str | None:
    """The fake virtualization service a non-root `tart run` boots its guest through."""
    path = os.environ.get("FAKETART_VMM")
    if os.geteuid() == 0 or not path or not os.path.exists(path):
        return None
    return path


class Supervisor:
    def __init__(self, home, vm, cfg, o, lock_fd, disk_fds, softnet_path, restoring, flags):
        self.home = home
        self.vm: storage.VMDir = vm
        self.cfg = cfg
        self.o = o
        self.lock_fd = lock_fd
        self.disk_fds = disk_fds
        self.softnet_path = softnet_path
        self.restoring = restoring
        self.flags: SignalFlags = flags
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.meta = vm.image_meta()
        self.name = vm.name
        self.mac = cfg.get("macAddress")
        self.network = o["_network"]
        self.guest: subprocess.Popen | None = None
        self.softnet: subprocess.Popen | None = None
        self.lease: network.Lease | None = None
        self.pending_lease: network.Lease | None = None
        self.booted_at: float | None = None
        self.visible_at: float | None = None
        self.ip_changed = False
        self.poweroff_seen = False
        self.stopping_hang = False
        self.vnc_printed = False
        self.rt: dict = {}
        self.buf = b""
        self.volumes: list[storage.Staging] = []
        self.serial_fds: list[int] = []
        self.fp: dict = o.get("_fingerprint") or {}
        self.saved: dict | None = None  # the saved memory this run resumed from
        self.saving: vzstate.StateWriter | None = None
        # what the guest's memory holds: its boot time and wall clock, mounted shares
        self.clock: dict = {}
        self.mounts: list[dict] = []
        os.makedirs(vm.fake_path, exist_ok=True)
        self.fake_fd = os.open(vm.fake_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    # -- bookkeeping -----------------------------------------------------
    def knobs(self) -> dict:
        return _knobs.for_vm(self.home, self.name, self.meta.get("knobs"), self.meta.get("source"))

    def save_runtime(self, **kw) -> None:
        self.rt.update(kw)
        with contextlib.suppress(OSError):
            write_json_atomic("runtime.json", self.rt, dir_fd=self.fake_fd)

    def send(self, line: str) -> None:
        if self.guest and self.guest.stdin:
            with contextlib.suppress(OSError):
                os.write(self.guest.stdin.fileno(), (line + "\n").encode())

    # -- startup ---------------------------------------------------------
    def prepare_volumes(self) -> None:
        for _tag, shares in self.o["_shares"].items():
            for s in shares:
                if s.url:
                    s.path = self.fetch_archive(s.path)

    def fetch_archive(self, url: str) -> str:
        cache = os.path.join(self.home, "cache", "faketart-urls")
        os.makedirs(cache, exist_ok=True)
        cached = os.path.join(cache, hashlib.sha256(url.encode()).hexdigest() + ".tar.gz")
        if os.path.exists(cached):
            out(f"Using cached archive for {url}...")
        else:
            out(f"Downloading {url}...")
            try:
                with (
                    urllib.request.urlopen(url, timeout=60) as r,
                    open(cached + ".part", "wb") as f,
                ):
                    shutil.copyfileobj(r, f)
            except Exception as e:
                raise SwiftErr(
                    'Error Domain=NSURLErrorDomain Code=-1004 "Could not connect to the server." '
                    f"({url}: {e})"
                ) from e
            os.replace(cached + ".part", cached)
            out("Cached for future invocations!")
        vol = storage.Staging(self.home, ".volume")
        self.volumes.append(vol)
        with tarfile.open(cached, "r:gz") as t:
            t.extractall(vol.path, filter="data") if hasattr(
                tarfile, "data_filter"
            ) else t.extractall(vol.path)
        out("Unarchived into a temporary directory!")
        return vol.path

    def start_softnet(self) -> None:
        if not self.softnet_path:
            return
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        argv = [self.softnet_path, "--vm-fd", "0", "--vm-mac-address", self.mac]
        if self.network == "host":
            argv += ["--vm-net-type", "host"]
        if self.o["net_softnet_allow"] is not None:
            argv += ["--allow", self.o["net_softnet_allow"]]
        if self.o["net_softnet_block"] is not None:
            argv += ["--block", self.o["net_softnet_block"]]
        if self.o["net_softnet_expose"] is not None:
            argv += ["--expose", self.o["net_softnet_expose"]]
        env = dict(os.environ)
        k = self.knobs()
        if k.get("softnet_exit_after") is not None:
            env["FAKETART_SOFTNET_EXIT_AFTER"] = str(k["softnet_exit_after"])
        from . import linuxsys

        # Tart sets only softnet's stdin: its errors reach `tart run`'s own stderr.
        self.softnet = subprocess.Popen(
            argv,
            stdin=b.fileno(),
            stdout=self.console_fd,
            env=env,
            preexec_fn=lambda: linuxsys.set_pdeathsig(signal.SIGKILL),  # noqa: PLW1509 - single-threaded
        )
        b.close()
        self._softnet_sock = a
        self.rt["softnet_argv"] = argv
        self.rt["softnet_pid"] = self.softnet.pid

    def prepare_guest(self, mode: str) -> str:
        vm = self.vm
        user = str(self.meta.get("user", "admin"))
        password = str(self.meta.get("password", "admin"))
        # Through the virtualization service the guest user is the caller: shares are
        # then exactly as readable in the guest as they are to the user running tart.
        uid = _choose_uid() if os.geteuid() == 0 else os.getuid()
        gid = uid if os.geteuid() == 0 else os.getgid()
        darwin = self.cfg.get("os") == "darwin"
        home_dir = vm.fake("home")
        os.makedirs(home_dir, exist_ok=True)
        if os.geteuid() == 0:
            st = os.stat(home_dir)
            if st.st_uid != uid:
                for dp, dns, fns in os.walk(home_dir):
                    for n in [dp] + [os.path.join(dp, x) for x in dns + fns]:
                        os.lchown(n, uid, uid)
        os.chmod(home_dir, 0o755)
        if darwin and not os.path.exists(os.path.join(home_dir, ".hushlogin")):
            open(os.path.join(home_dir, ".hushlogin"), "w").close()
            if os.geteuid() == 0:
                os.chown(os.path.join(home_dir, ".hushlogin"), uid, uid)
        open(vm.fake("guest.log"), "ab").close()
        os.makedirs(vm.fake("rootfs"), exist_ok=True)
        if mode == "ns" and not os.path.exists(vm.fake("ssh_host_ed25519_key")):
            subprocess.run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    f"faketart-{self.name}",
                    "-f",
                    vm.fake("ssh_host_ed25519_key"),
                ],
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=self.console_fd,
                stderr=self.console_fd,
            )
        from .cryptpw import sha512_crypt

        py, traverse = _guest_python()
        tags = {tag: [s.as_dict() for s in shares] for tag, shares in self.o["_shares"].items()}
        resume = None
        if self.saved is not None:
            resume = self.resume_spec(tags)
            clock = {
                "boottime": float(self.saved.get("boottime") or time.time()),
                "offset": float(self.saved.get("clock_offset") or 0)
                - (time.time() - float(self.saved.get("paused_at") or time.time())),
            }
        else:
            clock = {"boottime": time.time(), "offset": 0.0}
        spec = {
            "vm_dir": vm.path,
            "name": self.name,
            "home": self.home,
            "os": self.cfg.get("os"),
            "user": user,
            "uid": uid,
            "gid": gid,
            # Through the virtualization service, the groups `tart run` has: a share is
            # readable in the guest if one of them may read it, as on a Mac.
            "groups": [] if os.geteuid() == 0 else sorted(set(os.getgroups()) - {gid}),
            "share_idmap": os.geteuid() == 0,
            "guest_home": f"/Users/{user}" if darwin else f"/home/{user}",
            "password_hash": sha512_crypt(password),
            "addr": self.lease.addr if self.lease else "127.0.0.1",
            "mode": mode,
            "tags": tags,
            "boot_delay": 0.0 if resume else float(self.knobs().get("boot_delay") or 0),
            "resume": resume,
            "clock": clock,
            "cpu": self.cfg.get("cpuCount"),
            "memory": self.cfg.get("memorySize"),
            "image_source": self.meta.get("source"),
            "image_knobs": self.meta.get("knobs") or {},
            "guest_python": py,
            "guest_python_traverse": traverse,
        }
        write_json_atomic("guest-spec.json", spec, dir_fd=self.fake_fd)
        return vm.fake("guest-spec.json")

    def resume_spec(self, tags: dict) -> dict:
        """What the resumed guest gets from the saved memory: its mounts, and the
        directories the restored shares serve."""
        k = self.knobs()
        if k.get("restored_share_view") == "saved":
            # the restored device serves what the golden's shares resolved to at suspend
            view = self.saved.get("share_view") or {}
            for tag, shares in tags.items():
                for sh in shares:
                    old = (view.get(tag) or {}).get(sh.get("name") or "")
                    if old and not sh.get("url"):
                        sh["path"] = old
        mounts = [m for m in self.saved.get("mounts") or [] if m.get("tag") in tags]
        return {
            "mounts": mounts,
            "broken": k.get("premounted_after_restore") == "broken",
        }

    def share_view(self) -> dict:
        """{tag: {name: directory}}: what each share resolves to now (saved at suspend)."""
        view: dict = {}
        for tag, shares in self.o["_shares"].items():
            for sh in shares:
                path = sh.path if sh.url else os.path.realpath(sh.path)
                view.setdefault(tag, {})[sh.name or ""] = path
        return view

    def spawn_guest(self, mode: str, spec_path: str) -> None:
        from . import linuxsys

        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "FAKETART_HOME": self.home,
            "FAKETART_VM": self.vm.path,
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        vmm = _vmm_socket() if mode == "ns" else None
        if vmm is not None:
            from .vmm import RemoteGuest

            try:
                self.guest = RemoteGuest(vmm, spec_path, env, self.console_fd)
            except OSError as e:
                raise SwiftErr(f"faketart: {e}") from e
            os.set_blocking(self.guest.stdout.fileno(), False)
            return
        if mode == "ns":
            # Our next child becomes PID 1 of a new PID namespace: when it dies,
            # the kernel kills every process of the guest.
            linuxsys.unshare(linuxsys.CLONE_NEWPID)
        self.guest = subprocess.Popen(
            [sys.executable, "-S", "-E", os.path.join(PKG_DIR, "guestinit.py"), spec_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.console_fd,
            env=env,
            cwd="/",
            preexec_fn=lambda: linuxsys.set_pdeathsig(signal.SIGKILL),  # noqa: PLW1509 - single-threaded
        )
        os.set_blocking(self.guest.stdout.fileno(), False)

    # -- run -------------------------------------------------------------
    def run(self) -> int:
        self.console_fd = os.open(
            self.vm.fake("console.log"),
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
            0o644,
        )
        try:
            return self._run()
        finally:
            self.cleanup()

    def _run(self) -> int:
        mode = guest_mode()
        if self.o["serial"]:
            m, s = os.openpty()
            self.serial_fds += [m, s]
            out(f"Successfully open pty {os.ttyname(s)}")
        self.prepare_volumes()
        if self.restoring:
            res = self.restore()
            if res is not None:
                return res
        self.start_softnet()
        prefer = []
        if self.saved and self.saved.get("addr"):
            prefer.append(self.saved["addr"])  # the guest still has the golden's address
        prev = network.lookup_lease(self.home, self.mac)
        if prev:
            prefer.append(prev)
        try:
            self.lease = network.allocate(f"{self.home} {self.name}", prefer)
        except OSError as e:
            raise SwiftErr(str(e)) from e
        if self.saved is None and not parse_ro(self.o):
            storage.bump_disk_generation(self.vm)  # a boot writes to the disk
        spec = self.prepare_guest(mode)
        self.rt = {
            "pid": os.getpid(),
            "pid_start": _proc_start(os.getpid()),
            "name": self.name,
            "home": self.home,
            "addr": self.lease.addr,
            "mac": self.mac,
            "mode": mode,
            "network": self.network,
            "started_at": self.started_wall,
            "booted_at": None,
            "ip_visible_at": None,
            "argv": sys.argv[1:],
            "suspendable": bool(self.o["suspendable"]),
            "softnet_argv": self.rt.get("softnet_argv"),
            "softnet_pid": self.rt.get("softnet_pid"),
            "restored": self.saved is not None,
            "fingerprint": self.fp,
            "virtio_fs_order": [d["tag"] for d in self.fp.get("virtio_fs") or []],
            "boottime": None,
            "clock_offset": None,
            "mounts": [],
        }
        self.spawn_guest(mode, spec)
        self.save_runtime(guest_pid=self.guest.pid, guest_pid_start=_proc_start(self.guest.pid))
        if self.o["vnc_experimental"]:
            words = "-".join(
                secrets.choice(
                    ["alpha", "bravo", "delta", "echo", "lima", "oscar", "tango", "zulu"]
                )
                for _ in range(4)
            )
            out(
                "VNC server is running at "
                f"vnc://:{words}@127.0.0.1:{5900 + secrets.randbelow(1000)}"
            )
        return self.loop()

    def restore(self) -> int | None:
        """Run.swift L513-523: restoreMachineStateFrom, then delete the state and resume.
        A refused restore throws to L587-595: the error on stderr, exit 1, state kept."""
        out("restoring VM state from a snapshot...")
        k = self.knobs()
        fail = _knobs.failure(k.get("restore_failure"), vzstate.RESTORE_FAILURE)
        why = ["restore_failure"] if fail else []
        header, problem = vzstate.read_header(self.vm.state_path)
        if not fail:
            if header is None:
                why = [problem or "unreadable"]
            else:
                why = vzstate.differences(header.get("fingerprint") or {}, self.fp, k)
            if why:
                fail = (vzstate.RESTORE_FAILURE, 1)
        if fail:
            self.save_runtime(name=self.name, restore_refused=why, fingerprint=self.fp)
            err(fail[0])
            return fail[1]
        # reading the saved memory back; `tart stop` meanwhile cancels the task, which
        # still restores and resumes the VM before it stops it (VM.run L271-287)
        stop = self.wait_restoring(float(k.get("resume_seconds") or 0))
        with contextlib.suppress(OSError):
            os.unlink(self.vm.state_path)
        out("resuming VM...")
        if stop:
            out("Stopping VM...")
            return 0
        self.saved = header.get("memory") or {}
        return None

    def wait_restoring(self, seconds: float) -> bool:
        """Sleep while restoring; True when SIGINT came meanwhile."""
        stop = False
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return stop
            with contextlib.suppress(InterruptedError):
                select.select([self.flags.r], [], [], min(left, 0.1))
            stop = stop or signal.SIGINT in self.flags.drain()

    def loop(self) -> int:
        gout = self.guest.stdout.fileno()
        while True:
            try:
                r, _, _ = select.select([gout, self.flags.r], [], [], 0.1)
            except InterruptedError:
                r = []
            for sig in self.flags.drain():
                res = self.on_signal(sig)
                if res is not None:
                    return res
            if gout in r:
                try:
                    data = os.read(gout, 65536)
                except BlockingIOError:
                    data = None
                if data == b"":
                    return self.guest_exited()
                if data:
                    self.buf += data
                    while b"\n" in self.buf:
                        line, _, self.buf = self.buf.partition(b"\n")
                        res = self.on_event(line.decode(errors="replace").strip())
                        if res is not None:
                            return res
            res = self.tick()
            if res is not None:
                return res

    def on_event(self, line: str) -> int | None:
        word, _, arg = line.partition(" ")
        now = time.time()
        if word == "booted":
            self.booted_at = now
            self.save_runtime(booted_at=now)
        elif word == "rebooting":
            self.booted_at = None
            self.save_runtime(booted_at=None)
        elif word == "poweroff":
            self.poweroff_seen = True
        elif word == "ip-changed" and self.pending_lease:
            old, self.lease, self.pending_lease = self.lease, self.pending_lease, None
            self.add_lease()
            self.save_runtime(addr=self.lease.addr)
            if old:
                old.release()
        elif word == "mounted":
            tag, _, gdir = arg.partition(" ")
            self.mounts = [m for m in self.mounts if m["dir"] != gdir]
            self.mounts.append({"tag": tag, "dir": gdir})
            self.save_runtime(mounts=self.mounts)
        elif word == "clock":
            boottime, _, offset = arg.partition(" ")
            with contextlib.suppress(ValueError):
                self.clock = {"boottime": float(boottime), "offset": float(offset)}
                self.save_runtime(
                    boottime=self.clock["boottime"], clock_offset=self.clock["offset"]
                )
        elif word == "error":
            err(f"faketart: the fake guest failed: {arg} (see {self.vm.fake('console.log')})")
        return None

    def add_lease(self) -> None:
        if self.network == "bridged":
            return  # the LAN's DHCP server hands these out, not the host's vmnet
        duration = 600 if self.network in ("softnet", "host") else 86400
        network.add_lease(self.home, self.mac, self.lease.addr, self.name, duration)

    def tick(self) -> int | None:
        if self.saving is not None:  # the VM is paused while its state is written
            if not self.saving.step(float(self.knobs().get("suspend_seconds") or 0)):
                return None
            self.saving = None
            out("snapshot created successfully! shutting down the VM...")
            self.kill_guest()
            return 0
        k = self.knobs()
        now_m = time.monotonic()
        now = time.time()
        if k.get("crash_after") is not None and now_m - self.started >= float(k["crash_after"]):
            self.kill_guest()
            msg = k.get("crash_message")
            msg = str(_knobs.DEFAULTS["crash_message"] if msg is None else msg)
            if msg:
                err(msg)
            return int(k.get("crash_exit_code", 1))
        booted = self.booted_at is not None and self.visible_at is None
        no_ip_for = 0.0 if self.saved is not None else float(k.get("no_ip_for") or 0)
        if booted and now >= self.booted_at + no_ip_for:
            self.visible_at = now
            # A resumed guest asks no DHCP server for anything: it still holds the golden's
            # lease, which `tart ip` finds while it lasts (unless the fake had to give the
            # guest another address)
            if self.saved is None or self.lease.addr != self.saved.get("addr"):
                self.add_lease()
            self.save_runtime(ip_visible_at=now)
        if (
            self.visible_at is not None
            and not self.ip_changed
            and k.get("ip_change_after") is not None
            and now >= self.visible_at + float(k["ip_change_after"])
        ):
            self.ip_changed = True
            try:
                self.pending_lease = network.allocate(f"{self.home} {self.name}")
                self.send(f"ip {self.pending_lease.addr}")
            except OSError as e:
                err(f"faketart: IP change failed: {e}")
        if self.softnet is not None and self.softnet.poll() is not None:
            self.kill_guest()
            err('Error: RuntimeFailed(why: "Softnet process terminated prematurely")')
            return 1
        if self.o["vnc"] and not self.vnc_printed:
            if self.visible_at is not None:
                self.vnc_printed = True
                if self.o["no_graphics"] or "CI" in os.environ:
                    out(f"VNC server is running at vnc://{self.lease.addr}")
                else:
                    out(f"Opening vnc://{self.lease.addr}...")
            elif now_m - self.started > 60:
                self.kill_guest()
                err("Error: IPNotFound()")
                return 1
        return None

    def on_signal(self, sig: int) -> int | None:
        if sig == signal.SIGINT and self.saving is not None:
            # VM.run (L271-287): the VM is paused, not running, so it is not stopped and
            # nothing is printed; the process exits and the file stays cut short
            self.saving.close()
            self.saving = None
            self.kill_guest()
            return 0
        if sig == signal.SIGINT:
            if self.stopping_hang:
                return None
            out("Stopping VM...")
            if self.knobs().get("stop_hang"):
                self.stopping_hang = True
                return None
            self.kill_guest()
            return 0
        if sig == signal.SIGUSR2:
            out("Requesting guest OS to stop...")
            if self.cfg.get("os") != "darwin":
                self.send("poweroff")  # Linux guests shut down; macOS shows a dialog
            return None
        if sig == signal.SIGUSR1:
            return self.suspend()
        return None

    def suspend(self) -> int | None:
        """Run.swift L606-640 (`tart suspend` sends SIGUSR1): validateSaveRestoreSupport,
        pause, saveMachineStateTo (the state file is written while this process still holds
        the VM's lock), exit 0. Any error: `Failed to suspend the VM: ...` on stdout, exit 1
        (VMStorageHelper.swift L142)."""
        if self.saving is not None:
            out(f"Failed to suspend the VM: {vzstate.PAUSE_WHILE_PAUSED}")
            self.saving.close()
            self.saving = None
            self.kill_guest()
            return 1
        if not self.o["suspendable"]:
            out(f"Failed to suspend the VM: {vzstate.SUSPEND_UNSUPPORTED}")
            self.kill_guest()
            return 1
        out("pausing VM to take a snapshot...")
        self.send("pause")
        paused_at = time.time()
        out("creating a snapshot...")
        k = self.knobs()
        fp = dict(self.fp, disk=vzstate.disk_identity(self.vm))  # the disk as it is now
        header = {
            "format": vzstate.FORMAT,
            "vm": self.name,
            "fingerprint": fp,
            "memory": {
                "boottime": self.clock.get("boottime"),
                "clock_offset": self.clock.get("offset", 0.0),
                "paused_at": paused_at,
                "addr": self.lease.addr if self.lease else None,
                "mounts": self.mounts,
                "share_view": self.share_view(),
                "booted": self.booted_at is not None,
            },
        }
        size = k.get("state_size")
        size = vzstate.default_size(self.cfg) if size is None else int(size)
        self.saving = vzstate.StateWriter(
            self.vm.state_path, header, size, float(k.get("suspend_seconds") or 0)
        )
        return None

    def guest_exited(self) -> int:
        code = self.guest.wait()
        if code == 0 or self.poweroff_seen:
            out("guest has stopped the virtual machine")
            return 0
        err(
            f"faketart: the fake guest exited unexpectedly with status {code} (see "
            f"{self.vm.fake('console.log')})"
        )
        return 1

    def kill_guest(self) -> None:
        if self.guest and self.guest.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.guest.kill()
        if self.guest:
            self.guest.wait()

    def cleanup(self) -> None:
        if self.saving is not None:
            self.saving.close()
        self.kill_guest()
        if self.softnet is not None:
            if self.softnet.poll() is None:
                self.softnet.kill()
            self.softnet.wait()
        if not self.knobs().get("stale_lease", True):
            network.drop_leases(self.home, self.mac)
        for ls in (self.lease, self.pending_lease):
            if ls:
                ls.release()
        for v in self.volumes:
            v.close(remove=True)
        self.save_runtime(exited_at=time.time())
        for fd in self.disk_fds + self.serial_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
