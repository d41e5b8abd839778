"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s benchmarks``.

They run in the current environment (installing torch and friends again per session is slow); for a
fresh one per session, run ``nox -db virtualenv`` after ``pip install -e ".[dev]" -c constraints.txt``
in each, or simply use ``bash .ci/run``, which builds a new virtual environment from the README."""

import nox

nox.options.default_venv_backend = "none"  # reuse the active environment: installs are slow here
nox.options.sessions = ["lint", "tests"]


@nox.session
def tests(session: nox.Session) -> None:
    """The README's test command."""
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, and the import-layer contracts of pyproject.toml (ARCHITECTURE.md)."""
    session.run("ruff", "check", "sld_core", "backends", "harness", "tests", "benchmarks", "examples")
    session.run("lint-imports")


@nox.session
def benchmarks(session: nox.Session) -> None:
    """pytest-benchmark suites over the bench grid; compare runs with --benchmark-compare."""
    session.run("python", "-m", "pytest", "benchmarks", "--benchmark-only", *session.posargs)
