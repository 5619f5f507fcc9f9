"""What is installed is what the lock files say: the test environment, and a user's install.

``requirements/runtime.lock`` is what the plugin runs on (the zipapp, ``scripts/install.sh``),
``requirements/build.lock`` builds it from source, ``requirements/dev.lock`` is this
environment. All three come from ``nox -s lock`` (uv, universal, with hashes).
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
LOCKS = REPO / "requirements"
#: The installer itself, and this project: not dependencies.
NOT_LOCKED = {"pip", "nomad-driver-tart"}


def pins(lock: Path, *, for_this_python: bool = True) -> dict[str, str]:
    """``{name: version}`` of a lock; only entries whose markers hold here, by default."""
    found = {}
    for line in lock.read_text().splitlines():
        if not line or line[0] in " #-":
            continue
        requirement = Requirement(line.rstrip(" \\"))
        if for_this_python and requirement.marker and not requirement.marker.evaluate():
            continue
        (spec,) = requirement.specifier
        assert spec.operator == "==", line
        found[canonicalize_name(requirement.name)] = spec.version
    return found


def frozen(python: str) -> dict[str, str]:
    """``pip freeze --all`` of an interpreter's environment, as ``{name: version}``."""
    out = subprocess.run(
        [python, "-m", "pip", "freeze", "--all", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = {}
    for line in out.splitlines():
        if line.startswith(("#", "-e ")):  # this project, installed editable
            continue
        name, sep, version = line.partition("==")
        if not sep:  # "name @ file://...": this project, installed from a directory
            name, version = line.split(" @ ", 1)[0], "(not from an index)"
        if canonicalize_name(name) not in NOT_LOCKED:
            found[canonicalize_name(name)] = version
    return found


def pyproject() -> dict[str, list[str]]:
    with (REPO / "pyproject.toml").open("rb") as f:
        data = tomllib.load(f)
    return {
        "runtime": data["project"]["dependencies"],
        "dev": data["project"]["optional-dependencies"]["dev"],
        "build": data["build-system"]["requires"],
    }


def test_this_environment_is_exactly_the_dev_lock() -> None:
    assert frozen(sys.executable) == pins(LOCKS / "dev.lock")


def test_the_locks_agree_and_satisfy_every_range_in_pyproject() -> None:
    runtime, build, dev = (
        pins(LOCKS / f"{name}.lock", for_this_python=False) for name in ("runtime", "build", "dev")
    )
    assert {name: dev[name] for name in runtime} == runtime, "tests run what users install"
    assert {name: dev[name] for name in build} == build
    for part, lock in (("runtime", runtime), ("dev", dev), ("build", build)):
        for text in pyproject()[part]:
            wanted = Requirement(text)
            name = canonicalize_name(wanted.name)
            assert name in lock, f"{text} ({part}) is not in the lock: run nox -s lock"
            assert lock[name] in wanted.specifier, f"{name}=={lock[name]} is not {text}"


def test_every_pin_carries_hashes() -> None:
    for lock in LOCKS.glob("*.lock"):
        entries = lock.read_text().split("\n")
        for i, line in enumerate(entries):
            if line and line[0] not in " #-":
                assert entries[i + 1].lstrip().startswith("--hash=sha256:"), (lock.name, line)


@pytest.mark.slow
@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the venv must be 3.11 to compare")
def test_install_script_installs_exactly_the_runtime_lock(tmp_path: Path) -> None:
    prefix = tmp_path / "nomad-driver-tart"
    done = subprocess.run(
        [str(REPO / "scripts" / "install.sh"), str(prefix)],
        # No byte-compiling here: what is installed is the question, and compiling all of
        # it is most of the install's CPU time.
        env={
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "PIP_NO_COMPILE": "1",
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"installed: {prefix}/bin/nomad-driver-tart"
    expected = pins(LOCKS / "runtime.lock") | pins(LOCKS / "build.lock")
    assert frozen(str(prefix / "bin" / "python")) == expected
