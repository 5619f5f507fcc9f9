"""Build the ``nomadsim`` Nomad-client stand-in from Debian's Go packages.

Offline, GOPATH mode: the Go sources in ``tests/conformance/nomadsim/`` and
Go code generated from ``proto/`` (protoc + Debian's protoc-gen-go 1.3.5)
are placed in a temporary GOPATH next to ``/usr/share/gocode``. The binary
is cached as ``<repo>/build/nomadsim-<hash of inputs>``; the Go build cache
lives in ``<repo>/build/gocache``. Concurrent builders (several pytest
processes) serialise on a lock file and publish with an atomic rename.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
GO_SRC = HERE / "nomadsim"
PROTO_ROOT = REPO / "proto"
BUILD_DIR = REPO / "build"
GOCODE = Path("/usr/share/gocode")

#: proto file (relative to proto/) -> Go import path inside the temp GOPATH
PROTOS: dict[str, str] = {
    "hashicorp/nomad/plugins/shared/hclspec/hcl_spec.proto": "nomadsim/gen/hclspec",
    "hashicorp/nomad/plugins/shared/structs/attribute.proto": "nomadsim/gen/structs",
    "hashicorp/nomad/plugins/shared/structs/recoverable_error.proto": "nomadsim/gen/structs",
    "hashicorp/nomad/plugins/shared/structs/stats.proto": "nomadsim/gen/structs",
    "hashicorp/nomad/plugins/base/base.proto": "nomadsim/gen/base",
    "hashicorp/nomad/plugins/drivers/driver.proto": "nomadsim/gen/drivers",
}

#: well-known types must map to the golang/protobuf 1.3 packages, otherwise
#: the generated code mixes the two Go protobuf APIs.
WELL_KNOWN: dict[str, str] = {
    "google/protobuf/timestamp.proto": "github.com/golang/protobuf/ptypes/timestamp",
    "google/protobuf/duration.proto": "github.com/golang/protobuf/ptypes/duration",
    "google/protobuf/empty.proto": "github.com/golang/protobuf/ptypes/empty",
    "google/protobuf/wrappers.proto": "github.com/golang/protobuf/ptypes/wrappers",
}

#: library directory under /usr/share/gocode/src -> Debian package providing it
GO_LIBRARIES: dict[str, str] = {
    "github.com/hashicorp/go-plugin": "golang-github-hashicorp-go-plugin-dev",
    "github.com/hashicorp/go-hclog": "golang-github-hashicorp-go-hclog-dev",
    "github.com/hashicorp/hcl/v2": "golang-github-hashicorp-hcl-v2-dev",
    "github.com/zclconf/go-cty/cty/msgpack": "golang-github-zclconf-go-cty-dev",
    "github.com/vmihailenco/msgpack": "golang-gopkg-vmihailenco-msgpack.v2-dev",
    "google.golang.org/grpc": "golang-google-grpc-dev",
    "google.golang.org/genproto/googleapis/rpc/status": "golang-google-genproto-dev",
    "github.com/golang/protobuf/jsonpb": "golang-github-golang-protobuf-1-3-dev",
    "golang.org/x/sys/unix": "golang-golang-x-sys-dev",
    "golang.org/x/net/context": "golang-golang-x-net-dev",
}

TOOLS: dict[str, str] = {
    "go": "golang-go",
    "protoc": "protobuf-compiler",
    "protoc-gen-go": "golang-goprotobuf-dev (protoc-gen-go 1.3.x)",
}


class NomadSimBuildError(RuntimeError):
    """The stand-in could not be built (missing Debian package, compile error)."""


def _inputs() -> list[Path]:
    files = sorted(GO_SRC.glob("*.go"))
    files += [PROTO_ROOT / p for p in PROTOS]
    files.append(Path(__file__).resolve())
    return files


def source_hash() -> str:
    """Hash of everything that affects the binary (sources, protos, this script)."""
    h = hashlib.sha256()
    for path in _inputs():
        h.update(str(path.relative_to(REPO)).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _check_prerequisites() -> dict[str, str]:
    tools: dict[str, str] = {}
    missing: list[str] = []
    for tool, package in TOOLS.items():
        found = shutil.which(tool)
        if found is None:
            missing.append(f"`{tool}` (Debian package {package})")
        else:
            tools[tool] = found
    for lib, package in GO_LIBRARIES.items():
        if not (GOCODE / "src" / lib).is_dir():
            missing.append(f"Go library {lib} (Debian package {package})")
    if missing:
        raise NomadSimBuildError(
            "cannot build nomadsim, missing: "
            + "; ".join(missing)
            + ". Install with: apt-get install golang-go protobuf-compiler golang-goprotobuf-dev "
            + " ".join(sorted(set(GO_LIBRARIES.values())))
        )
    return tools


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> None:
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NomadSimBuildError(
            f"command failed ({proc.returncode}): {' '.join(argv)}\n{proc.stdout}{proc.stderr}"
        )


def _generate(tools: dict[str, str], gopath: Path, env: dict[str, str]) -> None:
    mappings = {**WELL_KNOWN, **PROTOS}
    m_opts = ",".join(f"M{proto}={pkg}" for proto, pkg in mappings.items())
    scratch = gopath / "protoc-out"
    # One protoc run per file. protoc-gen-go 1.3 ignores the M option of the
    # file it generates (go_package holds only a package name), so it
    # writes <out>/<dir of the .proto>/; move each file into its package.
    for proto, import_path in PROTOS.items():
        scratch.mkdir(exist_ok=True)
        _run(
            [
                tools["protoc"],
                f"--plugin=protoc-gen-go={tools['protoc-gen-go']}",
                f"-I{PROTO_ROOT}",
                "-I/usr/include",
                f"--go_out=plugins=grpc,paths=import,{m_opts}:{scratch}",
                proto,
            ],
            env,
            PROTO_ROOT,
        )
        generated = list(scratch.rglob("*.pb.go"))
        if len(generated) != 1:
            raise NomadSimBuildError(f"protoc-gen-go produced {generated} for {proto}")
        dest = gopath / "src" / import_path
        dest.mkdir(parents=True, exist_ok=True)
        shutil.move(generated[0], dest / generated[0].name)
        shutil.rmtree(scratch)


def build_nomadsim(*, force: bool = False) -> Path:
    """Build (once) and return the path of the cached nomadsim binary."""
    digest = source_hash()
    target = BUILD_DIR / f"nomadsim-{digest}"
    if target.exists() and not force:
        return target
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    tools = _check_prerequisites()
    lock_path = BUILD_DIR / ".nomadsim.lock"
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if target.exists() and not force:
                return target  # another process built it meanwhile
            _build(tools, target)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


def offline_go_env(gopath: Path) -> dict[str, str]:
    """Go in GOPATH mode on Debian's library packages, with no network."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", str(BUILD_DIR)),
        "GO111MODULE": "off",
        "GOPATH": f"{gopath}:{GOCODE}",
        "GOCACHE": str(BUILD_DIR / "gocache"),
        "GOPROXY": "off",
        "GOFLAGS": "",
        # With cgo on (the default), go reuses Debian's precompiled std
        # archives: about 40% faster cold builds than CGO_ENABLED=0.
        "CGO_ENABLED": "1" if shutil.which("gcc") else "0",
        "TMPDIR": str(gopath),
    }


def _build(tools: dict[str, str], target: Path) -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gopath-", dir=BUILD_DIR) as tmp:
        gopath = Path(tmp)
        pkg_dir = gopath / "src" / "nomadsim"
        pkg_dir.mkdir(parents=True)
        for src in sorted(GO_SRC.glob("*.go")):
            shutil.copy2(src, pkg_dir / src.name)
        env = offline_go_env(gopath)
        _generate(tools, gopath, env)
        partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            argv = [tools["go"], "build", "-ldflags=-s -w", "-o", str(partial)]
            _run([*argv, "nomadsim"], env, pkg_dir)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    (BUILD_DIR / f"{target.name}.buildtime").write_text(f"{time.monotonic() - started:.2f}\n")
    _prune(keep=target)


def _prune(keep: Path, max_age: float = 600.0) -> None:
    """Delete binaries of older source versions (not touched for max_age s)."""
    now = time.time()
    for old in BUILD_DIR.glob("nomadsim-*"):
        if old.name.startswith(keep.name):
            continue
        try:
            if now - old.stat().st_mtime > max_age:
                old.unlink()
        except FileNotFoundError:
            pass


if __name__ == "__main__":
    t0 = time.monotonic()
    path = build_nomadsim(force=bool(os.environ.get("NOMADSIM_FORCE_BUILD")))
    print(f"{path} ({time.monotonic() - t0:.2f} s)")
