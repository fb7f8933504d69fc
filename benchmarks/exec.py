"""Exec latency: sandboxrt beside runc, crun and runsc, in one run.

Prints the median and spread (p10-p90) of running ``/bin/true`` in an
already running container, from the exec call until its exit status is
known, for every runtime that is installed, with ratios against sandboxrt
(also in a sandbox with a user namespace of its own: ``sbrt-userns``).
sandboxrt is timed as a library call (``Container.exec(...).wait()``), the
others as their CLI (``<runtime> exec ID /bin/true``), which includes
starting that binary. Same busybox bundle, same private mount namespace as
``lifecycle.py`` (whose helpers this reuses). Needs root.

    python benchmarks/exec.py [-n 200]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from lifecycle import bench_others, summary, timed, workspace

from sandboxrt import Container, FileStore

#: What each runtime needs on the command line here (as in lifecycle.py).
WARMUP = 5


def bench_sandboxrt(bundle: Path, root: Path, n: int) -> list[float]:
    container = Container.create("exec-bench", bundle, store=FileStore(root))
    try:
        container.start()
        for _ in range(WARMUP):
            assert container.exec(["/bin/true"]).wait() == 0
        return [timed(lambda: container.exec(["/bin/true"]).wait()) for _ in range(n)]
    finally:
        container.destroy()


#: The mapping of the "sandboxrt, userns" row: container ids 0-65535 on host 100000-165535.
USERNS_MAPPING = [{"containerID": 0, "hostID": 100000, "size": 65536}]


def userns_bundle(bundle: Path) -> Path:
    """A bundle beside ``bundle``, of the same rootfs, whose sandbox has a user namespace
    of its own (exec then takes the slow way: decision 42)."""
    document = json.loads((bundle / "config.json").read_text())
    document["root"]["path"] = str((bundle / document["root"]["path"]).resolve())
    document["linux"]["namespaces"].append({"type": "user"})
    document["linux"]["uidMappings"] = document["linux"]["gidMappings"] = USERNS_MAPPING
    mapped = bundle.with_name(bundle.name + "-userns")
    mapped.mkdir()
    (mapped / "config.json").write_text(json.dumps(document))
    return mapped


def bench_cli(binary: str, bundle: Path, root: Path, n: int, extra: list[str]) -> list[float]:
    """``<binary> exec`` into a container made with ``create`` and ``start``."""
    base = [binary, "--root", str(root), *extra]
    bundle_flag = "--bundle" if binary != "runsc" else "-bundle"
    # A file, not a pipe, for stderr: the container's init holds it open.
    errors = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as this function

    def run(*args: str) -> None:
        errors.seek(0)
        errors.truncate()
        done = subprocess.run(
            [*base, *args],
            check=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        if done.returncode != 0:
            errors.seek(0)
            raise subprocess.CalledProcessError(done.returncode, args, stderr=errors.read())

    cid = "exec-bench"
    run("create", bundle_flag, str(bundle), cid)
    try:
        run("start", cid)
        for _ in range(WARMUP):
            run("exec", cid, "/bin/true")
        return [timed(lambda: run("exec", cid, "/bin/true")) for _ in range(n)]
    finally:
        subprocess.run([*base, "delete", "--force", cid], check=False, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="execs per runtime")
    args = parser.parse_args()
    with workspace("exec.py", ["sleep", "100000"]) as (bundle, runs, _):
        results = {"sandboxrt": bench_sandboxrt(bundle, runs / "sbrt", args.n)}
        mapped = userns_bundle(bundle)
        results["sbrt-userns"] = bench_sandboxrt(mapped, runs / "sbrt-userns", args.n)
        results |= bench_others(
            lambda name, extra: bench_cli(name, bundle, runs / name, args.n, extra)
        )
        base = summary(results["sandboxrt"])[0]
        print(f"\nexec /bin/true to exit in a running busybox container (default spec), n={args.n}")
        print(f"{'runtime':<12}{'median ms':>10} {'p10-p90':>15} {'ratio':>7}")
        for name, timings in results.items():
            med, p10, p90 = summary(timings)
            print(f"{name:<12}{med:10.2f} [{p10:6.2f}-{p90:6.2f}] x{med / base:5.2f}")


if __name__ == "__main__":
    main()
