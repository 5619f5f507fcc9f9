"""The fake guest's init process.

Started by ``tart run`` as the first process of a new PID namespace (so it is
PID 1 there; when it dies the kernel kills the whole guest) with
PR_SET_PDEATHSIG=SIGKILL (so it dies with ``tart run``, even on SIGKILL).

In "ns" mode (root) it then:

* unshares a private mount namespace and builds the guest root as an overlay
  of the host root with a tmpfs upper layer (the host is never modified);
* writes the guest's own /etc/passwd, /etc/shadow, /etc/group (the guest user
  exists only in the guest), sshd config + host key, and the guest tools
  (/usr/bin/log, /usr/bin/sudo, shutdown/halt/poweroff/reboot,
  /usr/local/bin/mount_virtiofs);
* mounts a fresh /proc, /run, /tmp, /dev/shm, the persistent home directory
  from the bundle, the guest log read-only, and the ``--dir`` shares
  (idmapped so the guest user owns them, read-only when asked);
* after the boot delay starts ``sshd -D`` chrooted into the guest root,
  listening on 127.0.0.N:22, and reports ``booted`` to ``tart run``.

In every mode it writes the persistent guest log (``.faketart/guest.log``).

Protocol with ``tart run``: commands on stdin (``poweroff``, ``ip ADDR``;
EOF = ``tart run`` is gone), events on stdout (``booted ADDR``,
``rebooting``, ``ip-changed ADDR``, ``poweroff``).  Exit status 0 means the
guest powered itself off; anything else is a fake failure (see console.log).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback

from . import guest_tools, linuxsys, storage
from . import knobs as _knobs

SHARES_ROOT = "/Volumes/My Shared Files"
DEFAULT_TAG = "com.apple.virtio-fs.automount"
CONTROL_FIFO = "/run/faketart/control"
GUEST_LOG = "/var/log/faketart/unified.log"
DISK_STATE = "/var/db/faketart/disk.json"  # read by the guest's `diskutil`
CLOCK_STATE = "/var/db/faketart/clock.json"  # read by the guest's `date` and `sysctl`
BROKEN_SHARES = "/var/db/faketart/broken-virtiofs"  # tags `mount_virtiofs` cannot mount

HEARTBEAT_PROCS = (
    ("kernel", 0, "(AppleSMC) heartbeat"),
    ("launchd", 1, "service inventory: 412 services"),
    (
        "loginwindow",
        156,
        "-[SessionAgentNotificationCenter sendDistributedNotification:] heartbeat",
    ),
    ("mDNSResponder", 289, "mDNS_Execute: network configuration unchanged"),
    ("tart-guest-agent", 312, "rpc: idle"),
)


def fmt_ts(us: int) -> str:
    sec, frac = divmod(us, 1_000_000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(sec)) + f".{frac:06d}+0000"


class GuestLog:
    """Append-only guest log: one syslog-style line per event, each with seq=N."""

    def __init__(self, path: str):
        self.path = path
        self.seq = 0
        self.last_us = 0
        self._scan_tail()
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        os.fchmod(self.fd, 0o644)
        self.rate = 0.0
        self.next_due = 0.0
        self.hb = 0

    def _scan_tail(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - 8192))
                tail = f.read().splitlines()
        except OSError:
            return
        for line in reversed(tail):
            text = line.decode("utf-8", "replace")
            i = text.find(" seq=")
            if i < 0:
                continue
            try:
                self.seq = int(text[i + 5 :].split()[0])
                t = time.strptime(text[:19], "%Y-%m-%d %H:%M:%S")
                import calendar

                self.last_us = calendar.timegm(t) * 1_000_000 + int(text[20:26])
            except (ValueError, IndexError):
                continue
            return

    def _line(self, proc: str, pid: int, msg: str) -> bytes:
        now = time.time_ns() // 1000
        self.last_us = max(now, self.last_us + 1)
        self.seq += 1
        return f"{fmt_ts(self.last_us)}  localhost {proc}[{pid}]: seq={self.seq} {msg}\n".encode()

    def event(self, msg: str, proc: str = "kernel", pid: int = 0) -> None:
        os.write(self.fd, self._line(proc, pid, msg))

    def set_rate(self, rate: float) -> None:
        rate = max(0.0, float(rate or 0))
        if rate != self.rate:
            self.rate = rate
            self.next_due = time.monotonic() + (1.0 / rate if rate else 0)

    def tick(self) -> float:
        """Write due heartbeat lines; return seconds until the next one."""
        if self.rate <= 0:
            return 1.0
        now = time.monotonic()
        if now < self.next_due:
            return self.next_due - now
        n = int((now - self.next_due) * self.rate) + 1
        n = min(n, int(self.rate * 5) + 1)  # never flood after a stall
        buf = []
        for _ in range(n):
            proc, pid, msg = HEARTBEAT_PROCS[self.hb % len(HEARTBEAT_PROCS)]
            self.hb += 1
            buf.append(self._line(proc, pid, msg))
        os.write(self.fd, b"".join(buf))
        self.next_due += n / self.rate
        if self.next_due < now:
            self.next_due = now + 1.0 / self.rate
        return max(0.0, self.next_due - time.monotonic())


def _join_groups(group_db: bytes, user: str, gids) -> bytes:
    """/etc/group with ``user`` added to the groups ``gids`` (the groups `tart run` has)."""
    wanted = {str(g) for g in gids or ()}
    lines = []
    for line in group_db.decode().splitlines():
        parts = line.split(":")
        if len(parts) == 4 and parts[2] in wanted:
            members = [m for m in parts[3].split(",") if m and m != user]
            parts[3] = ",".join([*members, user])
        lines.append(":".join(parts))
    return ("\n".join(lines) + "\n").encode()


class Guest:
    def __init__(self, spec: dict):
        self.spec = spec
        self.vm_dir = spec["vm_dir"]
        self.fake = os.path.join(self.vm_dir, ".faketart")
        self.addr = spec["addr"]
        self.ns = spec.get("mode") == "ns"
        self.merged = os.path.join(self.fake, "rootfs", "root")
        self.sshd: subprocess.Popen | None = None
        self.console = os.open(
            os.path.join(self.fake, "console.log"),
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
            0o644,
        )
        self.log = GuestLog(os.path.join(self.fake, "guest.log"))
        self.fifo_fd = -1
        self.userns_fd = -1
        self.stdin_buf = b""
        self.fifo_buf = b""
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)
        # a guest resumed from a saved state (its memory: clock, mounts), until it reboots
        self.resume = spec.get("resume")
        self.clock = {"boottime": time.time(), "offset": 0.0, "steps": 0}
        self.broken: set[str] = set()  # tags a restore left unmountable

    # -- helpers ----------------------------------------------------------
    def say(self, line: str) -> None:
        with contextlib.suppress(OSError):
            os.write(1, (line + "\n").encode())

    def note(self, msg: str) -> None:
        os.write(self.console, f"[faketart-guest {time.strftime('%H:%M:%S')}] {msg}\n".encode())

    def knobs(self) -> dict:
        s = self.spec
        return _knobs.for_vm(s["home"], s["name"], s.get("image_knobs"), s.get("image_source"))

    def gpath(self, p: str) -> str:
        full = os.path.normpath(self.merged + "/" + p.lstrip("/"))
        real = os.path.realpath(full)
        if real != self.merged and not real.startswith(self.merged + "/"):
            raise OSError(f"guest path {p!r} escapes the guest root")
        return real

    # -- the disk as `diskutil` sees it (macOS guests) ----------------------
    def disk_state(self) -> dict | None:
        """The disk's size (the disk file as `tart run` found it) and partition table."""
        table = storage.read_partitions(self.vm_dir)
        if table is None:
            return None
        size = os.stat(os.path.join(self.vm_dir, "disk.img")).st_size
        return {"disk": "disk0", "size": size, "partitions": table}

    def resize_container(self, part: str) -> None:
        """`diskutil apfs resizeContainer PART 0`: grow into the free space right after it."""
        disk = self.disk_state()
        if disk is None:
            return
        table = disk["partitions"]
        at = [p["id"] for p in table].index(part)
        if at != len(table) - 1:
            return  # another partition follows: nothing to grow into (diskutil reports it)
        table[at]["size"] = disk["size"] - sum(p["size"] for p in table[:at])
        storage.write_partitions(self.vm_dir, table)
        tmp = self.gpath(DISK_STATE) + ".tmp"
        with open(tmp, "w") as f:
            json.dump({**disk, "partitions": table}, f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.gpath(DISK_STATE))
        self.log.event(f"APFS container {part} resized to {table[at]['size']} bytes", "apfsd", 97)

    # -- root filesystem --------------------------------------------------
    def build_root(self) -> None:
        linuxsys.unshare(linuxsys.CLONE_NEWNS)
        linuxsys.mount(None, "/", None, linuxsys.MS_REC | linuxsys.MS_PRIVATE)
        base = os.path.join(self.fake, "rootfs")
        os.makedirs(base, exist_ok=True)
        linuxsys.mount(
            "faketart-guest",
            base,
            "tmpfs",
            linuxsys.MS_NOSUID | linuxsys.MS_NODEV,
            "mode=0755,size=1g",
        )
        for d in ("upper", "work", "root"):
            os.makedirs(os.path.join(base, d), exist_ok=True)
        old = os.getcwd()
        os.chdir(base)  # relative upper/work: no escaping problems in the option string
        try:
            linuxsys.mount(
                "faketart-root", self.merged, "overlay", 0, "lowerdir=/,upperdir=upper,workdir=work"
            )
        finally:
            os.chdir(old)
        self.populate()
        m = linuxsys
        m.mount("proc", self.gpath("/proc"), "proc", m.MS_NOSUID | m.MS_NODEV)
        m.bind("/dev", self.gpath("/dev"), recursive=True)
        m.mount(
            "shm", self.gpath("/dev/shm"), "tmpfs", m.MS_NOSUID | m.MS_NODEV, "mode=1777,size=64m"
        )
        m.mount("run", self.gpath("/run"), "tmpfs", m.MS_NOSUID | m.MS_NODEV, "mode=0755,size=64m")
        m.mount("tmp", self.gpath("/tmp"), "tmpfs", m.MS_NOSUID | m.MS_NODEV, "mode=1777,size=512m")
        for d, mode in (("/run/sshd", 0o755), ("/run/faketart", 0o755)):
            os.makedirs(self.gpath(d), exist_ok=True)
            os.chmod(self.gpath(d), mode)
        fifo = self.gpath(CONTROL_FIFO)
        os.mkfifo(fifo)
        os.chmod(fifo, 0o666)
        self.fifo_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self._fifo_keep = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # no EOF storms
        m.bind(os.path.join(self.fake, "home"), self.gpath(self.spec["guest_home"]))
        greeting = self.knobs().get("shell_greeting")
        if greeting:  # sshd runs ~/.ssh/rc before every command, its output first
            rc = self.gpath(self.spec["guest_home"] + "/.ssh/rc")
            os.makedirs(os.path.dirname(rc), exist_ok=True)
            quoted = "'" + str(greeting).replace("'", "'\\''") + "'"
            with open(rc, "w") as f:
                f.write(f"printf '%s' {quoted}\n")
        m.bind(os.path.join(self.fake, "guest.log"), self.gpath(GUEST_LOG), readonly=True)
        tags = self.spec.get("tags") or {}
        if self.resume is not None:
            self.restore_mounts()
        elif DEFAULT_TAG in tags and self.spec.get("os") == "darwin":
            self.mount_tag(DEFAULT_TAG, SHARES_ROOT)  # macOS automounts; Linux guests mount
            self.say(f"mounted {DEFAULT_TAG} {SHARES_ROOT}")

    def restore_mounts(self) -> None:
        """The shares the guest had mounted when it was saved: mounted again (the
        ``premounted_after_restore`` knob ``ok``), or left as empty directories whose tags
        cannot be mounted any more (``broken``, as UTM #7025 reports for macOS guests)."""
        mounts = self.resume.get("mounts") or []
        for mt in mounts:
            os.makedirs(self.gpath(mt["dir"]), exist_ok=True)
        if self.resume.get("broken"):
            self.broken = {mt["tag"] for mt in mounts}
            path = self.gpath(BROKEN_SHARES)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write("".join(f"{mt['tag']}\n" for mt in mounts))
            os.chmod(path, 0o644)
            return
        for mt in mounts:
            try:
                self.mount_tag(mt["tag"], mt["dir"])
                self.say(f"mounted {mt['tag']} {mt['dir']}")
            except OSError as e:
                self.log.event(f"virtiofs: {mt['tag']}: {e}", "kernel", 0)

    def populate(self) -> None:
        s = self.spec
        user, uid, gid, home = s["user"], s["uid"], s["gid"], s["guest_home"]
        files: dict[str, tuple[bytes, int]] = {}

        def edit_db(path: str, line: str, uid_field: int | None) -> bytes:
            try:
                with open(path) as f:
                    lines = f.read().splitlines()
            except OSError:
                lines = []
            keep = []
            for ln in lines:
                parts = ln.split(":")
                if parts and parts[0] == user:
                    continue
                if (
                    uid_field is not None
                    and len(parts) > uid_field
                    and parts[uid_field] == str(uid)
                ):
                    continue
                keep.append(ln)
            keep.append(line)
            return ("\n".join(keep) + "\n").encode()

        files["/etc/passwd"] = (
            edit_db("/etc/passwd", f"{user}:x:{uid}:{gid}:{user}:{home}:/bin/bash", 2),
            0o644,
        )
        files["/etc/group"] = (
            _join_groups(edit_db("/etc/group", f"{user}:x:{gid}:", 2), user, s.get("groups")),
            0o644,
        )
        files["/etc/shadow"] = (
            edit_db("/etc/shadow", f"{user}:{s['password_hash']}:19700:0:99999:7:::", None),
            0o640,
        )
        files["/etc/sudoers.d/admin-nopasswd"] = (
            f"{user} ALL=(ALL) NOPASSWD: ALL\n".encode(),
            0o440,
        )
        with open(os.path.join(self.fake, "ssh_host_ed25519_key"), "rb") as f:
            files["/etc/ssh/faketart_host_ed25519_key"] = (f.read(), 0o600)
        with open(os.path.join(self.fake, "ssh_host_ed25519_key.pub"), "rb") as f:
            files["/etc/ssh/faketart_host_ed25519_key.pub"] = (f.read(), 0o644)
        files["/etc/ssh/sshd_config"] = (self.sshd_config().encode(), 0o644)

        files["/etc/faketart-guest.json"] = (
            json.dumps(
                {
                    "name": s["name"],
                    "os": s["os"],
                    "user": user,
                    "tags": sorted((s.get("tags") or {}).keys()),
                    "cpu": s.get("cpu"),
                    "memory": s.get("memory"),
                }
            ).encode(),
            0o644,
        )
        disk = self.disk_state()
        if disk is not None:
            files[DISK_STATE] = (json.dumps(disk).encode(), 0o644)
        for path, body in guest_tools.load(s["guest_python"], s["os"]).items():
            files[path] = (body, 0o755)
        dirs = [
            SHARES_ROOT,
            os.path.dirname(home),
            home,
            os.path.dirname(GUEST_LOG),
            "/etc/sudoers.d",
            "/usr/local/bin",
        ]
        touch = [GUEST_LOG]
        remove = ["/etc/nologin", "/etc/ssh/sshd_config.d"]
        if s["os"] == "darwin":
            remove += guest_tools.NOT_ON_MACOS
        traverse = s.get("guest_python_traverse") or []

        pid = os.fork()
        if pid == 0:  # pragma: no cover - child, chrooted into the guest root
            code = 1
            try:
                os.chroot(self.merged)
                os.chdir("/")
                os.umask(0o022)
                for d in dirs:
                    os.makedirs(d, exist_ok=True)
                for p in remove:
                    if os.path.islink(p) or os.path.isfile(p):
                        os.unlink(p)
                    elif os.path.isdir(p):
                        import shutil

                        shutil.rmtree(p)
                for p in touch:
                    open(p, "ab").close()
                for p, (data, mode) in files.items():
                    os.makedirs(os.path.dirname(p), exist_ok=True)
                    if os.path.islink(p) or os.path.exists(p):
                        os.unlink(p)
                    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
                    os.write(fd, data)
                    os.fchmod(fd, mode)
                    os.close(fd)
                for d in traverse:
                    st = os.stat(d)
                    os.chmod(d, st.st_mode | 0o005)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError("populating the guest root failed")

    def mount_tag(self, tag: str, guest_dir: str) -> None:
        shares = (self.spec.get("tags") or {}).get(tag)
        if not shares:
            raise OSError(f"no virtio-fs device with tag {tag!r}")
        target = self.gpath(guest_dir)
        if len(shares) == 1 and not shares[0].get("name"):
            self._share_mount(shares[0]["path"], target, shares[0].get("ro", False))
            return
        # Built aside, then moved into place in one step: whoever sees the mount point
        # mounted (mountpoint(1), as mount_virtiofs waits) sees every share in it.
        stage = tempfile.mkdtemp(prefix="share-", dir=self.gpath("/run/faketart"))
        linuxsys.mount(
            "virtiofs", stage, "tmpfs", linuxsys.MS_NOSUID | linuxsys.MS_NODEV, "mode=0755,size=1m"
        )
        for sh in shares:
            sub = os.path.join(stage, sh["name"])
            os.makedirs(sub, exist_ok=True)
            self._share_mount(sh["path"], sub, sh.get("ro", False))
        linuxsys.mount(
            None,
            stage,
            None,
            linuxsys.MS_BIND
            | linuxsys.MS_REMOUNT
            | linuxsys.MS_RDONLY
            | linuxsys.MS_NOSUID
            | linuxsys.MS_NODEV,
        )
        linuxsys.mount(stage, target, None, linuxsys.MS_MOVE)
        with contextlib.suppress(OSError):
            os.rmdir(stage)  # busy where propagation keeps a copy of the move: harmless

    def _share_mount(self, source: str, target: str, ro: bool) -> None:
        if not self.spec.get("share_idmap", True):
            linuxsys.bind(source, target, readonly=ro, recursive=True)
            return
        try:
            if self.userns_fd < 0:
                self.userns_fd = linuxsys.make_userns_fd(
                    self.spec["uid"], self.spec["gid"], self.gpath("/proc")
                )
            linuxsys.idmapped_bind(source, target, self.userns_fd, readonly=ro)
        except OSError as e:
            self.note(f"idmapped mount of {source} failed ({e}); using a plain bind mount")
            linuxsys.bind(source, target, readonly=ro, recursive=True)

    def sshd_config(self) -> str:
        return "\n".join(
            [
                "# faketart guest sshd",
                f"ListenAddress {self.addr}:22",
                "AddressFamily inet",
                "HostKey /etc/ssh/faketart_host_ed25519_key",
                "PidFile none",
                "UsePAM no",
                "PasswordAuthentication yes",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin no",
                "PermitEmptyPasswords no",
                "StrictModes no",
                "UseDNS no",
                "PrintMotd no",
                "PrintLastLog no",
                "X11Forwarding no",
                "AllowTcpForwarding yes",
                "AcceptEnv LANG LC_*",
                "SetEnv PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
                "Subsystem sftp internal-sftp",
                "MaxStartups 100:30:200",
                f"MaxSessions {int(self.knobs().get('max_sessions') or 10)}",
                "",
            ]
        )

    # -- sshd ------------------------------------------------------------
    def start_sshd(self) -> None:
        if not self.ns:
            return
        with open(self.gpath("/etc/ssh/sshd_config"), "w") as f:
            f.write(self.sshd_config())
        merged = self.merged

        def pre() -> None:
            os.chroot(merged)
            os.chdir("/")

        self.sshd = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-e", "-f", "/etc/ssh/sshd_config"],
            preexec_fn=pre,  # noqa: PLW1509 - single-threaded
            stdin=subprocess.DEVNULL,
            stdout=self.console,
            stderr=self.console,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
        )
        want = "{:02X}00007F:0016".format(int(self.addr.rsplit(".", 1)[1]))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.sshd.poll() is not None:
                raise RuntimeError(
                    f"sshd exited with status {self.sshd.returncode} (see console.log)"
                )
            try:
                with open("/proc/net/tcp") as f:
                    for ln in f:
                        parts = ln.split()
                        if len(parts) > 3 and parts[1] == want and parts[3] == "0A":
                            return
            except OSError:
                pass
            time.sleep(0.01)
        raise RuntimeError("sshd did not start listening within 15 s")

    def kill_guest_processes(self) -> None:
        """Kill everything in the guest but us (PID 1), then reap."""
        if not self.ns:
            return
        proc = self.gpath("/proc")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            others = [int(p) for p in os.listdir(proc) if p.isdigit() and p != "1"]
            alive = []
            for p in others:
                try:
                    with open(f"{proc}/{p}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                            alive.append(p)
                except OSError:
                    continue
            self.reap()
            if not alive:
                break
            for p in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
            time.sleep(0.01)
        self.sshd = None
        self.reap()

    def reap(self) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    # -- main ------------------------------------------------------------
    def wait(self, seconds: float) -> str | None:
        """Sleep *seconds* while serving commands; returns a command that must end the wait."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return None
            cmd = self.poll_once(min(left, self.log.tick()))
            if cmd:
                return cmd

    def poll_once(self, timeout: float) -> str | None:
        fds = [0, self.wake_r] + ([self.fifo_fd] if self.fifo_fd >= 0 else [])
        try:
            r, _, _ = select.select(fds, [], [], max(0.0, min(timeout, 0.5)))
        except InterruptedError:
            r = []
        if self.wake_r in r:
            with contextlib.suppress(BlockingIOError):
                os.read(self.wake_r, 4096)
        self.reap()
        if 0 in r:
            data = os.read(0, 4096)
            if not data:
                return "lost-parent"
            self.stdin_buf += data
        if self.fifo_fd in r:
            with contextlib.suppress(BlockingIOError):
                self.fifo_buf += os.read(self.fifo_fd, 4096)
        for attr in ("stdin_buf", "fifo_buf"):
            buf = getattr(self, attr)
            if b"\n" in buf:
                line, _, rest = buf.partition(b"\n")
                setattr(self, attr, rest)
                return line.decode(errors="replace").strip() or None
        return None

    def boot(self) -> str | None:
        if self.resume is not None:
            # the guest's memory as it was saved: no boot, and the wall clock stood still
            # while the VM was suspended (kern.boottime is the golden's boot)
            saved = self.spec.get("clock") or {}
            self.clock = {
                "boottime": float(saved.get("boottime", time.time())),
                "offset": float(saved.get("offset", 0.0)),
                "steps": 0,
            }
            self.write_clock()
            self.log.event("faketart guest resumed from a saved state", "kernel", 0)
            self.resume = None  # a reboot from here on is a boot
        else:
            self.clock = {"boottime": time.time(), "offset": 0.0, "steps": 0}
            self.write_clock()
            self.log.event("BOOT_TIME: faketart guest is booting", "kernel", 0)
            cmd = self.wait(float(self.spec.get("boot_delay") or 0))
            if cmd:
                return cmd
        self.start_sshd()
        self.log.event(f"guest is up, sshd listening on {self.addr}:22", "sshd", 200)
        self.say(f"booted {self.addr}")
        return None

    # -- the wall clock (`date`, `sysctl kern.boottime`) -------------------------
    def write_clock(self) -> None:
        """Publish the clock to the guest's tools and to `tart run` (the saved memory)."""
        if self.ns:
            path = self.gpath(CLOCK_STATE)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.chmod(os.path.dirname(path), 0o755)
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.clock, f)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        self.say(f"clock {self.clock['boottime']!r} {self.clock['offset']!r}")

    def set_clock(self, when: float) -> None:
        """settimeofday(2): the boot time moves with the wall clock, as XNU's
        ``clock_set_calendar_microtime`` moves it (osfmk/kern/clock.c)."""
        delta = when - (time.time() + self.clock["offset"])
        self.clock["offset"] += delta
        self.clock["boottime"] += delta
        self.clock["steps"] += 1
        self.write_clock()
        self.log.event(f"clock: wall time stepped by {delta:+.3f} s", "kernel", 0)

    def pause(self) -> None:
        """The VM is paused to be saved: every guest process stops, and so does this one
        until `tart run` kills the guest (or goes away)."""
        self.log.event("faketart: the virtual machine is paused to save its state", "kernel", 0)
        if self.ns:
            proc = self.gpath("/proc")
            for _ in range(3):  # processes forked meanwhile are caught on the next pass
                for p in os.listdir(proc):
                    if p.isdigit() and p != "1":
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(p), signal.SIGSTOP)
        while True:
            try:
                data = os.read(0, 4096)
            except InterruptedError:
                continue
            if not data:
                os._exit(0)

    def handle(self, cmd: str) -> bool:
        """Handle one command; False means power off now."""
        word, _, arg = cmd.partition(" ")
        if word in ("poweroff", "halt", "lost-parent"):
            return False
        if word == "pause":
            self.pause()
        if word == "clock-set":
            with contextlib.suppress(ValueError):
                self.set_clock(float(arg))
            return True
        if word == "reboot":
            self.log.event("reboot requested by guest", "shutdown", 1)
            self.say("rebooting")
            self.kill_guest_processes()
            nxt = self.boot()
            return nxt is None or self.handle(nxt)
        if word == "ip" and arg:
            self.log.event(f"network: address changed from {self.addr} to {arg}", "configd", 77)
            self.kill_guest_processes()
            self.addr = arg
            self.start_sshd()
            self.say(f"ip-changed {arg}")
            return True
        if word == "resize-container" and self.ns:
            with contextlib.suppress(OSError, ValueError):
                self.resize_container(arg)
            return True
        if word == "mount" and self.ns:
            tag, _, gdir = arg.partition(" ")
            if tag in self.broken:
                self.log.event(f"mount_virtiofs: {tag}: the share is gone", "mount_virtiofs", 90)
                return True
            try:
                # `sudo mkdir` cannot make a root-owned mount point here (the fake's sudo
                # does not gain root), so the mount point is made for it.
                os.makedirs(self.gpath(gdir), exist_ok=True)
                self.mount_tag(tag, gdir)
                self.log.event(f"mount_virtiofs: mounted {tag} at {gdir}", "mount_virtiofs", 90)
                self.say(f"mounted {tag} {gdir}")
            except OSError as e:
                self.log.event(f"mount_virtiofs: {tag}: {e}", "mount_virtiofs", 90)
            return True
        self.note(f"unknown command {cmd!r}")
        return True

    def run(self) -> int:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
        if self.ns:
            self.build_root()
        self.log.set_rate(self.knobs().get("log_rate", 2))
        nxt = self.boot()
        if nxt and not self.handle(nxt):
            return self.poweroff()
        last_knobs = time.monotonic()
        while True:
            now = time.monotonic()
            if now - last_knobs >= 0.5:
                self.log.set_rate(self.knobs().get("log_rate", 2))
                last_knobs = now
            cmd = self.poll_once(self.log.tick())
            if cmd and not self.handle(cmd):
                return self.poweroff()

    def poweroff(self) -> int:
        self.log.event("SHUTDOWN_TIME: system will power off now", "shutdown", 1)
        self.say("poweroff")
        return 0


def main() -> None:
    spec_path = sys.argv[1]
    with open(spec_path) as f:
        spec = json.load(f)
    try:
        g = Guest(spec)
    except BaseException:
        traceback.print_exc()
        os._exit(70)
    try:
        code = g.run()
    except BaseException as e:  # report and die; tart run turns this into an error
        g.note("guest init failed:\n" + traceback.format_exc())
        g.say(f"error {type(e).__name__}: {e}")
        code = 70
    os._exit(code)
