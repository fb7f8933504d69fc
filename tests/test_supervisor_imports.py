"""The supervisor starts cheaply: it imports only the standard library and stdlib-only modules.

Every check runs in a fresh interpreter (``python -I``), so what this test
process already imported does not count.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

import sandboxrt

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(sandboxrt.__file__)))

#: Third-party packages sandboxrt depends on: none may reach the supervisor.
THIRD_PARTY = ("attrs", "cattrs", "psutil", "portalocker", "backoff", "typing_extensions")

#: The sandboxrt modules the supervisor may import (sandboxrt._os.* as well).
ALLOWED = frozenset(
    {
        "sandboxrt",
        "sandboxrt.errors",
        "sandboxrt._core",
        "sandboxrt._core.abi",
        "sandboxrt._core.idmap",
        "sandboxrt._core.protocol",
        "sandboxrt._core.file_protocol",
        "sandboxrt._core.users",
        "sandboxrt._os",
        "sandboxrt._proc",
        "sandboxrt._proc.supervisor",
        "sandboxrt._proc.children",
        "sandboxrt._proc.confinement",
        "sandboxrt._proc.leftovers",
        "sandboxrt._proc.execs",
        "sandboxrt._proc.limits",
        "sandboxrt._proc.members",
        "sandboxrt._proc.namespaces",
        "sandboxrt._proc.warm",
        "sandboxrt._proc.entry",
        "sandboxrt._proc.init",
        "sandboxrt._proc.hooks",
        "sandboxrt._proc.gofer",
    }
)

_PROBE = """
import json, sys, time
sys.path.insert(0, {parent!r})
start = time.perf_counter()
import {module}
elapsed = time.perf_counter() - start
print(json.dumps({{"modules": sorted(sys.modules), "seconds": elapsed}}))
"""


def fresh_import(module: str, *, site: bool) -> tuple[list[str], float]:
    """Import ``module`` in a fresh isolated interpreter: its sys.modules and the import time.

    ``site=False`` is how the launcher runs (``-I -S``: third-party packages
    cannot even be found). ``site=True`` keeps site-packages importable, so an
    import that would quietly fall back under ``-S`` shows up too.
    """
    flags = ["-I"] if site else ["-I", "-S"]
    code = _PROBE.format(parent=PACKAGE_PARENT, module=module)
    result = subprocess.run(
        [sys.executable, *flags, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    return data["modules"], data["seconds"]


#: sandboxrt._os modules the supervisor must not import: the libseccomp binding is the
#: library's (it compiles profiles to BPF); the init loads the program with seccomp(2).
LIBRARY_ONLY = frozenset({"sandboxrt._os.seccomp"})


def _allowed(name: str, extra: frozenset[str] = frozenset()) -> bool:
    if name in LIBRARY_ONLY:
        return False
    return name in ALLOWED or name in extra or name.startswith("sandboxrt._os.")


#: Standard modules that must not reach the fork server and what it forks: ``threading``
#: (which ``subprocess`` and ``logging`` import) registers an at-fork handler that would run
#: in every child (about 0.2 ms per fork here); ``shutil`` maps the compression libraries.
NOT_FORKED = ("threading", "subprocess", "logging", "shutil")


def _check(modules: list[str], extra: frozenset[str] = frozenset(), *, site: bool = False) -> None:
    third_party = [m for m in modules if m.split(".")[0] in THIRD_PARTY]
    assert not third_party, f"third-party modules imported: {third_party}"
    heavy = [m for m in modules if m in NOT_FORKED]
    # (With site, what .pth files import is there too: processes are started with -S.)
    assert site or not heavy, f"modules every fork would pay for: {heavy}"
    ours = [m for m in modules if m == "sandboxrt" or m.startswith("sandboxrt.")]
    unexpected = [m for m in ours if not _allowed(m, extra)]
    assert not unexpected, f"sandboxrt modules outside the stdlib-only set: {unexpected}"


@pytest.mark.parametrize("site", [False, True], ids=["-I -S", "-I"])
def test_supervisor_imports_only_stdlib_only_modules(site: bool) -> None:
    modules, seconds = fresh_import("sandboxrt._proc.supervisor", site=site)
    _check(modules, site=site)
    print(
        f"\nimport sandboxrt._proc.supervisor ({'site' if site else 'no site'}): "
        f"{seconds * 1000:.1f} ms, {len(modules)} modules"
    )


@pytest.mark.parametrize("site", [False, True], ids=["-I -S", "-I"])
def test_gofer_imports_only_stdlib_only_modules(site: bool) -> None:
    """The gofer starts like a sandbox (a fresh interpreter or a fork of the fork server)."""
    modules, _ = fresh_import("sandboxrt._proc.gofer", site=site)
    _check(modules, site=site)
    assert "sandboxrt._proc.supervisor" not in modules  # nothing of the sandbox's side


@pytest.mark.skipif(
    importlib.util.find_spec("sandboxrt._proc.forkserver") is None, reason="no fork server"
)
def test_fork_server_imports_only_stdlib_only_modules() -> None:
    """The fork server runs the supervisor's code in-process: the same rule holds."""
    modules, seconds = fresh_import("sandboxrt._proc.forkserver", site=False)
    _check(modules, extra=frozenset({"sandboxrt._proc.forkserver"}))
    print(f"\nimport sandboxrt._proc.forkserver: {seconds * 1000:.1f} ms")


def test_import_sandboxrt_is_lazy() -> None:
    modules, seconds = fresh_import("sandboxrt", site=True)
    heavy = [m for m in modules if m.split(".")[0] in THIRD_PARTY]
    assert not heavy, f"`import sandboxrt` imported {heavy}"
    ours = sorted(m for m in modules if m.startswith("sandboxrt."))
    assert set(ours) <= {"sandboxrt.errors"}, ours
    print(f"\nimport sandboxrt: {seconds * 1000:.1f} ms")


def test_every_public_name_resolves() -> None:
    """Every name in ``__all__`` resolves (in a fresh interpreter too), and nothing else does."""
    code = (
        f"import sys; sys.path.insert(0, {PACKAGE_PARENT!r}); import sandboxrt\n"
        "missing = [n for n in sandboxrt.__all__ if getattr(sandboxrt, n, None) is None]\n"
        "print(missing)"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert len(set(sandboxrt.__all__)) == len(sandboxrt.__all__)
    for name in sandboxrt.__all__:
        assert getattr(sandboxrt, name) is not None, name
    assert sorted(sandboxrt.__all__) == dir(sandboxrt)
    assert isinstance(sandboxrt.__version__, str)
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        _ = sandboxrt.NoSuchName  # type: ignore[attr-defined]
    # Names come from where they are defined: the same objects, not copies.
    from sandboxrt.container import Container
    from sandboxrt.errors import SandboxrtError

    assert sandboxrt.Container is Container
    assert sandboxrt.SandboxrtError is SandboxrtError
    for name in sandboxrt.__all__:
        value = getattr(sandboxrt, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, SandboxrtError), name
