"""The cost of a pod's subcontainers: adding one to a running sandbox, and more.

Prints the median and spread (p10-p90) of ``Pod.add_container`` (create a
subcontainer of a running pod: record, cgroup, its init's root, up to
``created``), of ``start``, of an ``exec`` of ``/bin/true`` into it, and of
its ``destroy``, beside a root container's create in a new sandbox for
reference. Same busybox bundle and private mount namespace as
``lifecycle.py``. Needs root.

    python benchmarks/pods.py [-n 20]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lifecycle import summary, timed, workspace

from sandboxrt import Container, FileStore, Pod

WARMUP = 3
STEPS = ("add", "start", "exec", "destroy", "root create", "root exec")


def bench(bundle: Path, root: Path, n: int) -> dict[str, list[float]]:
    store = FileStore(root)
    out: dict[str, list[float]] = {step: [] for step in STEPS}
    pod = Pod.create("pod", bundle, store=store)
    try:
        pod.root.start()
        for i in range(WARMUP + n):
            kept = i >= WARMUP
            added: list[Container] = []
            took = timed(lambda i=i, added=added: added.append(pod.add_container(f"c{i}", bundle)))
            sub = added[0]
            steps = {
                "add": took,
                "root exec": timed(lambda: pod.root.exec(["/bin/true"]).wait()),
                "start": timed(sub.start),
                "exec": timed(lambda sub=sub: sub.exec(["/bin/true"]).wait()),
                "destroy": timed(sub.destroy),
            }
            if kept:
                for step, value in steps.items():
                    out[step].append(value)
        for i in range(WARMUP + n):
            took = timed(lambda i=i: Container.create(f"r{i}", bundle, store=store))
            Container.load(f"r{i}", store=store).destroy()
            if i >= WARMUP:
                out["root create"].append(took)
    finally:
        pod.destroy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="iterations per step")
    args = parser.parse_args()
    with workspace("pods.py", ["sleep", "1000"]) as (bundle, runs, _):
        results = bench(bundle, runs / "sbrt", args.n)
    print(f"\nsubcontainers of a running pod (busybox, default spec), n={args.n}")
    print("step          median ms [p10-p90]")
    for step in STEPS:
        med, p10, p90 = summary(results[step])
        print(f"{step:<13}{med:7.2f} [{p10:6.2f}-{p90:6.2f}]")


if __name__ == "__main__":
    main()
