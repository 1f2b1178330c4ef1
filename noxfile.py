"""Developer tasks: ``nox -s tests``, ``lint``, ``typecheck``, ``bench``, ``bench-core``."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

SOURCES = ["taskflow", "tests", "examples", "benchmarks", "noxfile.py"]


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite against the local Redis and RabbitMQ."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", *SOURCES)
    session.run("ruff", "format", "--check", *SOURCES)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package, tests, examples and benchmarks."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """taskflow against its peers, one table (``nox -s bench -- --quick`` for a short run).

    benchmarks/compare.py needs only the standard library here: it builds one
    virtualenv per library under .bench/ itself (see benchmarks/README.md).
    """
    session.run("python", "benchmarks/compare.py", *session.posargs)


@nox.session(name="bench-core")
def bench_core(session: nox.Session) -> None:
    """taskflow's own overhead on the MemoryBroker, no server involved."""
    session.install("-e", ".[all]")
    session.run("python", "benchmarks/core_overhead.py", *session.posargs)
