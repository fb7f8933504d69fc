"""Run a real container: print its hostname, its PID in the sandbox and `id`.

The rootfs is made on the spot with no downloads: an almost empty directory
into which the container bind-mounts the host's /usr read-only (inside its own
mount namespace). Needs root (or the privileges to create namespaces).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from sandboxrt import Container, MemoryStore
from sandboxrt.bundle import make_bundle

SCRIPT = 'echo "hostname: $(hostname)"; echo "pid: $$"; echo "id: $(id)"'


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="sandboxrt-quickstart-") as tmp:
        bundle = Path(tmp) / "bundle"
        make_bundle(bundle, ["sh", "-c", SCRIPT])
        code = Container.run("quickstart", bundle, store=MemoryStore())
        print(f"container exited with status {code}")
        return code


if __name__ == "__main__":
    raise SystemExit(main())
