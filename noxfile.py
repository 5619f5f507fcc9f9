"""Developer sessions. They run in the current environment (``scripts/dev.sh setup``)."""

from __future__ import annotations

import sys

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.error_on_missing_interpreters = True

PY = sys.executable


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.run(PY, "-m", "ruff", "check", ".")
    session.run(PY, "-m", "ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.run(PY, "-m", "mypy")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, conformance against the Go stand-in included."""
    session.run(PY, "-m", "pytest", "-q", "--durations=10", *session.posargs)


@nox.session
def conformance(session: nox.Session) -> None:
    """Only the tests that drive the plugin through the Go Nomad-client stand-in."""
    session.run(PY, "-m", "pytest", "-q", "tests/conformance", *session.posargs)


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
