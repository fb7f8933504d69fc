"""A pod: a web server and a client in one sandbox, talking over its loopback.

The pod's root container holds the sandbox (as a Kubernetes pause container
does); the server and the client are added to it, each with its own root and
cgroup, sharing the sandbox's network, PID, IPC and UTS namespaces. The host's
network is out of their reach. Rootfs: the host's /usr, read-only. Needs root.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from sandboxrt import DEVNULL, PIPE, MemoryStore, Pod
from sandboxrt.bundle import make_bundle

SERVER = ["python3", "-m", "http.server", "8000", "--bind", "127.0.0.1", "--directory", "/usr"]
CLIENT = [
    "python3",
    "-c",
    "import time, urllib.request\n"
    "for _ in range(100):\n"
    "    try:\n"
    "        page = urllib.request.urlopen('http://127.0.0.1:8000/', timeout=1)\n"
    "        break\n"
    "    except OSError:\n"
    "        time.sleep(0.05)\n"
    "print(page.status, page.headers['Server'])",
]


def main() -> int:
    store = MemoryStore()
    with tempfile.TemporaryDirectory(prefix="sandboxrt-pod-") as tmp:
        bundles = {}
        for name, args in {"pause": ["sleep", "3600"], "server": SERVER, "client": CLIENT}.items():
            bundles[name] = Path(tmp) / name
            make_bundle(bundles[name], args, readonly=True)
        pod = Pod.create("web", bundles["pause"], store=store)
        try:
            pod.root.start()
            # (its request log would go to our stderr)
            server = pod.add_container("web-server", bundles["server"], store=store, stderr=DEVNULL)
            server.start()
            # (a with block closes its pipe once it is destroyed, as Popen's does)
            with pod.add_container(
                "web-client", bundles["client"], store=store, stdout=PIPE
            ) as client:
                client.start()
                assert client.stdout is not None
                print("client got:", client.stdout.read().decode().strip())
                print("client exit status:", client.wait())
                print("containers:", [c.id for c in pod.containers()])
        finally:
            pod.destroy()  # the root's destroy takes the whole sandbox down
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
