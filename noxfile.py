"""Developer sessions. They run in the current environment (``scripts/dev.sh setup``).

Every environment is installed from the lock files in ``requirements/``; ``lock`` and
``upgrade`` write them, ``newest`` is the one session that deliberately ignores them.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.error_on_missing_interpreters = True

PY = sys.executable
REPO = Path(__file__).resolve().parent
REQUIREMENTS = REPO / "requirements"
#: The oldest Python the project supports; the locks hold for it and every newer one.
LOCK_PYTHON = "3.11"


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.run(PY, "-m", "ruff", "check", ".")
    session.run(PY, "-m", "ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.run(PY, "-m", "mypy")


#: pytest-xdist: the tests mostly wait (VMs booting, SSH, subprocesses), so more workers than
#: cores pay. On 2 cores the whole suite took 245 s with 2 workers, 183 s with 3, 139 s with 4
#: and 128 s with 6; one at a time, 462 s. With 4 the load (about 7 on 2 cores) stretched a
#: graceful guest shutdown past a 5 s kill_timeout now and then, so 3 it is: the tests' own
#: deadlines keep their meaning. Each worker takes two tests at a time, and the ``slow`` ones
#: first (tests/conftest.py), so that none of them is left to run alone at the end.
#: ``-n 0`` after ``--`` runs them in one process.
PARALLEL = ("-n", "3", "--maxschedchunk", "2")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, conformance against the Go stand-in included, in 3 workers."""
    session.run(PY, "-m", "pytest", "-q", "--durations=10", *PARALLEL, *session.posargs)


@nox.session
def conformance(session: nox.Session) -> None:
    """Only the tests that drive the plugin through the Go Nomad-client stand-in."""
    session.run(PY, "-m", "pytest", "-q", *PARALLEL, "tests/conformance", *session.posargs)


@nox.session
def protos(session: nox.Session) -> None:
    """Regenerate tart_trio/_proto from proto/ (the test suite fails when it drifts)."""
    session.run(PY, "tools/protogen.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks against in-run baselines; writes BENCHMARKS.md (about 5 min on 2 cores)."""
    session.run(PY, "-m", "bench", *session.posargs)


@nox.session
def zipapp(session: nox.Session) -> None:
    """Build build/nomad-driver-tart.pyz, one file for plugin_dir (tools/build_zipapp.py -h)."""
    session.run(PY, "tools/build_zipapp.py", *session.posargs)


def _compile(session: nox.Session, sources: list[str], output: str, *extra: str) -> None:
    session.run(
        PY,
        "-m",
        "uv",
        "pip",
        "compile",
        *sources,
        *extra,
        "--constraint",
        "requirements/constraints.in",
        "--universal",
        "--python-version",
        LOCK_PYTHON,
        "--generate-hashes",
        "--no-strip-markers",
        "--custom-compile-command",
        "nox -s lock",
        "--quiet",
        "--output-file",
        output,
        *session.posargs,
    )


def _write_locks(session: nox.Session, *upgrade: str) -> None:
    with (REPO / "pyproject.toml").open("rb") as f:
        build_requires = tomllib.load(f)["build-system"]["requires"]
    build_in = "requirements/build.in"
    (REPO / build_in).write_text(
        "# [build-system] requires of pyproject.toml, written by `nox -s lock`.\n"
        + "\n".join(build_requires)
        + "\n"
    )
    # Runtime first: the plugin's own dependencies, what the zipapp and a Mac install carry.
    # The build backend next, for installs from source. The development lock (both of them
    # plus the tools) is held to their pins, so that the tests run exactly what users
    # install.
    _compile(session, ["pyproject.toml"], "requirements/runtime.lock", *upgrade)
    _compile(session, [build_in], "requirements/build.lock", *upgrade)
    _compile(
        session,
        ["pyproject.toml", build_in],
        "requirements/dev.lock",
        "--extra",
        "dev",
        "--constraint",
        "requirements/runtime.lock",
        "--constraint",
        "requirements/build.lock",
        "--annotation-style",
        "line",
        *upgrade,
    )


@nox.session
def lock(session: nox.Session) -> None:
    """Re-resolve requirements/*.lock after pyproject.toml changed, keeping the pins it can."""
    _write_locks(session)


@nox.session
def upgrade(session: nox.Session) -> None:
    """Move every lock to the newest releases the ranges and constraints allow.

    Then run ``scripts/dev.sh test``: it reinstalls from the new lock, and the suite shows
    whether the new versions pass.
    """
    _write_locks(session, "--upgrade")


@nox.session(venv_backend="venv")
def newest(session: nox.Session) -> None:
    """The plugin under the newest releases of its dependencies, ignoring every lock.

    An early warning, not a gate (CI does not run it): what the next ``nox -s upgrade``
    will bring. It runs the tests of the plugin process (its handshake, and that a
    warning reaches Nomad only as an hclog line) and one whole task life, in which the
    plugin imports asyncssh and the rest. The test process's own warnings are left to
    Python's defaults here: it is the plugin's stderr that is checked.
    """
    session.install("--upgrade", ".", "pytest", "pytest-trio", "cryptography")
    session.run("python", "-m", "pip", "freeze")
    session.run(
        "python",
        "-m",
        "pytest",
        "-q",
        "-W",
        "default",
        "-p",
        "no:xdist",
        "tests/test_plugin_process.py",
        "tests/conformance/test_lifecycle.py::test_seed_job_runs_logs_stops_and_is_destroyed",
        *session.posargs,
    )
