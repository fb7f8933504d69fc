"""The examples run as a user runs them (the README's first command runs the quickstart)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import needs_root

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str) -> str:
    """Run an example as users would copy it, in Python's development mode with warnings
    as errors: an unclosed pipe or file is a failure (what users copy must be clean)."""
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr  # (one at exit leaves the status 0)
    return done.stdout


@needs_root
def test_the_quickstart_prints_hostname_pid_and_id() -> None:
    out = run_example("quickstart.py")
    assert "hostname: sandboxrt\n" in out
    # Its shell is the container's init: the child of the supervisor, PID 1 of the sandbox.
    assert re.search(r"^pid: 2$", out, re.M), out
    assert "id: uid=0(root) gid=0(root)" in out
    assert out.endswith("container exited with status 0\n")


@needs_root
def test_the_snippet_runner_isolates_and_limits_each_snippet() -> None:
    lines = {
        line.split()[0]: line.split(None, 1)[1] for line in run_example("snippets.py").splitlines()
    }
    assert lines["hello"].split() == ["ok", "hello", "from", "sandboxrt"]
    assert (
        lines["network"].startswith("ok")
        and "no network: Network is unreachable" in lines["network"]
    )
    assert lines["memory"].strip() == "out of memory"  # the OOM killer, at its memory limit
    assert lines["forever"].strip() == "timed out"


@needs_root
def test_the_pod_example_talks_over_the_pods_loopback() -> None:
    out = run_example("pod.py")
    assert "client got: 200 SimpleHTTP" in out
    assert "client exit status: 0\n" in out
    assert "containers: ['web', 'web-client', 'web-server']" in out
