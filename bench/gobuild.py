"""Build the minimal go-plugin server (``bench/goplugin``) the way nomadsim is built.

Offline, GOPATH mode, from Debian's packages: ``GO111MODULE=off``,
``GOPATH=<tmp>:/usr/share/gocode``, ``GOPROXY=off``, the repository's shared Go build
cache (``build/gocache``, so go-plugin and grpc-go are usually compiled already) and the
same flags. The binary is cached as ``build/bench-goplugin-<hash of the sources>``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.conformance.build import BUILD_DIR, GOCODE, offline_go_env

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SOURCE = HERE / "goplugin"


class GoBuildError(RuntimeError):
    """The baseline server could not be built (missing Debian package, compile error)."""


def _digest() -> str:
    h = hashlib.sha256()
    for path in [*sorted(SOURCE.glob("*.go")), Path(__file__).resolve()]:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build_goplugin() -> Path:
    """Build once and return the binary's path."""
    target = BUILD_DIR / f"bench-goplugin-{_digest()}"
    if target.exists():
        return target
    go = shutil.which("go")
    if go is None:
        raise GoBuildError("`go` is missing (Debian package golang-go)")
    if not (GOCODE / "src/github.com/hashicorp/go-plugin").is_dir():
        raise GoBuildError("go-plugin is missing (golang-github-hashicorp-go-plugin-dev)")
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-gopath-", dir=BUILD_DIR) as tmp:
        pkg = Path(tmp) / "src" / "benchgoplugin"
        pkg.mkdir(parents=True)
        for src in SOURCE.glob("*.go"):
            shutil.copy2(src, pkg / src.name)
        env = offline_go_env(Path(tmp))
        partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        argv = [go, "build", "-ldflags=-s -w", "-o", str(partial), "benchgoplugin"]
        proc = subprocess.run(argv, env=env, cwd=pkg, capture_output=True, text=True)
        if proc.returncode != 0:
            partial.unlink(missing_ok=True)
            raise GoBuildError(f"go build failed:\n{proc.stdout}{proc.stderr}")
        os.replace(partial, target)
    return target


if __name__ == "__main__":
    print(build_goplugin())
