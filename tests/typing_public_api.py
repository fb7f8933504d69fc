"""What a caller's type checker sees of the public API (``nox -s typecheck`` checks it
with ``mypy --strict``; pytest does not collect it). A name that does not exist is an
error (the lazy ``__getattr__`` is hidden from checkers), and the text modes of
``exec_run`` type its output as ``str``."""

from __future__ import annotations

import subprocess
from typing import assert_type

import sandboxrt
from sandboxrt import Container, SandboxrtError


def public_api(container: Container) -> None:
    assert_type(container.exec_run(["true"]), subprocess.CompletedProcess[bytes])
    assert_type(container.exec_run(["true"], text=True), subprocess.CompletedProcess[str])
    assert_type(container.exec_run(["true"], encoding="utf-8"), subprocess.CompletedProcess[str])
    assert_type(container.exec_run(["true"], errors="replace"), subprocess.CompletedProcess[str])
    assert_type(
        container.exec_run(["true"], universal_newlines=True), subprocess.CompletedProcess[str]
    )
    assert_type(container.communicate(b"x", timeout=1), tuple[bytes | None, bytes | None])
    try:
        container.start()
    except SandboxrtError as error:
        assert_type(error.container_id, str)
    assert_type(sandboxrt.__version__, str)
    _ = sandboxrt.Containr  # type: ignore[attr-defined]  # (unused, were the name Any)
