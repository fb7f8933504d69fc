"""Run untrusted Python snippets in isolation, as a test harness or a grader would.

Each snippet runs in a container of its own: no network but loopback, a memory
and a process-count limit, a read-only root, a time limit, and its output
captured. The rootfs is an almost empty directory into which the container
bind-mounts the host's /usr read-only, so the host's python3 runs inside with
no downloads. Needs root.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from sandboxrt import PIPE, STDOUT, Container, MemoryStore, ProcessTimeoutError, Spec, load_spec
from sandboxrt.bundle import make_bundle

SNIPPETS = {
    "hello": "print('hello from', __import__('socket').gethostname())",
    "network": (
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('192.0.2.1', 80), timeout=1)\n"
        "except OSError as exc:\n"
        "    print('no network:', exc.strerror)"
    ),
    "memory": "x = bytearray(512 << 20)\nprint('allocated', len(x))",
    "forever": "while True: pass",
}
MEMORY_LIMIT = 128 << 20
TIME_LIMIT = 2.0


def snippet_spec(bundle: Path, code: str) -> Spec:
    """The bundle's spec with ``code`` as its program, and a memory and a pids limit (a
    running container's would change with ``container.update``, as with ``runc update``)."""
    document = json.loads((bundle / "config.json").read_text())
    document["process"]["args"] = ["python3", "-c", code]
    document["linux"]["resources"] = {"memory": {"limit": MEMORY_LIMIT}, "pids": {"limit": 64}}
    return load_spec(document)


def run_snippet(name: str, code: str, bundle: Path, store: MemoryStore) -> tuple[str, str]:
    """Run ``code`` as the program of a fresh container; (outcome, output)."""
    spec = snippet_spec(bundle, code)
    with Container.create(
        f"snippet-{name}", bundle, spec=spec, store=store, stdout=PIPE, stderr=STDOUT
    ) as c:
        c.start()
        try:
            output, _ = c.communicate(timeout=TIME_LIMIT)  # (as Popen.communicate)
        except ProcessTimeoutError:
            c.kill("KILL", all=True)  # (as with subprocess: kill, then read what is left)
            c.communicate()
            return "timed out", ""
        status = c.wait()  # (it has exited: its status)
        if status == 0:
            outcome = "ok"
        elif c.oom_killed:  # (the kernel's OOM killer, at the memory limit)
            outcome = "out of memory"
        else:
            outcome = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
        lines = (output or b"").decode(errors="replace").strip().splitlines()
        return outcome, lines[-1] if lines else ""


def main() -> int:
    store = MemoryStore()
    with tempfile.TemporaryDirectory(prefix="sandboxrt-snippets-") as tmp:
        bundle = Path(tmp) / "bundle"
        make_bundle(bundle, ["python3"], readonly=True)
        for name, code in SNIPPETS.items():
            outcome, last_line = run_snippet(name, code, bundle, store)
            print(f"{name:8} {outcome:20} {last_line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
