"""Contract tests for the fake Tart host (tests/faketart, docs/fake-tart.md).

They pin the fake to tart-cli.md: grammar, outputs, error texts, exit codes,
lock semantics, the macOS VM limit, failure knobs, and real SSH guests.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import plistlib
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.faketart.faketart.run import group_shares, parse_dir
from tests.faketart.fixtures import (
    LINUX_IMAGE,
    MACOS_IMAGE,
    FakeTart,
    ensure_user,
    fake_tart_for_user,
    needs_guest_reason,
    pid_alive,
    read_calls,
)

GUEST_REASON = needs_guest_reason()
needs_guest = pytest.mark.skipif(GUEST_REASON is not None, reason=GUEST_REASON or "")

USAGE_TAIL = re.compile(r"\nUsage: tart \w+.*\n  See 'tart \w+ --help' for more information\.\n\Z")


def wait_for(pred, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def read_until(proc: subprocess.Popen, needle: bytes, timeout: float = 10.0) -> bytes:
    """Read proc.stdout (binary) until *needle* shows up; returns what was read."""
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while needle not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{needle!r} not seen in {buf[-2000:]!r}")
        r, _, _ = select.select([fd], [], [], left)
        if r:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"EOF before {needle!r}: {buf[-2000:]!r}")
            buf += chunk
    return buf


def usage_error(r: subprocess.CompletedProcess, message: str) -> None:
    assert r.returncode == 64, (r.returncode, r.stderr)
    assert r.stderr.startswith(f"Error: {message}\n"), r.stderr
    assert USAGE_TAIL.search(r.stderr), r.stderr


# ---------------------------------------------------------------------------
# Global CLI behaviour


def test_version_default_and_override(fake_tart: FakeTart):
    r = fake_tart.tart("--version")
    assert (r.returncode, r.stdout, r.stderr) == (0, "2.35.0\n", "")
    r = fake_tart.tart("--version", env=fake_tart.env(FAKETART_VERSION="2.31.0"))
    assert r.stdout == "2.31.0\n"


def test_flags_and_texts_follow_the_tart_version(fake_tart: FakeTart):
    """Each flag exists from the Tart version that added it (Tart's git history)."""
    fake_tart.make_vm("mac")

    def at(version: str, *args: str) -> subprocess.CompletedProcess:
        return fake_tart.tart(*args, env=fake_tart.env(FAKETART_VERSION=version))

    for version, args, unknown in [
        ("2.15.0", ["run", "mac", "--root-disk-opts=ro"], "--root-disk-opts"),
        ("2.22.4", ["run", "mac", "--net-softnet-expose", "2222:22"], "--net-softnet-expose"),
        ("2.29.0", ["run", "mac", "--net-softnet-block=10.0.0.0/8"], "--net-softnet-block"),
        ("2.9.1", ["set", "mac", "--random-mac"], "--random-mac"),
    ]:
        usage_error(at(version, *args), f"Unknown option '{unknown}'")
    assert at("2.10.0", "set", "mac", "--random-mac").returncode == 0
    r = at("2.26.1", "exec", "mac", "true")
    assert r.returncode == 64 and r.stderr.startswith("Error: Unexpected argument 'exec'\n")
    # caching= arrived in 2.21.0; 2.16-2.20 skip it without a word
    bad = ["run", "mac", "--root-disk-opts=caching=bogus", "--no-graphics"]
    r = at("2.21.0", *bad)
    assert (r.returncode, r.stderr) == (1, 'unsupported disk image caching mode: "bogus"\n')
    limit = {"FAKETART_MAX_MACOS_VMS": "0", "FAKETART_GUEST": "none"}
    r = fake_tart.tart(*bad, env=fake_tart.env(FAKETART_VERSION="2.18.0", **limit))
    assert r.returncode == 1 and "caching" not in r.stderr  # it got as far as the VM limit
    # the VM limit: Virtualization.framework's own text before 2.18.1
    assert r.stderr == (
        'Error: Error Domain=VZErrorDomain Code=6 "The maximum supported number of active '
        'virtual machines has been reached." UserInfo={NSLocalizedFailure=The number of '
        "virtual machines exceeds the limit., NSLocalizedFailureReason=The maximum supported "
        "number of active virtual machines has been reached.}\n"
    )
    r = fake_tart.tart("run", "mac", env=fake_tart.env(FAKETART_VERSION="2.18.1", **limit))
    assert r.stderr == "The number of VMs exceeds the system limit\n"


def test_help_exits_zero(fake_tart: FakeTart):
    for args in (["--help"], ["help", "run"], ["run", "--help"], ["clone", "-h"]):
        r = fake_tart.tart(*args)
        assert r.returncode == 0 and "USAGE: tart" in r.stdout, (args, r)


def test_unknown_subcommand_and_options(fake_tart: FakeTart):
    r = fake_tart.tart("frobnicate")
    assert r.returncode == 64 and r.stderr.startswith("Error: Unexpected argument 'frobnicate'\n")
    usage_error(fake_tart.tart("list", "--bogus"), "Unknown option '--bogus'")
    usage_error(fake_tart.tart("run", "vm", "--x=1"), "Unknown option '--x'")
    r = fake_tart.tart("clone", "only-one")
    usage_error(r, "Missing expected argument '<new-name>'")
    assert "Help:  <new-name>" in r.stderr
    usage_error(fake_tart.tart("ip", "vm", "--wait"), "Missing value for '--wait <wait>'")
    usage_error(
        fake_tart.tart("ip", "vm", "--wait", "soon"),
        "The value 'soon' is invalid for '--wait <wait>'",
    )
    usage_error(fake_tart.tart("get", "a", "b"), "Unexpected argument 'b'")
    usage_error(
        fake_tart.tart("list", "--format", "xml"),
        "The value 'xml' is invalid for '--format <format>'. Please provide one of 'text' and "
        "'json'.",
    )


def test_flag_value_forms_are_equivalent(fake_tart: FakeTart):
    fake_tart.make_vm("vm")
    a = fake_tart.tart("get", "vm", "--format=json")
    b = fake_tart.tart("get", "--format", "json", "vm")
    assert a.returncode == b.returncode == 0
    assert json.loads(a.stdout) == json.loads(b.stdout)
    # a repeated single-value option keeps the last value
    c = fake_tart.tart("get", "vm", "--format", "json", "--format", "text")
    assert c.stdout.startswith("OS ")


def test_call_recording(fake_tart: FakeTart):
    env = fake_tart.env(
        TART_REGISTRY_USERNAME="robot",
        TART_REGISTRY_PASSWORD="s3cr3t-value",
        USER="ci",
        LOGNAME="ci",
    )
    fake_tart.tart("list", "--format", "json", env=env, cwd="/")
    fake_tart.tart("--version")
    calls = read_calls(fake_tart.home)
    assert [c["argv"] for c in calls] == [["list", "--format", "json"], ["--version"]]
    c = calls[0]
    assert c["cwd"] == "/" and c["uid"] == os.getuid() and c["gid"] == os.getgid()
    assert c["env"]["TART_HOME"] == str(fake_tart.home)
    assert c["env"]["USER"] == "ci" and c["env"]["LOGNAME"] == "ci" and c["env"]["CI"] == "true"
    assert c["env"]["PATH"].split(os.pathsep)[0] == str(fake_tart.bin_dir)
    assert set(c["env"]) == {
        "HOME",
        "USER",
        "LOGNAME",
        "PATH",
        "TART_HOME",
        "CI",
        "TART_NO_AUTO_PRUNE",
    }
    assert c["env"]["TART_NO_AUTO_PRUNE"] is None
    assert c["secrets_set"] == {
        "TART_REGISTRY_USERNAME": True,
        "TART_REGISTRY_PASSWORD": True,
        "TART_REGISTRY_HOSTNAME": False,
    }
    assert calls[1]["secrets_set"]["TART_REGISTRY_PASSWORD"] is False
    assert isinstance(c["time"], float)
    assert "s3cr3t-value" not in (fake_tart.home / "faketart-calls.jsonl").read_text()
    assert fake_tart.calls_of("list") == [["list", "--format", "json"]]


def test_tmp_garbage_collection(fake_tart: FakeTart):
    stale = fake_tart.home / "tmp" / "LEFTOVER"
    stale.mkdir(parents=True)
    fake_tart.tart("pull", "localname")  # pull and clone skip the GC
    assert stale.exists()
    fake_tart.tart("list")
    assert not stale.exists()


# ---------------------------------------------------------------------------
# pull / clone / registry


def test_pull_output_and_cache_layout(fake_tart: FakeTart):
    ref = "ghcr.io/cirruslabs/ubuntu:latest"
    r = fake_tart.tart("pull", "ghcr.io/cirruslabs/ubuntu")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"pulling {ref}...",
        "pulling manifest...",
        "pulling disk (1.0 GB compressed)...",
        "0%",
        "100%",
        "pulling NVRAM...",
    ]
    repo = fake_tart.home / "cache" / "OCIs" / "ghcr.io" / "cirruslabs" / "ubuntu"
    link = repo / "latest"
    assert link.is_symlink() and re.fullmatch(r"sha256:[0-9a-f]{64}", os.readlink(link))
    digest_dir = repo / os.readlink(link)
    assert {p.name for p in digest_dir.iterdir()} >= {
        "config.json",
        "disk.img",
        "nvram.bin",
        "manifest.json",
    }
    # one pull gives two OCI rows
    names = fake_tart.tart("list", "--source", "oci", "-q").stdout.split()
    assert names == [
        "ghcr.io/cirruslabs/ubuntu:latest",
        f"ghcr.io/cirruslabs/ubuntu@{os.readlink(link)}",
    ]
    # pulling again: manifest fetched, nothing downloaded
    r = fake_tart.tart("pull", ref)
    assert r.stdout.splitlines() == [
        f"pulling {ref}...",
        "pulling manifest...",
        f"ghcr.io/cirruslabs/ubuntu@{os.readlink(link)} image is already cached and linked!",
    ]
    # the tag moves on the registry: a new digest is pulled, the old one is garbage-collected
    old = os.readlink(link)
    fake_tart.add_image(ref, os="linux", disk=30)
    r = fake_tart.tart("pull", ref)
    assert "pulling disk (1.0 GB compressed)..." in r.stdout
    assert os.readlink(link) != old and not (repo / old).exists()
    # a local name
    r = fake_tart.tart("pull", "myvm")
    assert (r.returncode, r.stdout) == (0, '"myvm" is a local image, nothing to pull here!\n')
    usage_error(
        fake_tart.tart("pull", ref, "--concurrency", "0"),
        "network concurrency cannot be less than 1",
    )


def test_pull_progress_rewrites_lines_without_ci(fake_tart: FakeTart):
    # two ~1.1 s pulls side by side: with CI one line per update, without CI ANSI rewrites
    refs = [
        fake_tart.add_image(f"{host}/acme/slow", os="linux", download_size=1000, pull_speed=900)
        for host in ("ghcr.io", "quay.io")  # one host each: pulls from one host take turns
    ]
    procs = [
        subprocess.Popen(
            [str(fake_tart.tart_path), "pull", ref],
            env=fake_tart.env(ci=ci),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for ref, ci in zip(refs, (False, True), strict=True)
    ]
    (tty_out, _), (ci_out, _) = (p.communicate(timeout=30) for p in procs)
    assert [p.returncode for p in procs] == [0, 0]
    lines = tty_out.decode().split("\n")
    assert lines[3] == "0%"
    rewrites = [ln for ln in lines if ln.startswith("\x1b[1A\r\x1b[J")]
    assert rewrites[-1] == "\x1b[1A\r\x1b[J100%" and len(rewrites) >= 2  # 0% -> ~90% -> 100%
    text = ci_out.decode()
    assert "\x1b" not in text and re.search(r"^0%\n\d+%\n100%\n", text, re.M)


def _staging(fake: FakeTart, ref: str) -> Path:
    return fake.home / "tmp" / hashlib.md5(ref.encode()).hexdigest()


def _allocated(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def _locked(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_pull_stages_in_tmp_and_pulls_of_one_host_take_turns(fake_tart: FakeTart):
    # VMStorageOCI.pull: tmp/<md5 of the name> grows with the download; the second pull from
    # the same host prints "waiting for lock..." and nothing else until the first is done
    slow = fake_tart.add_image(
        "ghcr.io/acme/big",
        os="linux",
        disk=30,
        download_size=10_000,
        pull_speed=20,
        disk_used=32 * 1024 * 1024,
    )  # 0.2 % a second: the percent stays at 0 while bytes arrive
    other = fake_tart.add_image("ghcr.io/acme/small", os="linux", download_size=100)
    first = subprocess.Popen(
        [str(fake_tart.tart_path), "pull", slow],
        env=fake_tart.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stage = _staging(fake_tart, slow)
    try:
        head1 = read_until(first, b"0%\n")
        assert json.loads((stage / "config.json").read_text())["os"] == "linux"
        assert (stage / "disk.img").stat().st_size == 30_000_000_000  # truncated up front
        grown = wait_for(lambda: _allocated(stage / "disk.img") >= 64 * 1024, what="bytes")
        assert _locked(stage)
        second = subprocess.Popen(
            [str(fake_tart.tart_path), "pull", other],
            env=fake_tart.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        head2 = read_until(second, b"waiting for lock...\n")
        wait_for(lambda: _allocated(stage / "disk.img") > grown, what="more bytes")
        assert second.poll() is None
        fake_tart.add_image(
            "ghcr.io/acme/big",
            os="linux",
            disk=30,
            download_size=10_000,
            pull_speed=5_000,
            disk_used=32 * 1024 * 1024,
        )  # the line gets faster during the pull
        out1 = head1 + first.communicate(timeout=30)[0]
        out2 = head2 + second.communicate(timeout=30)[0]
    finally:
        first.kill()
        first.communicate()
    lines = out1.decode().splitlines()
    percents = lines[lines.index("0%") : lines.index("pulling NVRAM...")]
    assert percents[-1] == "100%" and len(percents) == len(set(percents)), lines
    assert out2.decode().splitlines() == [
        f"pulling {other}...",
        "pulling manifest...",
        "waiting for lock...",
        "pulling disk (0.0 GB compressed)...",
        "0%",
        "100%",
        "pulling NVRAM...",
    ]
    assert not stage.exists(), "the staged pull moved into the cache"
    cached = fake_tart.home / "cache" / "OCIs" / "ghcr.io" / "acme" / "big" / "latest"
    assert _allocated(cached / "disk.img") >= 32 * 1024 * 1024
    # cancelled (SIGINT) the staging goes; killed it stays until a command's tmp/ sweep
    fake_tart.add_image("ghcr.io/acme/big:2", os="linux", download_size=10_000, pull_speed=50)
    for sig in (signal.SIGINT, signal.SIGKILL):
        proc = subprocess.Popen(
            [str(fake_tart.tart_path), "pull", "ghcr.io/acme/big:2"],
            env=fake_tart.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        read_until(proc, b"0%\n")
        proc.send_signal(sig)
        _, err_out = proc.communicate(timeout=10)
        left = _staging(fake_tart, "ghcr.io/acme/big:2")
        if sig == signal.SIGINT:
            assert (proc.returncode, err_out) == (1, b"Error: CancellationError()\n")
            assert not left.exists()
        else:
            assert left.exists() and not _locked(left)
    fake_tart.tart("list")
    assert not left.exists()


def test_prune_keeps_the_most_recently_used_within_the_budget(fake_tart: FakeTart):
    # Commands/Prune.swift (2.35.0): caches = OCI images by digest and IPSW files, newest first;
    # each one that does not fit what is left of the budget goes, and the walk goes on
    mib = 1024 * 1024
    refs = [
        fake_tart.add_image(f"ghcr.io/acme/{n}", os="linux", disk_used=600 * mib)
        for n in ("old", "mid", "new")
    ]
    for ref in refs:
        assert fake_tart.tart("pull", ref).returncode == 0
    ipsws = fake_tart.home / "cache" / "IPSWs"
    ipsws.mkdir(parents=True)
    (ipsws / "UniversalMac_15.2_Restore.ipsw").write_bytes(b"\1" * mib)
    fake_tart.make_vm("vm", LINUX_IMAGE)
    repo = fake_tart.home / "cache" / "OCIs" / "ghcr.io" / "acme"
    digests = {ref: repo / ref.split("/")[-1].split(":")[0] / "latest" for ref in refs}
    now = time.time()
    for age, path in [(300, digests[refs[0]]), (200, digests[refs[1]]), (100, digests[refs[2]])]:
        os.utime(path.resolve(), (now - age, now - age))
    os.utime(ipsws / "UniversalMac_15.2_Restore.ipsw", (now - 900, now - 900))

    usage_error(fake_tart.tart("prune"), "at least one pruning criteria must be specified")
    usage_error(
        fake_tart.tart("prune", "--entries", "images", "--older-than", "1"),
        'unsupported --entries value, please specify either "caches" or "vms"',
    )
    r = fake_tart.tart("prune", "--cache-budget", "1")
    assert (r.returncode, r.stderr) == (
        0,
        "--cache-budget is deprecated, please use --space-budget\n",
    )
    names = fake_tart.tart("list", "--source", "oci", "-q").stdout.split()
    assert [n for n in names if ":" in n.split("/")[-1] and "@" not in n] == [refs[2]]
    assert not digests[refs[0]].exists() and not digests[refs[1]].exists()
    assert (ipsws / "UniversalMac_15.2_Restore.ipsw").exists(), "old but small: it still fits"
    assert fake_tart.vm_dir("vm").exists(), "caches never include local VMs"
    # --older-than: by access date
    r = fake_tart.tart("prune", "--older-than", "0")
    assert r.returncode == 0 and not (ipsws / "UniversalMac_15.2_Restore.ipsw").exists()
    assert fake_tart.tart("list", "--source", "oci", "-q").stdout == ""
    assert fake_tart.vm_dir("vm").exists()
    r = fake_tart.tart("prune", "--entries", "vms", "--older-than", "0")
    assert r.returncode == 0 and not fake_tart.vm_dir("vm").exists()


def test_pull_errors(fake_tart: FakeTart):
    r = fake_tart.tart("pull", "ghcr.io/cirruslabs/nope:latest")
    assert r.returncode == 1
    assert r.stderr.startswith(
        'Error: UnexpectedHTTPStatusCode(when: "pulling manifest", code: 404, details: '
    )
    assert r.stdout.splitlines() == [
        "pulling ghcr.io/cirruslabs/nope:latest...",
        "pulling manifest...",
    ]
    r = fake_tart.tart("clone", "unknown.example.com/x/y:1", "vm")
    assert (
        r.returncode == 1 and "A server with the specified hostname could not be found" in r.stderr
    )


def test_registry_credentials(fake_tart: FakeTart):
    ref = fake_tart.add_image(
        "registry.acme.test:5000/team/private-macos",
        os="darwin",
        credentials={"username": "robot", "password": "hunter2-secret"},
    )
    r = fake_tart.tart("pull", ref)
    assert r.returncode == 1 and "code: 401" in r.stderr, r.stderr
    bad = fake_tart.env(TART_REGISTRY_USERNAME="robot", TART_REGISTRY_PASSWORD="wrong-pass")
    r = fake_tart.tart("pull", ref, env=bad)
    assert r.returncode == 1 and r.stderr.startswith("Error: AuthFailed(") and "401" in r.stderr
    assert "wrong-pass" not in r.stderr + r.stdout
    good = fake_tart.env(TART_REGISTRY_USERNAME="robot", TART_REGISTRY_PASSWORD="hunter2-secret")
    scoped_elsewhere = dict(good, TART_REGISTRY_HOSTNAME="ghcr.io")
    r = fake_tart.tart("pull", ref, env=scoped_elsewhere)
    assert r.returncode == 1 and "code: 401" in r.stderr
    scoped_here = dict(good, TART_REGISTRY_HOSTNAME="registry.acme.test:5000")
    r = fake_tart.tart("clone", ref, "vm", env=scoped_here)
    assert r.returncode == 0, r.stderr
    assert "hunter2-secret" not in r.stdout + r.stderr
    assert (
        fake_tart.home
        / "cache"
        / "OCIs"
        / "registry.acme.test%3A5000"
        / "team"
        / "private-macos"
        / "latest"
    ).is_symlink()


def test_pull_failure_knob(fake_tart: FakeTart):
    ref = fake_tart.add_image("ghcr.io/acme/flaky:latest", os="linux", knobs={"pull_fail_at": 50})
    r = fake_tart.tart("pull", ref)
    assert r.returncode == 1
    assert r.stdout.splitlines()[-2:] == ["0%", "50%"]
    assert r.stderr.startswith("Error: Error Domain=NSURLErrorDomain Code=-1005")
    assert fake_tart.tart("list", "-q").stdout == ""
    # the control file overrides the image: failure now at 10 %, with our own message
    fake_tart.set_image_knobs("ghcr.io/acme/*", pull_fail_at=10, pull_fail_message="Error: boom")
    r = fake_tart.tart("clone", ref, "vm")
    assert (r.returncode, r.stderr, r.stdout.splitlines()[-1]) == (1, "Error: boom\n", "10%")


def test_pull_stall_knob(fake_tart: FakeTart):
    ref = fake_tart.add_image(
        "ghcr.io/acme/stuck:latest", os="linux", download_size=100, pull_speed=400
    )
    fake_tart.set_image_knobs(ref, pull_stall_at=40)
    proc = subprocess.Popen(
        [str(fake_tart.tart_path), "pull", ref],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=fake_tart.env(),
    )
    try:
        read_until(proc, b"40%\n")
        # the whole pull would take 0.25 s: it must make no progress and not exit
        r, _, _ = select.select([proc.stdout], [], [], 0.75)
        assert not r and proc.poll() is None
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def test_clone_semantics(fake_tart: FakeTart):
    r = fake_tart.tart("clone", MACOS_IMAGE, "a")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert (
        lines[0] == "pulling manifest..." and lines[-1] == "pulling NVRAM..."
    )  # no "pulling NAME..." line
    vm = fake_tart.vm_dir("a")
    cfg = fake_tart.config("a")
    assert {
        "version",
        "os",
        "arch",
        "cpuCountMin",
        "cpuCount",
        "memorySizeMin",
        "memorySize",
        "macAddress",
        "display",
        "diskFormat",
    } <= set(cfg)
    assert (cfg["os"], cfg["arch"], cfg["memorySize"], cfg["diskFormat"]) == (
        "darwin",
        "arm64",
        8192 * 2**20,
        "raw",
    )
    assert cfg["macAddress"] == "7e:3a:51:00:00:01"  # the image's MAC is kept for the first clone
    st = os.stat(vm / "disk.img")
    assert st.st_size == 50_000_000_000 and st.st_blocks * 512 < 10_000_000  # sparse
    assert (vm / "nvram.bin").is_file()
    # cached: prints nothing; the MAC is now taken by "a" so "b" gets a new one
    r = fake_tart.tart("clone", MACOS_IMAGE, "b")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert fake_tart.config("b")["macAddress"] != cfg["macAddress"]
    # a local source; an existing target is silently overwritten
    (fake_tart.vm_dir("b") / "marker").write_text("old")
    r = fake_tart.tart("clone", "a", "b")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert not (fake_tart.vm_dir("b") / "marker").exists()
    assert fake_tart.config("b")["macAddress"] != cfg["macAddress"]
    # errors
    usage_error(fake_tart.tart("clone", "a", "x/y"), "<new-name> should be a local name")
    usage_error(
        fake_tart.tart("clone", "a", "c", "--concurrency=0"),
        "network concurrency cannot be less than 1",
    )
    r = fake_tart.tart("clone", "missing", "c")
    assert (r.returncode, r.stderr) == (2, 'the specified VM "missing" does not exist\n')
    # clone by digest of a cached image; --prune-limit/--insecure accepted
    digest = os.readlink(fake_tart.home / "cache/OCIs/ghcr.io/cirruslabs/macos-sequoia-base/latest")
    r = fake_tart.tart(
        "clone",
        f"ghcr.io/cirruslabs/macos-sequoia-base@{digest}",
        "d",
        "--prune-limit",
        "5",
        "--insecure",
    )
    assert (r.returncode, r.stdout) == (0, "")
    r = fake_tart.tart("fqn", MACOS_IMAGE)
    assert r.stdout == f"ghcr.io/cirruslabs/macos-sequoia-base@{digest}\n"


def test_clone_failure_knob(fake_tart: FakeTart):
    fake_tart.tart("pull", LINUX_IMAGE)
    fake_tart.set_knobs("doomed-*", clone_failure={"message": "Error: disk full", "exit_code": 3})
    r = fake_tart.tart("clone", LINUX_IMAGE, "doomed-1")
    assert (r.returncode, r.stderr) == (3, "Error: disk full\n")
    assert not fake_tart.vm_dir("doomed-1").exists()
    assert fake_tart.tart("clone", LINUX_IMAGE, "fine").returncode == 0
    fake_tart.set_image_knobs(LINUX_IMAGE, clone_failure=True)
    r = fake_tart.tart("clone", LINUX_IMAGE, "fine2")
    assert r.returncode == 1 and r.stderr.startswith(
        "Error: Error Domain=NSCocoaErrorDomain Code=640"
    )


def test_clone_holds_the_tart_home_lock_while_it_copies(fake_tart: FakeTart):
    """Clone.swift: the copy and the move into vms/ happen under the $TART_HOME flock; a
    clone that is killed (no SIGTERM handler) leaves no VM and releases the lock."""
    fake_tart.tart("pull", LINUX_IMAGE)
    fake_tart.set_knobs("slow-*", clone_seconds=30)

    def locked() -> bool:
        fd = os.open(fake_tart.home, os.O_RDONLY)
        try:
            return _flock_held(fd)
        finally:
            os.close(fd)

    slow = subprocess.Popen(
        [str(fake_tart.tart_path), "clone", LINUX_IMAGE, "slow-1"],
        env=fake_tart.env(),
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not locked():
            assert slow.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        other = subprocess.Popen(
            [str(fake_tart.tart_path), "clone", LINUX_IMAGE, "quick"],
            env=fake_tart.env(),
            stdin=subprocess.DEVNULL,
        )
        with pytest.raises(subprocess.TimeoutExpired):
            other.wait(timeout=0.5)  # waits for the lock
        slow.terminate()
        assert slow.wait(timeout=10) == -signal.SIGTERM
        assert other.wait(timeout=20) == 0
    finally:
        slow.kill()
        slow.wait()
    assert not fake_tart.vm_dir("slow-1").exists()
    assert fake_tart.vm_dir("quick").is_dir()


def test_login_logout(fake_tart: FakeTart):
    fake_tart.set_host("registry.acme.test", credentials={"username": "u", "password": "p4ss"})
    ref = fake_tart.add_image("registry.acme.test/team/img", os="linux")
    usage_error(
        fake_tart.tart("login", "registry.acme.test", "--username", "u"),
        "both --username and --password-stdin are required",
    )
    r = fake_tart.tart(
        "login", "registry.acme.test", "--username", "u", "--password-stdin", input="nope\n"
    )
    assert (
        r.returncode == 1
        and r.stderr.startswith("invalid credentials: ")
        and "nope" not in r.stderr
    )
    assert fake_tart.tart("pull", ref).returncode == 1
    r = fake_tart.tart(
        "login", "registry.acme.test", "--username", "u", "--password-stdin", input="p4ss\n"
    )
    assert r.returncode == 0, r.stderr
    assert fake_tart.tart("pull", ref).returncode == 0
    r = fake_tart.tart(
        "login", "other.test", "--username", "x", "--password-stdin", "--no-validate", input="y"
    )
    assert r.returncode == 0
    assert fake_tart.tart("logout", "registry.acme.test").returncode == 0
    assert fake_tart.tart("logout", "never-logged-in.test").returncode == 0
    fake_tart.tart("delete", ref)
    assert fake_tart.tart("pull", ref).returncode == 1


# ---------------------------------------------------------------------------
# set / get / list / delete / rename


def test_set_and_get(fake_tart: FakeTart):
    fake_tart.make_vm("m", MACOS_IMAGE)
    fake_tart.make_vm("l", LINUX_IMAGE)
    mac = fake_tart.config("m")["macAddress"]
    r = fake_tart.tart(
        "set", "m", "--cpu", "6", "--memory=16384", "--display", "1920x1080px", "--random-mac"
    )
    assert r.returncode == 0, r.stderr
    g = json.loads(fake_tart.tart("get", "m", "--format", "json").stdout)
    assert g == {
        "OS": "darwin",
        "CPU": 6,
        "Memory": 16384,
        "Disk": 50,
        "DiskFormat": "raw",
        "Size": g["Size"],
        "Display": "1920x1080px",
        "Running": False,
        "State": "stopped",
    }
    assert re.fullmatch(r"\d+\.\d{3}", g["Size"])
    assert fake_tart.config("m")["memorySize"] == 16384 * 1024 * 1024
    assert fake_tart.config("m")["macAddress"] != mac
    text = fake_tart.tart("get", "m").stdout.splitlines()
    assert text[0].split() == [
        "OS",
        "CPU",
        "Memory",
        "Disk",
        "DiskFormat",
        "Size",
        "Display",
        "State",
    ]
    assert text[1].split()[:4] == ["darwin", "6", "16384", "50"]
    # a 0 keeps the old value; display-refit quirk
    fake_tart.tart("set", "m", "--display", "x900", "--display-refit")
    assert fake_tart.config("m")["display"] == {"width": 1920, "height": 900, "unit": "px"}
    assert fake_tart.config("m")["displayRefit"] is True
    fake_tart.tart("set", "m")
    assert "displayRefit" not in fake_tart.config("m")
    # macOS minimums
    r = fake_tart.tart("set", "m", "--cpu", "2")
    assert (r.returncode, r.stderr) == (
        1,
        "Error: LessThanMinimalResourcesError: VM should have 4 CPU cores at minimum (requested "
        "2)\n",
    )
    r = fake_tart.tart("set", "m", "--memory", "300", "--cpu", "8")
    assert (r.returncode, r.stderr) == (
        1,
        "Error: LessThanMinimalResourcesError: VM should have 4294967296 bytes of memory at "
        "minimum (requested 314572800)\n",
    )
    assert fake_tart.config("m")["cpuCount"] == 6, "nothing is saved when a value is refused"
    # Linux: only Virtualization.framework's floor
    assert fake_tart.tart("set", "l", "--cpu", "1", "--memory", "512").returncode == 0
    r = fake_tart.tart("set", "l", "--memory", "64")
    assert "VM should have 134217728 bytes of memory at minimum (requested 67108864)" in r.stderr
    r = fake_tart.tart("set", "l", "--cpu", "0")
    assert "VM should have 1 CPU cores at minimum (requested 0)" in r.stderr
    # disk: grow only
    assert fake_tart.tart("set", "m", "--disk-size", "80").returncode == 0
    assert os.stat(fake_tart.vm_dir("m") / "disk.img").st_size == 80_000_000_000
    assert fake_tart.tart("set", "m", "--disk-size", "80").returncode == 0
    r = fake_tart.tart("set", "m", "--disk-size", "40")
    assert (r.returncode, r.stderr) == (
        1,
        "new disk size of 40GB should be larger than the current disk size of 80GB\n",
    )
    usage_error(
        fake_tart.tart("set", "m", "--cpu", "70000"),
        "The value '70000' is invalid for '--cpu <cpu>'",
    )
    r = fake_tart.tart("set", "nope", "--cpu", "4")
    assert (r.returncode, r.stderr) == (2, 'the specified VM "nope" does not exist\n')
    r = fake_tart.tart("get", "nope")
    assert r.returncode == 2


def test_list_formats(fake_tart: FakeTart):
    r = fake_tart.tart("list")
    assert (r.returncode, r.stdout) == (0, "\n")
    assert (
        fake_tart.tart("list", "--format", "json").stdout.split() == ["[]"]
        or json.loads(fake_tart.tart("list", "--format", "json").stdout) == []
    )
    assert fake_tart.tart("list", "-q").stdout == ""
    fake_tart.make_vm("zeta", LINUX_IMAGE)
    fake_tart.make_vm("alpha")
    fake_tart.tart("pull", LINUX_IMAGE)
    rows = json.loads(fake_tart.tart("list", "--format", "json").stdout)
    assert [(r["Source"], r["Name"]) for r in rows][:3] == [
        ("local", "alpha"),
        ("local", "zeta"),
        ("OCI", "ghcr.io/cirruslabs/ubuntu:latest"),
    ]
    assert rows[3]["Name"].startswith("ghcr.io/cirruslabs/ubuntu@sha256:")
    for row in rows:
        assert set(row) == {"Source", "Name", "Disk", "Size", "Accessed", "Running", "State"}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row["Accessed"])
        assert row["State"] == "stopped" and row["Running"] is False
    assert rows[0]["Disk"] == 50 and rows[1]["Disk"] == 20
    assert fake_tart.tart("list", "--source", "local", "--quiet").stdout == "alpha\nzeta\n"
    assert len(json.loads(fake_tart.tart("list", "--source=oci", "--format=json").stdout)) == 2
    text = fake_tart.tart("list").stdout.splitlines()
    assert text[0].split() == ["Source", "Name", "Disk", "Size", "Accessed", "State"]
    assert text[1].split()[:2] == ["local", "alpha"] and text[1].endswith("stopped")
    usage_error(fake_tart.tart("list", "--source", "cloud"), "'cloud' is not a valid <source>")


def test_delete_rename_fqn(fake_tart: FakeTart):
    for n in ("a", "b", "c"):
        fake_tart.make_vm(n, LINUX_IMAGE)
    r = fake_tart.tart("delete", "a", "missing", "b")
    assert (r.returncode, r.stderr) == (2, 'the specified VM "missing" does not exist\n')
    assert (
        not fake_tart.vm_dir("a").exists() and fake_tart.vm_dir("b").exists()
    )  # first error stops
    assert fake_tart.tart("delete", "b", "c").returncode == 0
    # incomplete bundle
    (fake_tart.home / "vms" / "broken").mkdir()
    r = fake_tart.tart("get", "broken")
    assert (r.returncode, r.stderr) == (
        1,
        "VM is missing some of its files (config.json, disk.img or nvram.bin)\n",
    )
    # OCI entries
    fake_tart.tart("pull", LINUX_IMAGE)
    assert fake_tart.tart("delete", LINUX_IMAGE).returncode == 0
    assert fake_tart.tart("list", "--source", "oci", "-q").stdout == ""  # the digest dir was gc'ed
    # rename
    fake_tart.make_vm("x", LINUX_IMAGE)
    fake_tart.make_vm("y", LINUX_IMAGE)
    usage_error(
        fake_tart.tart("rename", "nope", "z"), "failed to rename a non-existent local VM: nope"
    )
    usage_error(
        fake_tart.tart("rename", "x", "y"),
        "failed to rename VM x, target VM y already exists, delete it first!",
    )
    assert fake_tart.tart("rename", "x", "z").returncode == 0 and fake_tart.vm_dir("z").exists()
    assert fake_tart.tart("fqn", "z").stdout == "z\n"


# ---------------------------------------------------------------------------
# run: grammar and validation (no guest is booted)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--graphics"], "--graphics and --no-graphics are mutually exclusive"),
        (["--vnc", "--vnc-experimental"], "--vnc and --vnc-experimental are mutually exclusive"),
        (
            ["--capture-system-keys"],
            "--captures-system-keys can only be used with the default VM view",
        ),
        (
            ["--net-bridged", "en0", "--net-softnet"],
            "--net-bridged, --net-softnet and --net-host are mutually exclusive",
        ),
        (
            ["--net-host", "--net-softnet-allow", "10.0.0.0/8"],
            "--net-bridged, --net-softnet and --net-host are mutually exclusive",
        ),
        (
            ["--net-bridged=en0", "--net-host"],
            "--net-bridged, --net-softnet and --net-host are mutually exclusive",
        ),
        (
            ["--net-softnet-expose", "2222:22", "--net-bridged", "en1"],
            "--net-bridged, --net-softnet and --net-host are mutually exclusive",
        ),
        (
            ["--suspendable", "--no-keyboard"],
            "--suspendable cannot be used with --no-trackpad, --no-pointer or --no-keyboard",
        ),
        (
            ["--dir", "/tmp", "--dir", "b:/tmp"],
            "invalid --dir syntax: for multiple directory shares each one of them should be named",
        ),
        (
            ["--net-bridged", "wlan9"],
            'no bridge interfaces matched "["wlan9"]", available interfaces: ["en0", "en1"]',
        ),
    ],
)
def test_run_validation_errors(fake_tart: FakeTart, args, message):
    fake_tart.make_vm("vm")
    usage_error(fake_tart.tart("run", "vm", "--no-graphics", *args), message)
    assert fake_tart.running_vms() == {}


def test_run_vm_dependent_validation(fake_tart: FakeTart):
    fake_tart.make_vm("lin", LINUX_IMAGE)
    usage_error(fake_tart.tart("run", "lin", "--suspendable"), "You can only suspend macOS VMs")
    r = fake_tart.tart("run", "missing-vm", "--no-graphics")
    assert (r.returncode, r.stderr) == (1, 'Error: the specified VM "missing-vm" does not exist\n')
    # bridged interfaces come from FAKETART_BRIDGE_INTERFACES (BSD or display names)
    env = fake_tart.env(FAKETART_BRIDGE_INTERFACES="en7=Thunderbolt Bridge")
    usage_error(
        fake_tart.tart("run", "lin", "--net-bridged", "en0", env=env),
        'no bridge interfaces matched "["en0"]", available interfaces: ["en7"]',
    )


def test_run_start_time_errors(fake_tart: FakeTart, tmp_path: Path):
    fake_tart.make_vm("vm", LINUX_IMAGE)
    r = fake_tart.tart("run", "vm", "--net-softnet", env=fake_tart.env(softnet=False))
    assert (r.returncode, r.stderr) == (
        1,
        'Error: InitializationFailed(why: "softnet not found in PATH")\n',
    )
    r = fake_tart.tart("run", "vm", "--net-host", env=fake_tart.env(softnet=False))
    assert r.returncode == 1 and "softnet not found in PATH" in r.stderr
    r = fake_tart.tart("run", "vm", "--root-disk-opts", "ro,sync=sometimes")
    assert (r.returncode, r.stderr) == (
        1,
        'unsupported disk image synchronization mode: "sometimes"\n',
    )
    r = fake_tart.tart("run", "vm", "--root-disk-opts=caching=maybe")
    assert (r.returncode, r.stderr) == (1, 'unsupported disk image caching mode: "maybe"\n')
    r = fake_tart.tart("run", "vm", "--dir", f"data:{tmp_path}/does-not-exist:ro")
    assert r.returncode == 1 and r.stderr.startswith("Error: Error Domain=VZErrorDomain Code=2")
    assert "does-not-exist" in r.stderr
    r = fake_tart.tart("run", "vm", "--disk", f"{tmp_path}/nope.img:ro")
    assert r.returncode == 1 and "couldn\u2019t be opened because there is no such file" in r.stderr
    usage_error(
        fake_tart.tart("run", "vm", "--disk", "/isos/debian-12-amd64.iso"),
        "/isos/debian-12-amd64.iso: x86_64 (amd64) ISO images cannot be booted on Apple Silicon, "
        "use an arm64 image instead",
    )
    disk = tmp_path / "extra.img"
    disk.write_bytes(b"\0" * 512)
    import fcntl

    with open(disk, "rb+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        r = fake_tart.tart("run", "vm", "--disk", f"{disk}:sync=none")
        assert (r.returncode, r.stderr) == (
            1,
            f"disk {disk} seems to be already in use, unmount it first in Finder\n",
        )
    assert fake_tart.running_vms() == {}


def test_dir_grammar(tmp_path: Path):
    home = os.path.expanduser("~")
    s = parse_dir("~/src")
    assert (s.name, s.path, s.ro, s.tag) == (
        None,
        os.path.join(home, "src"),
        False,
        "com.apple.virtio-fs.automount",
    )
    s = parse_dir("build:~/src/build")
    assert (s.name, s.path) == ("build", os.path.join(home, "src/build"))
    s = parse_dir("sources:/src:ro")
    assert (s.name, s.path, s.ro) == ("sources", "/src", True)
    s = parse_dir("/build:ro,tag=build")
    assert (s.name, s.path, s.ro, s.tag) == (None, "/build", True, "build")
    s = parse_dir("/src:rw", cwd="/work")  # unknown options are not consumed
    assert (s.name, s.path) == ("/src", "/work/rw")
    s = parse_dir("rel/dir", cwd="/work")
    assert s.path == "/work/rel/dir"
    s = parse_dir("https://example.com/a.tar.gz:ro,tag=x")
    assert (s.url, s.path, s.ro, s.tag) == (True, "https://example.com/a.tar.gz", True, "x")
    g = group_shares(
        [parse_dir("a:/x"), parse_dir("b:/y"), parse_dir("a:/z"), parse_dir("/w:tag=t")]
    )
    assert [(s.name, s.path) for s in g["com.apple.virtio-fs.automount"]] == [
        ("b", "/y"),
        ("a", "/z"),
    ]
    assert [(s.name, s.path) for s in g["t"]] == [(None, "/w")]


# ---------------------------------------------------------------------------
# run: lifecycle, locks, signals


@needs_guest
def test_run_lock_stop_and_states(fake_tart: FakeTart):
    fake_tart.make_vm("vm")
    vm, ip = fake_tart.start_vm("vm")
    assert re.fullmatch(r"127\.0\.0\.\d+", ip)
    assert fake_tart.running_vms() == {"vm": vm.pid}
    rows = json.loads(fake_tart.tart("list", "--format", "json").stdout)
    assert (rows[0]["Running"], rows[0]["State"]) == (True, "running")
    assert json.loads(fake_tart.tart("get", "vm", "--format", "json").stdout)["State"] == "running"
    r = fake_tart.tart("run", "vm", "--no-graphics")
    assert (r.returncode, r.stderr) == (2, 'VM "vm" is already running!\n')
    r = fake_tart.tart("delete", "vm")
    assert (r.returncode, r.stderr) == (1, 'VM "vm" is running\n')
    assert fake_tart.tart("ip", "vm").stdout == f"{ip}\n"
    # set has no running check and keeps the lock (config.json is rewritten in place)
    assert fake_tart.tart("set", "vm", "--cpu", "8").returncode == 0
    assert fake_tart.running_vms() == {"vm": vm.pid}
    r = fake_tart.tart("stop", "vm")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert vm.wait() == 0
    assert vm.stdout == "Stopping VM...\n" and vm.stderr == ""
    assert fake_tart.running_vms() == {}
    assert fake_tart.guest_gone(ip)
    r = fake_tart.tart("stop", "vm")
    assert (r.returncode, r.stderr) == (2, 'VM "vm" is not running\n')
    assert fake_tart.tart("delete", "vm").returncode == 0


@needs_guest
def test_macos_guest_grows_its_apfs_container_into_a_grown_disk(fake_tart: FakeTart):
    """`tart set --disk-size` grows only the disk file; `diskutil apfs resizeContainer`
    in the guest claims the space, unless a recovery container follows (vanilla images)."""
    fake_tart.make_vm("base")
    fake_tart.make_vm("vanilla", "ghcr.io/cirruslabs/macos-sequoia-vanilla:latest")
    for name in ("base", "vanilla"):
        assert fake_tart.tart("set", name, "--disk-size", "60").returncode == 0

    def partitions(ip: str) -> dict[str, int]:
        out = fake_tart.ssh(ip, "diskutil list -plist physical")
        (disk,) = plistlib.loads(out.stdout.encode())["AllDisksAndPartitions"]
        assert disk["Size"] == 60_000_000_000
        return {p["DeviceIdentifier"]: p["Size"] for p in disk["Partitions"]}

    vm, ip = fake_tart.start_vm("base")
    before = partitions(ip)
    assert before["disk0s2"] == 50_000_000_000 - 524_288_000  # the image's size
    refused = fake_tart.ssh(ip, "diskutil apfs resizeContainer disk0s2 0")
    assert refused.returncode == 1 and "root" in refused.stderr
    repaired = fake_tart.ssh(ip, "yes | sudo diskutil repairDisk disk0")
    assert repaired.returncode == 0 and "Finished partition map repair" in repaired.stdout
    grown = fake_tart.ssh(ip, "sudo diskutil apfs resizeContainer disk0s2 0")
    assert grown.returncode == 0, grown.stderr
    assert partitions(ip)["disk0s2"] == 60_000_000_000 - 524_288_000
    vm.signal(signal.SIGINT)
    vm.wait(10)
    vm, ip = fake_tart.start_vm("base")  # the partition table is on the disk: it persists
    assert partitions(ip)["disk0s2"] == 60_000_000_000 - 524_288_000
    vm.signal(signal.SIGINT)
    vm.wait(10)

    vm, ip = fake_tart.start_vm("vanilla")
    blocked = fake_tart.ssh(ip, "sudo diskutil apfs resizeContainer disk0s2 0")
    assert blocked.returncode == 1 and "-69519" in blocked.stderr
    assert set(partitions(ip)) == {"disk0s1", "disk0s2", "disk0s3"}


def test_leaked_macos_slots_lower_the_limit(fake_tart: FakeTart):
    """openai/tart#1217, #445: slots of VMs that are gone stay taken until the host reboots;
    Tart then reports the limit while fewer VMs run."""
    env = fake_tart.env(FAKETART_GUEST="none")
    for name in ("a", "b"):
        fake_tart.make_vm(name)
    fake_tart.set_host_state(leaked_macos_slots=1)
    first = fake_tart.run_vm("a", env=env)
    wait_for(lambda: fake_tart.running_vms().get("a"), what="a to run")
    r = fake_tart.tart("run", "b", "--no-graphics", env=env)
    assert (r.returncode, r.stderr) == (
        1,
        "The number of VMs exceeds the system limit (other running VMs: a)\n",
    )
    first.signal(signal.SIGINT)
    first.wait(10)


def test_run_builds_the_vm_before_it_takes_the_vm_lock(fake_tart: FakeTart):
    """Run.swift: $TART_HOME is locked while the VM is built; only then is the VM locked
    (running), and a `tart delete` in between finds a stopped VM."""
    fake_tart.make_vm("vm")
    fake_tart.set_knobs("vm", init_seconds=30)
    vm = fake_tart.run_vm("vm", env=fake_tart.env(FAKETART_GUEST="none"))
    try:
        home_lock = os.open(fake_tart.home, os.O_RDONLY)
        try:
            wait_for(
                lambda: _flock_held(home_lock), what="tart run to lock $TART_HOME while it builds"
            )
        finally:
            os.close(home_lock)
        assert fake_tart.running_vms() == {}
        rows = json.loads(fake_tart.tart("list", "--format", "json").stdout)
        assert rows[0]["State"] == "stopped"
    finally:
        vm.kill()
        vm.wait(10)


def _flock_held(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


@needs_guest
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_hard_kill_releases_lock_and_guest(fake_tart: FakeTart, sig):
    fake_tart.make_vm("vm")
    vm, ip = fake_tart.start_vm("vm")
    guest_pid = fake_tart.runtime("vm")["guest_pid"]
    assert fake_tart.port_open(ip)
    vm.signal(sig)
    assert vm.wait() == -sig
    assert vm.stdout == "" and fake_tart.running_vms() == {}
    assert fake_tart.tart("list", "--format", "json").stdout.count('"stopped"') == 1
    wait_for(lambda: not pid_alive(guest_pid), what="the guest to die with tart run")
    wait_for(lambda: fake_tart.guest_gone(ip), what="sshd to go away")
    # a leftover of the crashed run never blocks the next one
    vm2, ip2 = fake_tart.start_vm("vm")
    assert fake_tart.ssh(ip2, "true").returncode == 0
    vm2.kill()


@needs_guest
def test_stop_timeout_escalates_to_sigkill(fake_tart: FakeTart):
    fake_tart.make_vm("vm", LINUX_IMAGE)
    vm, _ = fake_tart.start_vm("vm")
    fake_tart.set_knobs("vm", stop_hang=True)
    t0 = time.monotonic()
    r = fake_tart.tart("stop", "vm", "-t", "1")
    assert r.returncode == 0 and 0.9 < time.monotonic() - t0 < 5
    assert vm.wait() == -signal.SIGKILL and vm.stdout == "Stopping VM...\n"
    vm2, _ = fake_tart.start_vm("vm")
    assert fake_tart.tart("stop", "vm", "--timeout=0").returncode == 0
    assert vm2.wait() == -signal.SIGKILL and vm2.stdout == ""


@needs_guest
def test_ip_resolvers_and_knobs(fake_tart: FakeTart):
    fake_tart.make_vm("mac", "ghcr.io/cirruslabs/macos-sequoia-vanilla:latest")  # no guest agent
    fake_tart.make_vm("lin", LINUX_IMAGE)
    r = fake_tart.tart("ip", "mac")
    assert (r.returncode, r.stderr) == (1, "no IP address found, is your VM running?\n")
    r = fake_tart.tart("ip", "nope")
    assert r.returncode == 2
    fake_tart.set_knobs("mac", boot_delay=0.6, no_ip_for=0.6)
    vm = fake_tart.run_vm("mac")
    wait_for(lambda: fake_tart.running_vms().get("mac"), what="the lock")
    r = fake_tart.tart("ip", "mac")
    assert (r.returncode, r.stderr) == (1, "no IP address found\n")  # running, but no lease yet
    t0 = time.monotonic()
    r = fake_tart.tart("ip", "mac", "--wait", "10")
    assert r.returncode == 0 and 0.9 <= time.monotonic() - t0 < 4, (r, time.monotonic() - t0)
    ip = r.stdout.strip()
    assert fake_tart.tart("ip", "mac", "--resolver", "arp").stdout == f"{ip}\n"
    r = fake_tart.tart("ip", "mac", "--resolver=agent")
    assert (r.returncode, r.stderr) == (
        1,
        "no IP address found (also make sure that Guest agent for Tart is running inside of a "
        "VM)\n",
    )
    r = fake_tart.tart("ip", "lin", "--resolver", "arp")
    assert r.stderr == (
        "no IP address found, is your VM running? "
        "(not all Linux distributions are compatible with the ARP resolver)\n"
    )
    usage_error(
        fake_tart.tart("ip", "mac", "--resolver", "mdns"),
        "The value 'mdns' is invalid for '--resolver <resolver>'. Please provide one of 'dhcp', "
        "'arp' and 'agent'.",
    )
    assert fake_tart.tart("stop", "mac").returncode == 0
    assert vm.wait() == 0
    # like vmnet's DHCP, the lease outlives the VM: dhcp still answers, arp does not
    assert fake_tart.tart("ip", "mac").stdout == f"{ip}\n"
    assert fake_tart.tart("ip", "mac", "--resolver", "arp").returncode == 1
    fake_tart.set_knobs("lin", stale_lease=False)
    vm, lip = fake_tart.start_vm("lin", "--net-bridged", "en0")
    assert fake_tart.tart("ip", "lin").returncode == 1  # bridged: not in the host's lease table
    assert fake_tart.tart("ip", "lin", "--resolver", "arp").stdout == f"{lip}\n"
    vm.kill()


@needs_guest
def test_ip_change_knob(fake_tart: FakeTart):
    fake_tart.make_vm("vm", LINUX_IMAGE)
    fake_tart.set_knobs("vm", ip_change_after=0.3)
    vm, ip = fake_tart.start_vm("vm")
    new = wait_for(
        lambda: (fake_tart.runtime("vm").get("addr") != ip) and fake_tart.runtime("vm")["addr"],
        what="the address change",
    )
    assert fake_tart.tart("ip", "vm").stdout == f"{new}\n"
    assert fake_tart.ssh(new, "echo moved").stdout == "moved\n"
    assert fake_tart.guest_gone(ip)
    assert any("address changed" in ln for ln in fake_tart.guest_log("vm"))
    vm.kill()


@needs_guest
def test_macos_vm_limit(fake_tart: FakeTart):
    for n in ("m1", "m2", "m3"):
        fake_tart.make_vm(n)
    fake_tart.make_vm("lin", LINUX_IMAGE)
    v1, _ = fake_tart.start_vm("m1")
    vl, _ = fake_tart.start_vm("lin")
    v2, _ = fake_tart.start_vm("m2")  # the Linux guest does not count
    r = fake_tart.tart("run", "m3", "--no-graphics")
    assert (r.returncode, r.stdout) == (1, "")
    assert (
        r.stderr == "The number of VMs exceeds the system limit (other running VMs: lin, m1, m2)\n"
    )
    assert "m3" not in fake_tart.running_vms()
    v3, _ = fake_tart.start_vm("m3", env=fake_tart.env(FAKETART_MAX_MACOS_VMS="3"))
    assert sorted(fake_tart.running_vms()) == ["lin", "m1", "m2", "m3"]
    for v in (v1, v2, v3, vl):
        v.kill()
    r = fake_tart.tart("run", "m1", env=fake_tart.env(FAKETART_MAX_MACOS_VMS="0"))
    assert r.stderr == "The number of VMs exceeds the system limit\n"


@needs_guest
def test_crash_and_start_failure_knobs(fake_tart: FakeTart):
    # knobs carried by a registry image propagate to its clones
    ref = fake_tart.add_image(
        "ghcr.io/acme/crashy:1", os="linux", knobs={"crash_after": 0.3, "crash_exit_code": 3}
    )
    fake_tart.clone(ref, "vm")
    vm = fake_tart.run_vm("vm")
    assert vm.wait() == 3
    assert vm.stderr.startswith("Error: Error Domain=VZErrorDomain Code=1") and vm.stdout == ""
    assert fake_tart.running_vms() == {}
    fake_tart.remove_image(ref)  # the clone keeps the knobs it got at clone time
    fake_tart.set_knobs("vm", crash_exit_code=5, crash_message="")
    vm = fake_tart.run_vm("vm")
    assert (vm.wait(), vm.stderr) == (5, "")
    fake_tart.set_knobs(
        "vm", crash_after=None, start_failure={"message": "Error: no luck", "exit_code": 1}
    )
    r = fake_tart.tart("run", "vm", "--no-graphics")
    assert (r.returncode, r.stderr) == (1, "Error: no luck\n")
    fake_tart.clear_knobs()
    fake_tart.set_image_knobs("ghcr.io/acme/crashy:*", start_failure=True)
    r = fake_tart.tart("run", "vm", "--no-graphics")
    assert r.returncode == 1 and r.stderr.startswith(
        'Error: Error Domain=VZErrorDomain Code=1 "The virtual machine failed to start."'
    )


@needs_guest
def test_softnet_child(fake_tart: FakeTart):
    fake_tart.make_vm("vm", LINUX_IMAGE)
    vm, _ = fake_tart.start_vm(
        "vm", "--net-softnet-allow", "10.0.0.0/8,192.168.0.0/16", "--net-softnet-expose=2222:22"
    )
    rt = fake_tart.runtime("vm")
    mac = fake_tart.config("vm")["macAddress"]
    assert rt["network"] == "softnet"
    assert rt["softnet_argv"][1:] == [
        "--vm-fd",
        "0",
        "--vm-mac-address",
        mac,
        "--allow",
        "10.0.0.0/8,192.168.0.0/16",
        "--expose",
        "2222:22",
    ]
    assert rt["softnet_argv"][0] == str(fake_tart.softnet_dir / "softnet")
    assert pid_alive(rt["softnet_pid"])
    fake_tart.tart("stop", "vm")
    assert vm.wait() == 0
    assert not pid_alive(rt["softnet_pid"])
    vm, _ = fake_tart.start_vm("vm", "--net-host")
    assert fake_tart.runtime("vm")["softnet_argv"][-2:] == ["--vm-net-type", "host"]
    vm.kill()
    fake_tart.set_knobs("vm", softnet_exit_after=0.2)
    vm = fake_tart.run_vm("vm", "--net-softnet")
    assert vm.wait() == 1
    assert vm.stderr == (  # softnet's own error reaches tart run's stderr
        "failed to run proxy: vmnet interface went away\n"
        'Error: RuntimeFailed(why: "Softnet process terminated prematurely")\n'
    )


def test_softnet_needs_root_which_tart_gives_it_only_on_a_terminal():
    """Softnet.swift configureSUIDBitIfNeeded runs only when tart run's stdout is a tty."""
    import pty

    user = ensure_user("faketart-test")
    as_user = {"user": user.pw_uid, "group": user.pw_gid, "cwd": "/"}
    with fake_tart_for_user(user) as ft:
        env = ft.env(FAKETART_GUEST="none", PATH=os.pathsep.join(ft.path_dirs))  # no sudo
        subprocess.run(
            [str(ft.tart_path), "clone", LINUX_IMAGE, "vm"], env=env, check=True, **as_user
        )

        def run(stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess:
            argv = [str(ft.tart_path), "run", "vm", "--no-graphics", "--net-softnet"]
            return subprocess.run(
                argv, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True, **as_user
            )

        r = run()  # a pipe, as under a supervisor: softnet is started as it is, and fails
        assert r.returncode == 1
        assert r.stderr == (
            "root privileges are required to run and passwordless sudo was not available\n"
            'Error: RuntimeFailed(why: "Softnet process terminated prematurely")\n'
        )
        primary, secondary = pty.openpty()
        try:
            r = run(stdout=secondary)  # a terminal: tart sets softnet up through sudo first
        finally:
            os.close(primary)
            os.close(secondary)
        assert (r.returncode, r.stderr) == (
            1,
            'Error: InitializationFailed(why: "sudo not found in PATH")\n',
        )
        softnet = ft.softnet_dir / "softnet"
        softnet.chmod(0o4755)  # sudo chown root softnet && sudo chmod u+s softnet
        vm = subprocess.Popen(
            [str(ft.tart_path), "run", "vm", "--no-graphics", "--net-softnet"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            **as_user,
        )
        try:
            ft.wait_ip("vm", proc=vm)
            assert pid_alive(ft.runtime("vm")["softnet_pid"])
        finally:
            vm.kill()
            vm.communicate(timeout=10)


@pytest.mark.skipif(os.geteuid() != 0, reason="launchctl asuser needs root")
def test_launchctl_sessions_and_a_macos_guest_that_needs_one(fake_tart: FakeTart):
    """macOS 15.2+ guests start only in the GUI login session of the user running tart."""
    launchctl = str(fake_tart.host_dir / "launchctl")
    env = fake_tart.env(FAKETART_GUEST="none")

    def ask(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([launchctl, *args], env=env, capture_output=True, text=True)

    r = ask("print", "gui/4242")
    assert (r.returncode, r.stderr) == (
        113,
        "Bad request.\nCould not find domain for user gui: 4242\n",
    )
    fake_tart.login(4242)
    assert ask("print", "gui/4242").returncode == 0
    fake_tart.logout(4242)
    assert ask("print", "gui/4242").returncode == 113

    fake_tart.make_vm("mac")
    fake_tart.set_knobs("mac", needs_login_session=True)
    r = fake_tart.tart("run", "mac", "--no-graphics", env=env)
    assert r.returncode == 1 and r.stderr.startswith(
        'Error: Error Domain=VZErrorDomain Code=1 "The virtual machine failed to start."'
    )
    fake_tart.login(os.getuid())  # logged in, but a process must join the session
    assert fake_tart.tart("run", "mac", "--no-graphics", env=env).returncode == 1
    run = subprocess.Popen(
        [launchctl, "asuser", str(os.getuid()), str(fake_tart.tart_path), "run", "mac"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        fake_tart.wait_ip("mac", proc=run)
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.communicate(timeout=10)


@needs_guest
def test_mac_collision_on_run(fake_tart: FakeTart):
    fake_tart.make_vm("a", LINUX_IMAGE)
    fake_tart.make_vm("b", LINUX_IMAGE)
    cfg_b = fake_tart.config("b")
    cfg_b["macAddress"] = fake_tart.config("a")["macAddress"]
    (fake_tart.vm_dir("b") / "config.json").write_text(json.dumps(cfg_b))
    va, _ = fake_tart.start_vm("a")
    vb, _ = fake_tart.start_vm("b")
    assert fake_tart.config("b")["macAddress"] != fake_tart.config("a")["macAddress"]
    vb.kill()
    assert vb.stdout == (
        "There is already a running VM with the same MAC address!\n"
        "Resetting VM to assign a new MAC address...\n"
    )
    va.kill()


@needs_guest
def test_suspend_resume_and_sigusr2(fake_tart: FakeTart):
    fake_tart.make_vm("mac")
    vm, _ = fake_tart.start_vm("mac", "--suspendable")
    assert fake_tart.tart("suspend", "mac").returncode == 0
    assert vm.wait() == 0
    assert vm.stdout.splitlines() == [
        "pausing VM to take a snapshot...",
        "creating a snapshot...",
        "snapshot created successfully! shutting down the VM...",
    ]
    assert (
        json.loads(fake_tart.tart("get", "mac", "--format", "json").stdout)["State"] == "suspended"
    )
    vm, _ = fake_tart.start_vm("mac")
    assert vm.proc.poll() is None
    fake_tart.tart("stop", "mac")
    vm.wait()
    assert vm.stdout.splitlines() == [
        "restoring VM state from a snapshot...",
        "resuming VM...",
        "Stopping VM...",
    ]
    r = fake_tart.tart("suspend", "mac")
    assert (r.returncode, r.stderr) == (2, 'VM "VM "mac" is not running" is not running\n')
    # a stopped-but-suspended VM: stop just discards the snapshot
    (fake_tart.vm_dir("mac") / "state.vzvmsave").write_bytes(b"x")
    assert (
        fake_tart.tart("stop", "mac").returncode == 0
        and not (fake_tart.vm_dir("mac") / "state.vzvmsave").exists()
    )
    # SIGUSR2: macOS shows a dialog (nothing happens); a Linux guest shuts down
    fake_tart.make_vm("lin", LINUX_IMAGE)
    vm, _ = fake_tart.start_vm("lin")
    vm.signal(signal.SIGUSR2)
    assert vm.wait() == 0
    assert vm.stdout == "Requesting guest OS to stop...\nguest has stopped the virtual machine\n"


# ---------------------------------------------------------------------------
# Suspend and restore (Tart 2.35.0 / openai/tart 16d186c: Commands/Run.swift, Suspend.swift,
# Stop.swift, Clone.swift, Set.swift, VMDirectory.swift, VM.swift)

SAVE_LINES = [
    "pausing VM to take a snapshot...",
    "creating a snapshot...",
    "snapshot created successfully! shutting down the VM...",
]
RESTORE_LINES = ["restoring VM state from a snapshot...", "resuming VM..."]
RESTORE_FAILURE = (
    'Error Domain=VZErrorDomain Code=12 "The virtual machine failed to restore with error '
    '\u201cinvalid argument\u201d." UserInfo={NSLocalizedFailure=An error occurred while '
    "restoring the virtual machine., NSLocalizedFailureReason=The virtual machine failed to "
    "restore with error \u201cinvalid argument\u201d.}\n"
)
FAST_SAVE = {"suspend_seconds": 0.2, "resume_seconds": 0.2, "state_size": 32 * 2**20}


def _state(fake: FakeTart, name: str) -> str:
    return json.loads(fake.tart("get", name, "--format", "json").stdout)["State"]


def _golden(fake: FakeTart, name: str, *args: str, env: dict | None = None) -> str:
    """A macOS VM run with --suspendable, then suspended; returns its address."""
    if not fake.vm_dir(name).exists():
        fake.make_vm(name)
    vm, ip = fake.start_vm(name, "--suspendable", *args, env=env)
    assert fake.tart("suspend", name, env=env).returncode == 0
    assert vm.wait() == 0, vm.stderr
    assert vm.stdout.splitlines() == SAVE_LINES and vm.stderr == ""
    assert _state(fake, name) == "suspended"
    return ip


def _run_once(fake: FakeTart, name: str, *args: str, env: dict | None = None):
    """`tart run` that is expected to end by itself (a refused restore)."""
    argv = [str(fake.tart_path), "run", name, "--no-graphics", *args]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=30, env=env or fake.env(), check=False
    )


def test_suspend_writes_the_state_while_tart_run_holds_the_lock(fake_tart: FakeTart):
    """Run.swift L606-640: pause, save, exit 0; the VM reads `running` until `tart run` has
    exited (VMDirectory.state(), L65-73). A clone taken meanwhile gets a new MAC and no state
    (Clone.swift L101-103: the source is not `suspended`; VMDirectory.swift L207-231)."""
    env = fake_tart.env(FAKETART_GUEST="none")
    fake_tart.make_vm("golden")
    size = 256 * 2**20
    fake_tart.set_knobs("golden", suspend_seconds=60, state_size=size)
    vm, _ = fake_tart.start_vm("golden", "--suspendable", env=env)
    t0 = time.monotonic()
    r = fake_tart.tart("suspend", "golden", env=env)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert time.monotonic() - t0 < 1.0  # it only signals `tart run`
    state = fake_tart.vm_dir("golden") / "state.vzvmsave"
    wait_for(
        lambda: state.exists() and 0 < state.stat().st_size < size,
        timeout=5,
        what="state.vzvmsave being written",
    )
    assert vm.returncode is None and _state(fake_tart, "golden") == "running"
    assert fake_tart.saved_state("golden") is None  # not complete: it would not restore
    r = fake_tart.tart("clone", "golden", "early", env=env)
    assert r.returncode == 0, r.stderr
    assert fake_tart.config("early")["macAddress"] != fake_tart.config("golden")["macAddress"]
    assert not (fake_tart.vm_dir("early") / "state.vzvmsave").exists()
    assert _state(fake_tart, "early") == "stopped"
    fake_tart.set_knobs("golden", suspend_seconds=0.2)  # the knob is re-read: finish now
    assert vm.wait() == 0
    assert (vm.stdout.splitlines(), vm.stderr) == (SAVE_LINES, "")
    assert _state(fake_tart, "golden") == "suspended" and fake_tart.running_vms() == {}
    st = state.stat()
    assert st.st_size == size and st.st_blocks * 512 < size // 4  # apparent size, sparse
    header = fake_tart.saved_state("golden")
    cfg = fake_tart.config("golden")
    fp = header["fingerprint"]
    assert (fp["mac"], fp["cpu"], fp["memory"], fp["display"]) == (
        cfg["macAddress"],
        cfg["cpuCount"],
        cfg["memorySize"],
        [1024, 768],
    )
    assert (fp["network"], fp["console_port"], fp["os_build"], fp["uid"]) == (
        "nat",
        "tart-version-2.35.0",
        "24G84",
        os.getuid(),
    )
    assert fp["disk"] == {"size": 50_000_000_000, "generation": 1}  # one cold boot
    assert header["memory"]["addr"] == fake_tart.runtime("golden")["addr"]


def test_stop_or_a_second_suspend_while_saving_leaves_a_state_that_does_not_restore(
    fake_tart: FakeTart,
):
    """SIGINT while saving: VM.run (L271-287) finds the VM paused, not running, so nothing is
    printed and `tart run` exits 0; a second SIGUSR1 fails pause() (Run.swift L632-637, exit
    1). Either way the file is cut short: the VM reads `suspended`, the restore is refused."""
    env = fake_tart.env(FAKETART_GUEST="none")
    for name, how in (("a", "stop"), ("b", "suspend")):
        fake_tart.make_vm(name)
        fake_tart.set_knobs(name, suspend_seconds=30, state_size=2**20)
        vm, _ = fake_tart.start_vm(name, "--suspendable", env=env)
        assert fake_tart.tart("suspend", name, env=env).returncode == 0
        state = fake_tart.vm_dir(name) / "state.vzvmsave"
        wait_for(state.exists, what="the save to begin")
        assert fake_tart.tart(how, name, env=env).returncode == 0
        if how == "stop":
            assert vm.wait() == 0 and vm.stdout.splitlines() == SAVE_LINES[:2]
        else:
            assert vm.wait() == 1
            assert vm.stdout.splitlines()[2:] == [
                "Failed to suspend the VM: Invalid virtual machine state transition. "
                "The virtual machine is not running."
            ]
        assert _state(fake_tart, name) == "suspended"
        r = _run_once(fake_tart, name, env=env)
        assert (r.returncode, r.stderr) == (1, RESTORE_FAILURE)
        assert fake_tart.runtime(name)["restore_refused"] == ["truncated"]


def test_suspend_without_suspendable_fails_and_the_vm_is_gone(fake_tart: FakeTart):
    """Run.swift L614 (validateSaveRestoreSupport) and L632-637: `Failed to suspend the VM:
    <VZ message>` (VMStorageHelper.swift L142) on stdout, exit 1, no state. A suspended VM
    is run --suspendable (L355-357), which Linux VMs refuse (L359-363)."""
    env = fake_tart.env(FAKETART_GUEST="none")
    fake_tart.make_vm("mac")
    vm, _ = fake_tart.start_vm("mac", env=env)
    assert fake_tart.tart("suspend", "mac", env=env).returncode == 0
    assert vm.wait() == 1
    assert vm.stdout == (
        "Failed to suspend the VM: Invalid virtual machine configuration. Unsupported entropy "
        "device in configuration.\n"
    )
    assert vm.stderr == "" and fake_tart.running_vms() == {}
    assert _state(fake_tart, "mac") == "stopped"
    assert not (fake_tart.vm_dir("mac") / "state.vzvmsave").exists()
    fake_tart.make_vm("lin", LINUX_IMAGE)
    (fake_tart.vm_dir("lin") / "state.vzvmsave").write_bytes(b"x")
    usage_error(_run_once(fake_tart, "lin", env=env), "You can only suspend macOS VMs")
    (fake_tart.vm_dir("mac") / "state.vzvmsave").write_bytes(b"x")
    usage_error(
        _run_once(fake_tart, "mac", "--no-keyboard", env=env),
        "--suspendable cannot be used with --no-trackpad, --no-pointer or --no-keyboard",
    )


@needs_guest
def test_a_clone_of_a_suspended_vm_resumes_its_guest(fake_tart: FakeTart):
    """Clone.swift L101-103 and VMDirectory.clone (L207-217): the clone of a suspended VM
    keeps its MAC and state. Run.swift L513-523: restore, delete the state, resume. The
    guest is the saved one: address, host key, home, boot time; its clock stood still while
    the VM was suspended until `sudo date` sets it (the boot time moves with it, as XNU's
    clock_set_calendar_microtime does)."""
    fake_tart.set_knobs("*", **FAST_SAVE)
    fake_tart.make_vm("golden")
    vm, ip = fake_tart.start_vm("golden", "--suspendable")
    r = fake_tart.ssh(ip, "echo kept > ~/marker && sysctl -n kern.boottime && date +%s")
    boottime, guest_now = r.stdout.splitlines()
    assert re.fullmatch(
        r"\{ sec = \d+, usec = \d+ \} \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}", boottime
    )
    assert abs(int(guest_now) - time.time()) < 5
    host_key = fake_tart.host_key(ip)
    assert fake_tart.tart("suspend", "golden").returncode == 0
    assert vm.wait() == 0 and vm.stdout.splitlines() == SAVE_LINES
    # as if the golden had been suspended an hour ago
    header = fake_tart.saved_state("golden")
    header["memory"]["paused_at"] -= 3600
    fake_tart.rewrite_saved_state("golden", header)
    assert fake_tart.tart("clone", "golden", "task").returncode == 0
    assert fake_tart.config("task")["macAddress"] == fake_tart.config("golden")["macAddress"]
    assert _state(fake_tart, "task") == "suspended"
    task, task_ip = fake_tart.start_vm("task")
    if task_ip == ip:  # the guest still holds the golden's address (and its lease)
        assert fake_tart.tart("ip", "task").stdout == f"{ip}\n"
    else:  # another test's VM took it meanwhile (addresses are machine-wide): a free one
        assert fake_tart.tart("ip", "task", "--resolver", "arp").stdout == f"{task_ip}\n"
        ip = task_ip
    assert not (fake_tart.vm_dir("task") / "state.vzvmsave").exists()
    assert _state(fake_tart, "task") == "running" and fake_tart.runtime("task")["restored"]
    assert fake_tart.host_key(ip) == host_key
    r = fake_tart.ssh(ip, "cat ~/marker && sysctl -n kern.boottime && date +%s")
    marker, task_boottime, guest_now = r.stdout.splitlines()
    assert (marker, task_boottime) == ("kept", boottime)
    assert abs(int(guest_now) - (time.time() - 3600)) < 30  # behind by the suspended hour
    r = fake_tart.ssh(ip, "date -u 010100002030")
    assert (r.returncode, r.stderr) == (
        1,
        "date: settimeofday (timeval): Operation not permitted\n",
    )
    now = int(time.time())
    r = fake_tart.ssh(ip, f"sudo date -u -f %s {now} && date +%s && sysctl kern.boottime")
    stepped, guest_now, kern = r.stdout.splitlines()
    assert stepped == time.strftime("%a %b %e %H:%M:%S UTC %Y", time.gmtime(now)), r.stdout
    assert abs(int(guest_now) - time.time()) < 5
    old_sec = int(re.search(r"sec = (\d+)", boottime).group(1))
    new_sec = int(re.search(r"sec = (\d+)", kern).group(1))
    assert kern.startswith("kern.boottime: { sec = ") and abs(new_sec - old_sec - 3600) < 30
    # BSD date's own format sets the clock too
    r = fake_tart.ssh(ip, "sudo date -u 0102030430.05 >/dev/null && date -u +%FT%T")
    assert r.stdout.startswith("2030-01-02T03:04:0"), r.stdout
    assert fake_tart.tart("stop", "task").returncode == 0
    assert task.wait() == 0
    assert task.stdout.splitlines() == [*RESTORE_LINES, "Stopping VM..."]


def test_a_refused_restore_keeps_the_state_until_tart_stop(fake_tart: FakeTart):
    """Set.swift L40-95 rewrites config.json and never looks at state.vzvmsave; the restore
    then fails (Run.swift L587-595: the NSError on stderr, exit 1) and the state stays, so
    the VM stays suspended and fails the same way again, until `tart stop` deletes the
    state (Stop.swift L17-29) and the next run boots."""
    env = fake_tart.env(FAKETART_GUEST="none")
    fake_tart.set_knobs("*", **FAST_SAVE)
    _golden(fake_tart, "golden", env=env)
    assert fake_tart.tart("clone", "golden", "task", env=env).returncode == 0
    r = fake_tart.tart("set", "task", "--cpu", "8", env=env)
    assert r.returncode == 0 and _state(fake_tart, "task") == "suspended"
    for _ in range(2):
        r = _run_once(fake_tart, "task", env=env)
        assert (r.returncode, r.stdout, r.stderr) == (1, RESTORE_LINES[0] + "\n", RESTORE_FAILURE)
        assert fake_tart.runtime("task")["restore_refused"] == ["cpu"]
        assert fake_tart.running_vms() == {} and _state(fake_tart, "task") == "suspended"
    rows = json.loads(fake_tart.tart("list", "--format", "json", env=env).stdout)
    assert {r["Name"]: r["State"] for r in rows} == {"golden": "suspended", "task": "suspended"}
    r = fake_tart.tart("stop", "task", env=env)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert _state(fake_tart, "task") == "stopped"
    vm, _ = fake_tart.start_vm("task", env=env)
    assert not fake_tart.runtime("task")["restored"]
    fake_tart.tart("stop", "task", env=env)
    assert vm.wait() == 0 and vm.stdout == "Stopping VM...\n"
    # the restore_failure knob forces the refusal (the state is kept as well)
    assert fake_tart.tart("clone", "golden", "t2", env=env).returncode == 0
    fake_tart.set_knobs("t2", restore_failure=True)
    r = _run_once(fake_tart, "t2", env=env)
    assert (r.returncode, r.stderr) == (1, RESTORE_FAILURE) and _state(
        fake_tart, "t2"
    ) == "suspended"
    fake_tart.set_knobs("t2", restore_failure={"message": "boom", "exit_code": 3})
    r = _run_once(fake_tart, "t2", env=env)
    assert (r.returncode, r.stdout, r.stderr) == (3, RESTORE_LINES[0] + "\n", "boom\n")


def test_what_a_restore_compares(fake_tart: FakeTart, tmp_path: Path):
    """The fingerprint models what VM.swift craftConfiguration (L315-461) builds, not the
    argv: identity, resources, MAC, display in pixels, the disk, devices, the console port
    `tart-version-<version>` (L447-448), the host's OS build and the user; softnet's rules
    and UI-only flags are not in it."""
    env = fake_tart.env(FAKETART_GUEST="none")
    fake_tart.set_knobs("*", **FAST_SAVE)
    _golden(fake_tart, "golden", "--net-softnet", env=env)
    n = iter(range(100))

    def attempt(*args: str, setup=(), env_extra=None, host=None) -> list[str]:
        name = f"t{next(n)}"
        assert fake_tart.tart("clone", "golden", name, env=env).returncode == 0
        for s in setup:
            assert fake_tart.tart("set", name, *s, env=env).returncode == 0
        if host:
            fake_tart.set_host_state(**host)
        run_env = fake_tart.env(FAKETART_GUEST="none", **(env_extra or {}))
        vm = fake_tart.run_vm(name, *args, env=run_env)
        wait_for(lambda: vm.returncode is not None or fake_tart.runtime(name).get("pid"))
        if vm.returncode is None:  # restored: stop it again
            fake_tart.wait_ip(name, proc=vm.proc)
            fake_tart.tart("stop", name, env=env)
            assert vm.wait() == 0, vm.stderr
            lines = vm.stdout.splitlines()
            assert lines[:2] == RESTORE_LINES and lines[-1] == "Stopping VM...", lines
            return []
        vm.wait()
        assert (vm.returncode, vm.stderr) == (1, RESTORE_FAILURE)
        if host:
            fake_tart.set_host_state(os_build="24G84")
        return fake_tart.runtime(name)["restore_refused"]

    assert attempt("--net-softnet") == []
    # softnet's rules are softnet's argv; --vnc and --suspendable are no VZ device
    assert attempt("--net-softnet-allow=10.0.0.0/8", "--vnc", "--suspendable") == []
    assert attempt() == ["network"]  # NAT instead of softnet's file handle
    assert attempt("--net-bridged=en0") == ["network"]
    assert attempt("--net-softnet", setup=[["--display", "1280x800"]]) == ["display"]
    assert attempt("--net-softnet", setup=[["--display", "1024x768px"]]) == []  # same pixels
    assert attempt("--net-softnet", setup=[["--random-serial"]]) == ["platform"]
    assert attempt("--net-softnet", setup=[["--memory", "16384"]]) == ["memory"]
    assert attempt("--net-softnet", setup=[["--random-mac"]]) == ["mac"]
    assert attempt("--net-softnet", setup=[["--disk-size", "60"]]) == ["disk"]
    assert attempt("--net-softnet", "--no-clipboard") == ["clipboard"]
    assert attempt("--net-softnet", "--root-disk-opts=sync=none") == ["root_disk"]
    assert attempt("--net-softnet", "--serial") == ["serial"]
    disk = tmp_path / "extra.img"
    disk.write_bytes(b"\0" * 4096)
    assert attempt("--net-softnet", f"--disk={disk}") == ["disks"]
    assert attempt("--net-softnet", env_extra={"FAKETART_VERSION": "2.34.0"}) == ["console_port"]
    assert attempt("--net-softnet", host={"os_build": "25A354"}) == ["os_build"]
    assert attempt("--net-softnet", f"--dir={tmp_path}") == ["virtio_fs"]
    fake_tart.set_knobs("*", restore_ignore=["network"])
    assert attempt("--net-bridged=en0") == []
    # a cold boot changes the disk behind a state: a copy of the golden's state no longer fits
    assert fake_tart.tart("clone", "golden", "cold", env=env).returncode == 0
    assert fake_tart.tart("stop", "cold", env=env).returncode == 0
    vm, _ = fake_tart.start_vm("cold", "--net-softnet", env=env)
    fake_tart.tart("stop", "cold", env=env)
    vm.wait()
    state = fake_tart.vm_dir("golden") / "state.vzvmsave"
    (fake_tart.vm_dir("cold") / "state.vzvmsave").write_bytes(state.read_bytes())
    r = _run_once(fake_tart, "cold", "--net-softnet", env=env)
    assert r.returncode == 1 and fake_tart.runtime("cold")["restore_refused"] == ["disk"]


def test_mount_tag_order_is_swifts_per_process_order():
    """Run.swift L758: one virtio-fs device per tag from Dictionary(grouping:), whose order
    Swift's per-process hashing seed decides unless SWIFT_DETERMINISTIC_HASHING is set."""
    from tests.faketart.faketart.vzstate import swift_order

    tags = ["a", "b", "c"]
    assert swift_order(["only"], {}) == ["only"]
    orders = {tuple(swift_order(tags, {})) for _ in range(200)}
    assert len(orders) > 1 and all(sorted(o) == tags for o in orders)
    fixed = {tuple(swift_order(tags, {"SWIFT_DETERMINISTIC_HASHING": "1"})) for _ in range(20)}
    assert len(fixed) == 1


def test_shares_at_restore(fake_tart: FakeTart, tmp_path: Path):
    """Run.swift L463-478 builds the VM, with the --dir shares (directoryShares(), L743-781),
    before restoring (L519). What Virtualization.framework then compares is unknown: the
    restore_share_paths knob says which paths must match (argv strings by default, so a path
    that is a symlink re-pointed elsewhere still restores); share_root_symlink refuses
    symlinked share roots at build time; with two or more tags the device order is Swift's
    per-process order."""
    env = fake_tart.env(FAKETART_GUEST="none")
    fake_tart.set_knobs("*", **FAST_SAVE)
    slot = tmp_path / "slot"
    slot.mkdir()
    for d in ("placeholder", "task1", "task2"):
        (tmp_path / d).mkdir()
    link = slot / "local"
    link.symlink_to(tmp_path / "placeholder")
    share = f"--dir=local:{link}:tag=nomad-warm"
    _golden(fake_tart, "golden", share, env=env)
    dev = fake_tart.saved_state("golden")["fingerprint"]["virtio_fs"]
    assert dev == [
        {
            "tag": "nomad-warm",
            "shares": [
                {
                    "name": "local",
                    "ro": False,
                    "path": str(link),
                    "resolved": str(tmp_path / "placeholder"),
                }
            ],
        }
    ]

    def attempt(name: str, *args: str, run_env=None) -> int:
        assert fake_tart.tart("clone", "golden", name, env=env).returncode == 0
        vm = fake_tart.run_vm(name, *args, env=run_env or env)
        wait_for(lambda: vm.returncode is not None or fake_tart.runtime(name).get("pid"))
        if vm.returncode is None:
            fake_tart.tart("stop", name, env=env)
        return vm.wait()

    link.unlink()
    link.symlink_to(tmp_path / "task1")  # the driver re-points the slot's link
    assert attempt("t1", share) == 0
    fake_tart.set_knobs("t2", restore_share_paths="resolved")
    assert attempt("t2", share) == 1
    assert fake_tart.runtime("t2")["restore_refused"] == ["virtio_fs"]
    real = f"--dir=local:{tmp_path / 'task2'}:tag=nomad-warm"  # binding (c): real paths
    assert attempt("t3", real) == 1
    fake_tart.set_knobs("t4", restore_share_paths="ignore")
    assert attempt("t4", real) == 0
    fake_tart.set_knobs("t5", restore_share_paths="ignore")
    assert attempt("t5", f"--dir=other:{link}:tag=nomad-warm") == 1  # names are compared
    assert attempt("t6", f"--dir=local:{link}:ro,tag=nomad-warm") == 1  # so is ro
    # a share root that is a symlink: Virtualization.framework may refuse it
    fake_tart.make_vm("fresh")
    fake_tart.set_knobs("fresh", share_root_symlink="refuse")
    r = _run_once(fake_tart, "fresh", share, env=env)
    assert r.returncode == 1 and fake_tart.running_vms() == {}
    assert r.stderr == (
        'Error: Error Domain=VZErrorDomain Code=2 "Invalid virtual machine configuration. The '
        f'directory sharing device configuration is invalid: {link} is a symbolic link." '
        "UserInfo={NSLocalizedFailure=Invalid virtual machine configuration., "
        "NSLocalizedFailureReason=A directory sharing device configuration is invalid. "
        f"({link})}}\n"
    )
    # two tags: the order of their devices is per process
    tags = ("--dir=a:/tmp:tag=one", "--dir=b:/tmp:tag=two")
    from tests.faketart.faketart.vzstate import swift_order

    seeds = {
        tuple(swift_order(["one", "two"], {"FAKETART_SWIFT_HASH_SEED": str(i)})): str(i)
        for i in range(64)
    }
    first, second = (seeds[("one", "two")], seeds[("two", "one")])
    fake_tart.make_vm("g2")
    _golden(
        fake_tart,
        "g2",
        *tags,
        env=fake_tart.env(FAKETART_GUEST="none", FAKETART_SWIFT_HASH_SEED=first),
    )
    assert fake_tart.tart("clone", "g2", "u1", env=env).returncode == 0
    r = _run_once(
        fake_tart,
        "u1",
        *tags,
        env=fake_tart.env(FAKETART_GUEST="none", FAKETART_SWIFT_HASH_SEED=second),
    )
    assert r.returncode == 1 and fake_tart.runtime("u1")["restore_refused"] == ["virtio_fs"]
    det = fake_tart.env(FAKETART_GUEST="none", SWIFT_DETERMINISTIC_HASHING="1")
    fake_tart.make_vm("g3")
    _golden(fake_tart, "g3", *tags, env=det)
    assert fake_tart.tart("clone", "g3", "u2", env=env).returncode == 0
    vm, _ = fake_tart.start_vm("u2", *tags, env=det)
    assert fake_tart.runtime("u2")["restored"]
    fake_tart.tart("stop", "u2", env=env)
    vm.wait()


@needs_guest
def test_what_restored_shares_serve(fake_tart: FakeTart, tmp_path: Path):
    """After a restore the custom tag (never mounted before the suspend) is mounted fresh
    and serves the re-pointed directory (restored_share_view `new`), or the directory the
    golden's share resolved to when it was saved (`saved`: the nonce catches it). Shares
    mounted before the suspend (the automount) survive (premounted_after_restore `ok`) or
    are gone (`broken`, as UTM #7025 reports)."""
    fake_tart.set_knobs("*", **FAST_SAVE)
    slot = tmp_path / "slot"
    slot.mkdir()
    for d in ("golden", "task1", "task2", "auto"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "nonce").write_text(d + "\n")
    link = slot / "probe"
    link.symlink_to(tmp_path / "golden")
    args = (f"--dir=probe:{link}:ro,tag=nomad-warm", f"--dir={tmp_path / 'auto'}:ro")
    env = fake_tart.env(SWIFT_DETERMINISTIC_HASHING="1")  # two tags: one device order
    _golden(fake_tart, "golden", *args, env=env)
    header = fake_tart.saved_state("golden")
    assert header["memory"]["mounts"] == [
        {"tag": "com.apple.virtio-fs.automount", "dir": "/Volumes/My Shared Files"}
    ]
    mount = "mkdir -p ~/w && mount_virtiofs nomad-warm ~/w && cat ~/w/probe/nonce"
    auto = "cat '/Volumes/My Shared Files/nonce'"
    for name, target, knobs, nonce, premounted in (
        ("t1", "task1", {}, "task1", "auto\n"),
        (
            "t2",
            "task2",
            {"restored_share_view": "saved", "premounted_after_restore": "broken"},
            "golden",
            "",
        ),
    ):
        link.unlink()
        link.symlink_to(tmp_path / target)
        assert fake_tart.tart("clone", "golden", name).returncode == 0
        if knobs:
            fake_tart.set_knobs(name, **knobs)
        vm, ip = fake_tart.start_vm(name, *args, env=env)
        assert fake_tart.ssh(ip, mount).stdout == f"{nonce}\n"
        assert fake_tart.ssh(ip, auto).stdout == premounted
        if premounted == "":
            r = fake_tart.ssh(
                ip, "mkdir -p ~/a && mount_virtiofs com.apple.virtio-fs.automount ~/a"
            )
            assert (
                r.returncode == 1
                and "special device com.apple.virtio-fs.automount does not exist" in r.stderr
            )
        vm.kill()


def test_a_mac_conflict_resets_the_mac_and_deletes_the_state(fake_tart: FakeTart):
    """Run.swift L416-426: another running VM has the MAC, so Tart prints two lines and
    VMDirectory.regenerateMACAddress (L223-231) gives a new MAC and deletes the state: a
    silent cold boot (no "restoring VM state" line)."""
    env = fake_tart.env(FAKETART_GUEST="none")
    fake_tart.set_knobs("*", **FAST_SAVE)
    _golden(fake_tart, "golden", env=env)
    for name in ("a", "b"):
        assert fake_tart.tart("clone", "golden", name, env=env).returncode == 0
    mac = fake_tart.config("golden")["macAddress"]
    assert fake_tart.config("a")["macAddress"] == fake_tart.config("b")["macAddress"] == mac
    va, _ = fake_tart.start_vm("a", env=env)
    vb, _ = fake_tart.start_vm("b", env=env)
    assert fake_tart.runtime("a")["restored"] and not fake_tart.runtime("b")["restored"]
    assert fake_tart.config("b")["macAddress"] != mac
    assert not (fake_tart.vm_dir("b") / "state.vzvmsave").exists()
    for name, vm in (("a", va), ("b", vb)):
        fake_tart.tart("stop", name, env=env)
        assert vm.wait() == 0
    assert vb.stdout.splitlines() == [
        "There is already a running VM with the same MAC address!",
        "Resetting VM to assign a new MAC address...",
        "Stopping VM...",
    ]
    assert va.stdout.splitlines() == [*RESTORE_LINES, "Stopping VM..."]


def test_clone_copies_the_state_of_a_suspended_vm(fake_tart: FakeTart):
    """Clone.swift L101-103: the MAC is kept because the source is `suspended`;
    VMDirectory.clone (L207-217) copies the state with `try?`, so a failed copy
    (clone_state_copy_failure) leaves a stopped clone that still has the source's MAC."""
    env = fake_tart.env(FAKETART_GUEST="none")
    fake_tart.set_knobs("*", **FAST_SAVE)
    _golden(fake_tart, "golden", env=env)
    (fake_tart.vm_dir("golden") / ".faketart" / "home" / "note").write_text("golden's\n")
    mac = fake_tart.config("golden")["macAddress"]
    assert fake_tart.tart("clone", "golden", "c1", env=env).returncode == 0
    assert fake_tart.tart("clone", "c1", "c2", env=env).returncode == 0
    for name in ("c1", "c2"):
        assert (
            fake_tart.config(name)["macAddress"] == mac and _state(fake_tart, name) == "suspended"
        )
        assert fake_tart.saved_state(name) == fake_tart.saved_state("golden")
        assert (fake_tart.vm_dir(name) / ".faketart" / "home" / "note").read_text() == "golden's\n"
    fake_tart.set_knobs("c3", clone_state_copy_failure=True)
    r = fake_tart.tart("clone", "golden", "c3", env=env)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert fake_tart.config("c3")["macAddress"] == mac and _state(fake_tart, "c3") == "stopped"
    assert not (fake_tart.vm_dir("c3") / ".faketart" / "home").exists()


# ---------------------------------------------------------------------------
# The guest


def _file_state(path: Path) -> tuple[int, int, bytes] | None:
    """What a host file is (inode, mode, content), or None when it does not exist."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    content = path.read_bytes() if path.is_file() else b""
    return info.st_ino, info.st_mode, content


@needs_guest
def test_ssh_guest_environment(fake_tart: FakeTart):
    host_files = {p: _file_state(Path(p)) for p in ("/usr/bin/log", "/usr/bin/sudo", "/Volumes")}
    fake_tart.make_vm("vm")
    vm, ip = fake_tart.start_vm("vm")
    r = fake_tart.ssh(
        ip,
        "id -un; echo $HOME; pwd; sudo id -un; command -v log sudo shutdown; "
        "ls /proc | grep -c '^[0-9]'; test -d '/Volumes/My Shared Files' && echo vol",
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert lines[:4] == ["admin", "/Users/admin", "/Users/admin", "admin"]
    assert lines[4:7] == ["/usr/bin/log", "/usr/bin/sudo", "/usr/sbin/shutdown"]
    assert int(lines[7]) < 15  # a private PID namespace: no host processes
    assert lines[8] == "vol"
    r = fake_tart.ssh(ip, "true", password="wrong")
    assert r.returncode == 255
    r = fake_tart.ssh(
        ip,
        "grep -c faketart /usr/sbin/shutdown /sbin/shutdown /usr/sbin/poweroff /usr/sbin/reboot "
        "/usr/sbin/halt /sbin/halt /sbin/poweroff /sbin/reboot /usr/bin/log /usr/bin/sudo",
    )
    # the host's real shutdown (and any log or sudo of its own) is unreachable: every path
    # is the guest's own
    counts = [int(ln.rsplit(":", 1)[1]) for ln in r.stdout.splitlines()]
    assert r.returncode == 0 and len(counts) == 10 and all(c > 0 for c in counts), r.stdout
    # the guest user does not exist on the host; the host's files are untouched
    assert "admin:x:" not in Path("/etc/passwd").read_text()
    assert {p: _file_state(Path(p)) for p in host_files} == host_files
    # the home directory persists across restarts
    assert fake_tart.ssh(ip, "echo kept > ~/note").returncode == 0
    key = fake_tart.host_key(ip)
    fake_tart.tart("stop", "vm")
    vm.wait()
    vm, ip = fake_tart.start_vm("vm")
    assert fake_tart.ssh(ip, "cat ~/note").stdout == "kept\n"
    assert fake_tart.host_key(ip) == key  # stable across restarts of the same VM
    fake_tart.tart("clone", "vm", "copy")
    vc, ipc = fake_tart.start_vm("copy")
    assert fake_tart.host_key(ipc) != key  # a fresh clone gets a new key
    vc.kill()
    vm.kill()


@needs_guest
def test_custom_image_user_and_linux_home(fake_tart: FakeTart):
    ref = fake_tart.add_image(
        "ghcr.io/acme/debian-ci:12", os="linux", user="runner", password="pw-123"
    )
    fake_tart.clone(ref, "deb")
    vm, ip = fake_tart.start_vm("deb")
    r = fake_tart.ssh(ip, "id -un; echo $HOME", user="runner", password="pw-123")
    assert r.stdout.split() == ["runner", "/home/runner"], r.stderr
    assert fake_tart.ssh(ip, "true", user="admin", password="admin").returncode == 255
    vm.kill()


@needs_guest
def test_guest_log_stream_and_show_resume(fake_tart: FakeTart):
    fake_tart.make_vm("vm")
    fake_tart.set_knobs("vm", log_rate=20)
    vm, ip = fake_tart.start_vm("vm")
    proc = fake_tart.ssh_popen(ip, "/usr/bin/log stream --style syslog --level=info")
    try:
        fd = proc.stdout.fileno()
        buf = ""
        deadline = time.monotonic() + 10
        while buf.count("\n") < 6 and time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 1)
            if r:
                buf += os.read(fd, 65536).decode()
    finally:
        proc.kill()
        proc.communicate()
    lines = buf.splitlines()
    assert lines[0] == "Timestamp                       (process)[PID]"
    pat = re.compile(
        r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}\+0000)  localhost [\w-]+\[\d+\]: seq=(\d+) .+$"
    )
    parsed = [pat.match(ln) for ln in lines[1:6]]
    assert all(parsed), lines
    seqs = [int(m.group(2)) for m in parsed]
    assert seqs == list(range(seqs[0], seqs[0] + 5))  # no gaps
    # reconnect and resume from the last timestamp seen:
    # no gap, and no duplicate once lines with seq <= last are dropped
    last_ts, last_seq = parsed[-1].group(1), seqs[-1]
    wait_for(lambda: len(fake_tart.guest_log("vm")) > last_seq + 3, what="more guest log lines")
    r = fake_tart.ssh(ip, f"log show --style syslog --start '{last_ts}'")
    assert r.returncode == 0, r.stderr
    shown = [pat.match(ln) for ln in r.stdout.splitlines()]
    shown = [int(m.group(2)) for m in shown if m]
    assert shown[0] == last_seq  # --start is inclusive
    assert shown == list(range(last_seq, last_seq + len(shown))) and len(shown) >= 4
    assert r.stdout.splitlines()[0].startswith("Timestamp")
    # a time zone offset is honoured
    r2 = fake_tart.ssh(ip, f"log show --start '{last_ts[:-5]}+0100'")
    assert len(r2.stdout.splitlines()) > len(r.stdout.splitlines())
    # the rate knob is re-read while the VM runs: at 20 lines/s, 300 more lines would take 15 s
    n0 = len(fake_tart.guest_log("vm"))
    fake_tart.set_knobs("vm", log_rate=500)
    wait_for(lambda: len(fake_tart.guest_log("vm")) >= n0 + 300, timeout=3, what="500 lines/s")
    vm.kill()


@needs_guest
def test_shared_directories(fake_tart: FakeTart, tmp_path: Path):
    ro_dir = tmp_path / "secrets"
    rw_dir = tmp_path / "work"
    tag_dir = tmp_path / "cache"
    nobodys = tmp_path / "alloc"  # as Nomad makes its task directories: nobody's, 0777
    for d in (ro_dir, rw_dir, tag_dir, nobodys):
        d.mkdir()
        d.chmod(0o700)  # like mkdtemp: only root may enter on the host
    nobodys.chmod(0o777)
    os.chown(nobodys, 65534, 65534)
    (ro_dir / "token").write_text("t0ken\n")
    (tag_dir / "c").write_text("cached\n")
    fake_tart.make_vm("vm")
    vm, ip = fake_tart.start_vm(
        "vm",
        f"--dir=secrets:{ro_dir}:ro",
        f"--dir=work:{rw_dir}",
        f"--dir=alloc:{nobodys}",
        f"--dir={tag_dir}:tag=build-cache",
    )
    root = "/Volumes/My Shared Files"
    r = fake_tart.ssh(
        ip,
        f"ls '{root}'; cat '{root}/secrets/token'; touch '{root}/secrets/x' 2>&1; "
        f"echo hi > '{root}/work/out.txt' && echo hi > '{root}/alloc/out.txt' && echo wrote",
    )
    assert r.stdout.splitlines()[:4] == ["alloc", "secrets", "work", "t0ken"], r.stdout + r.stderr
    assert "Read-only file system" in r.stdout and r.stdout.rstrip().endswith("wrote")
    assert (rw_dir / "out.txt").read_text() == "hi\n"
    # Tart's file server writes as the user running tart (root here): the guest may write
    # into another owner's 0777 directory, and what it writes is root's on the host.
    assert (nobodys / "out.txt").read_text() == "hi\n"
    assert (nobodys / "out.txt").stat().st_uid == 0
    assert not (ro_dir / "x").exists()
    # a custom tag is not automounted; mount_virtiofs mounts it
    r = fake_tart.ssh(ip, "mkdir -p ~/cache && mount_virtiofs build-cache ~/cache && cat ~/cache/c")
    assert r.stdout == "cached\n", r.stderr
    vm.kill()
    # a single unnamed share shows its contents at the root
    vm, ip = fake_tart.start_vm("vm", f"--dir={ro_dir}:ro")
    assert fake_tart.ssh(ip, f"cat '{root}/token'").stdout == "t0ken\n"
    vm.kill()


@needs_guest
def test_linux_guests_mount_shares_themselves_and_macos_guests_lack_linux_tools(
    fake_tart: FakeTart, tmp_path: Path
):
    share = tmp_path / "work"
    share.mkdir()
    (share / "hello").write_text("hi\n")
    fake_tart.make_vm("l", LINUX_IMAGE)
    vm, ip = fake_tart.start_vm("l", f"--dir=work:{share}")
    r = fake_tart.ssh(ip, "ls '/Volumes/My Shared Files' 2>&1; mountpoint -q /mnt/shared; echo $?")
    assert r.stdout.splitlines()[-1] == "1" and "work" not in r.stdout, "nothing automounted"
    tag = "com.apple.virtio-fs.automount"
    r = fake_tart.ssh(ip, f"mount -t virtiofs {tag} /mnt/shared")
    assert r.returncode == 1 and "only root" in r.stderr
    r = fake_tart.ssh(ip, f"sudo mount -t virtiofs {tag} /mnt/shared && cat /mnt/shared/work/hello")
    assert r.stdout == "hi\n", r.stderr
    vm.kill()
    fake_tart.make_vm("m", MACOS_IMAGE)
    vm, ip = fake_tart.start_vm("m")
    r = fake_tart.ssh(ip, "for p in setsid timeout stdbuf pkill nohup; do command -v $p; done")
    assert r.stdout.split() == ["/usr/bin/pkill", "/usr/bin/nohup"]
    vm.kill()


@needs_guest
def test_guest_shutdown_ends_run(fake_tart: FakeTart):
    fake_tart.make_vm("vm")
    vm, ip = fake_tart.start_vm("vm")
    r = fake_tart.ssh(ip, "sudo shutdown -h now")
    assert r.returncode in (0, 255)
    assert vm.wait() == 0
    assert vm.stdout == "guest has stopped the virtual machine\n" and vm.stderr == ""
    assert fake_tart.running_vms() == {}
    assert "SHUTDOWN_TIME" in fake_tart.guest_log("vm")[-1]
    # plain `shutdown -h now` as well; `sudo reboot` keeps `tart run` going
    vm, ip = fake_tart.start_vm("vm")
    fake_tart.ssh(ip, "sudo reboot")
    wait_for(
        lambda: fake_tart.ssh(ip, "echo back").stdout == "back\n", what="the guest to come back"
    )
    assert vm.proc.poll() is None
    fake_tart.ssh(ip, "shutdown -h now")
    assert vm.wait() == 0 and vm.stdout.endswith("guest has stopped the virtual machine\n")


@needs_guest
def test_concurrent_homes_get_distinct_addresses(fake_tart: FakeTart, tmp_path: Path):
    other = FakeTart(tmp_path / "other-home", tmp_path / "other")
    try:
        fake_tart.make_vm("vm", LINUX_IMAGE)
        other.make_vm("vm", LINUX_IMAGE)
        v1, ip1 = fake_tart.start_vm("vm")
        _v2, ip2 = other.start_vm("vm")
        assert ip1 != ip2
        assert fake_tart.ssh(ip1, "echo one").stdout == "one\n"
        assert other.ssh(ip2, "echo two").stdout == "two\n"
    finally:
        other.cleanup()
    assert other.our_processes() == []
    assert fake_tart.running_vms() == {"vm": v1.pid}


@needs_guest
def test_teardown_kills_everything(fake_tart: FakeTart):
    fake_tart.make_vm("a")
    fake_tart.make_vm("b", LINUX_IMAGE)
    # started outside the fixture's tracking, as a driver would
    env = fake_tart.env()
    procs = [
        subprocess.Popen(
            [str(fake_tart.tart_path), "run", n, "--no-graphics", "--net-softnet"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for n in ("a", "b")
    ]
    try:
        ips = [fake_tart.wait_ip(n) for n in ("a", "b")]
        guests = [fake_tart.runtime(n)["guest_pid"] for n in ("a", "b")]
        assert len(fake_tart.our_processes()) == 6  # 2 x (tart run, guest init, softnet)
        fake_tart.cleanup()
        assert fake_tart.our_processes() == [] and fake_tart.running_vms() == {}
        assert not any(pid_alive(g) for g in guests)
        assert all(fake_tart.guest_gone(ip) for ip in ips)
        assert len(fake_tart.leftovers) == 6
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_lite_mode_without_guest(fake_tart: FakeTart):
    """FAKETART_GUEST=none: no SSH guest (e.g. not root), everything else still works."""
    fake_tart.make_vm("vm", LINUX_IMAGE)
    env = fake_tart.env(FAKETART_GUEST="none")
    vm, ip = fake_tart.start_vm("vm", env=env)
    assert fake_tart.runtime("vm")["mode"] == "none"
    assert fake_tart.tart("ip", "vm", env=env).stdout == f"{ip}\n"
    assert fake_tart.tart("stop", "vm", env=env).returncode == 0
    assert vm.wait() == 0 and vm.stdout == "Stopping VM...\n"


def test_vnc_serial_and_exec(fake_tart: FakeTart):
    fake_tart.make_vm("vm", LINUX_IMAGE)
    env = fake_tart.env(FAKETART_GUEST="none")
    vm, ip = fake_tart.start_vm("vm", "--vnc", "--serial", env=env)
    r = fake_tart.tart("exec", "vm", "uname")
    assert r.returncode == 1 and "is the Tart Guest Agent running?" in r.stderr
    fake_tart.tart("stop", "vm")
    assert vm.wait() == 0
    lines = vm.stdout.splitlines()
    assert re.fullmatch(r"Successfully open pty /dev/\S+", lines[0])
    assert lines[1:] == [f"VNC server is running at vnc://{ip}", "Stopping VM..."]
    r = fake_tart.tart("exec", "vm", "uname")
    assert (r.returncode, r.stderr) == (2, 'VM "vm" is not running\n')


# ---------------------------------------------------------------------------
# `tart` run by another user, through the fake virtualization service


@needs_guest
def test_tart_run_by_another_user_boots_a_guest_with_that_users_rights():
    user = ensure_user("faketart-test")
    as_user = {"user": user.pw_uid, "group": user.pw_gid, "cwd": "/"}
    with fake_tart_for_user(user) as ft:
        env = ft.env()
        clone = subprocess.run(
            [str(ft.tart_path), "clone", MACOS_IMAGE, "vm"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            **as_user,
        )
        assert clone.returncode == 0, clone.stderr
        assert (ft.home / "vms" / "vm").stat().st_uid == user.pw_uid
        readable = ft.scratch / "readable"
        readable.mkdir(mode=0o755)
        (readable / "hello").write_text("hi\n")
        closed = ft.scratch / "closed"
        closed.mkdir(mode=0o700)
        run = subprocess.Popen(
            [
                str(ft.tart_path),
                "run",
                "vm",
                "--no-graphics",
                f"--dir=open:{readable}:ro",
                f"--dir=closed:{closed}:ro",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **as_user,
        )
        try:
            ip = ft.wait_ip("vm", timeout=20)
            shares = "/Volumes/My Shared Files"
            seen = ft.ssh(ip, f"id -u; cat '{shares}/open/hello'; ls '{shares}/closed'")
            assert seen.stdout == f"{user.pw_uid}\nhi\n"
            assert "Permission denied" in seen.stderr
            guest = ft.runtime("vm")["guest_pid"]
            run.kill()  # tart run dies without a word: the service powers the guest off
            run.wait(timeout=10)
            wait_for(lambda: not pid_alive(guest), what="the guest to die with tart run")
        finally:
            if run.poll() is None:
                run.kill()
            run.wait(timeout=10)
            assert run.stdout is not None
            run.stdout.close()
        delete = subprocess.run(
            [str(ft.tart_path), "delete", "vm"],
            env=env,
            capture_output=True,
            check=False,
            **as_user,
        )
        assert delete.returncode == 0, delete.stderr
        assert not (ft.home / "vms" / "vm").exists()
