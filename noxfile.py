"""Developer sessions. They reuse the current environment by default (``nox -s tests``);
pass ``--no-venv``-free runs with ``nox -s tests --reuse-venv=no -db virtualenv`` to get a fresh one."""

import nox

nox.options.default_venv_backend = "none"  # reuse the active environment: installs are slow here
nox.options.sessions = ["lint", "tests"]


@nox.session
def tests(session: nox.Session) -> None:
    """The README's test command."""
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.run("ruff", "check", "sld_core", "backends", "harness", "tests", "benchmarks", "examples")


@nox.session
def benchmarks(session: nox.Session) -> None:
    """pytest-benchmark suites over the bench grid; compare runs with --benchmark-compare."""
    session.run("python", "-m", "pytest", "benchmarks", "--benchmark-only", *session.posargs)
