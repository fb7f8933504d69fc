"""Development sessions: tests, lint, typecheck, docs."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PACKAGE = "sandboxrt"


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite (real namespaces and processes: run as root)."""
    session.install("-e", ".[tests]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package, and on what a caller's checker sees of it."""
    session.install("-e", ".[tests]", "mypy", "types-psutil")
    session.run("mypy", "--strict", PACKAGE)
    session.run("mypy", "--strict", "tests/typing_public_api.py")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the docs with warnings as errors."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")
