"""Developer tasks: ``nox -s tests``, ``lint``, ``typecheck``, ``bench``, ``bench-core``."""

from __future__ import annotations

import shutil
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

SOURCES = ["taskflow", "tests", "examples", "benchmarks", "noxfile.py"]


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite against the local Redis and RabbitMQ."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)
    session.notify("tests-django6", posargs=[])


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


def _newest_python(minimum: tuple[int, int]) -> str:
    """The newest interpreter at least ``minimum`` that pyenv or PATH has (else its version)."""
    found = sorted(
        (tuple(int(n) for n in path.parent.parent.name.split(".")[:2]), str(path))
        for path in Path.home().glob(".pyenv/versions/3.*/bin/python3")
        if path.parent.parent.name.count(".") == 2
    )
    usable = [p for version, p in found if version >= minimum]
    if usable:
        return usable[-1]
    return next(
        (name for name in ("python3.14", "python3.13", "python3.12") if shutil.which(name)),
        f"{minimum[0]}.{minimum[1]}",
    )


@nox.session(name="tests-django6", python=_newest_python((3, 12)))
def tests_django6(session: nox.Session) -> None:
    """The sync-producer and Django tests on Django 6 (its own django.tasks).

    Django 6 needs Python >= 3.12, so this runs on the newest one pyenv has;
    ``nox -s tests`` (Python 3.11, Django 5.2 LTS with the django-tasks
    backport) runs this session after its own.
    """
    session.install(
        "-e",
        ".[django,redis]",
        "django>=6",
        "pytest>=8.2",
        "pytest-timeout>=2.3",
        "httpx>=0.27",
        "gunicorn>=27",
    )
    session.run(
        "python", "-c", "import django, sys; print('Django', django.__version__, sys.version)"
    )
    session.run("pytest", "tests/sync", "--ignore", "tests/sync/test_flask.py", *session.posargs)
