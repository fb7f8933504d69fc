"""What one ``run`` of ``/bin/true`` costs the machine: CPU and page faults, per runtime.

``lifecycle.py`` times runs; this counts what a run spends, which is what a
loop of runs on a small machine is bound by (decision 39). Each runtime runs
``-n`` times back to back inside a cgroup of its own (cgroup v1 ``cpuacct``
and ``memory``), and the cgroup's counters give CPU time (user and system)
and page faults per run. sandboxrt's fork server is started inside that
cgroup, so its prewarm work counts; the container's own processes, once in
their container's cgroup, count for no runtime. Same busybox bundle without
a seccomp profile, same private mount namespace as ``lifecycle.py``. Needs
root and the v1 ``cpuacct`` and ``memory`` controllers.

    python benchmarks/cost.py [-n 60]

A copy-on-write fault of a page a forked process shares with its parent
costs about 2.3 µs here; ``--fault-cost`` measures it on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import mmap
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
from lifecycle import bench_others, bundle_flag, cli, workspace

from sandboxrt import Config, Container, FileStore, write_spec_file
from sandboxrt._proc.launcher import default_launcher

V1 = Path("/sys/fs/cgroup")
CONTROLLERS = ("cpuacct", "memory")


@attrs.frozen
class Cost:
    wall_ms: float
    cpu_ms: float
    user_ms: float
    sys_ms: float
    faults: float


def _counters(group: dict[str, Path]) -> tuple[int, int, int, int]:
    cpu = group["cpuacct"]
    total, user, system = (
        int((cpu / f"cpuacct.{name}").read_text()) for name in ("usage", "usage_user", "usage_sys")
    )
    stat = (group["memory"] / "memory.stat").read_text().split("\n")
    faults = next(int(line.split()[1]) for line in stat if line.startswith("total_pgfault "))
    return total, user, system, faults


@contextlib.contextmanager
def own_cgroup(name: str) -> Iterator[dict[str, Path]]:
    """This process in a new cgroup of each of :data:`CONTROLLERS` while the block runs;
    back in its old ones and the new ones removed after."""
    old = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            old[controller] = path
    group = {c: V1 / c / f"sandboxrt-cost-{os.getpid()}-{name}" for c in CONTROLLERS}
    for path in group.values():
        path.mkdir()
    try:
        for path in group.values():
            (path / "cgroup.procs").write_text(str(os.getpid()))
        yield group
    finally:
        for controller in CONTROLLERS:
            (V1 / controller / old[controller].lstrip("/") / "cgroup.procs").write_text(
                str(os.getpid())
            )
        for path in group.values():
            for _ in range(200):  # until what we started there (a fork server) has exited
                try:
                    path.rmdir()
                    break
                except OSError:
                    time.sleep(0.01)


def measure(name: str, n: int, run: Callable[[str], None], *, close: bool = False) -> Cost:
    """Warm up, then ``n`` runs back to back, inside a cgroup of their own."""
    with own_cgroup(name.replace(" ", "-")) as group:
        try:
            for i in range(5):
                run(f"warm{i}")
            time.sleep(0.2)
            before = _counters(group)
            walls = []
            for i in range(n):
                start = time.perf_counter()
                run(f"r{i}")
                walls.append(time.perf_counter() - start)
            time.sleep(0.1)  # what the last run left exiting
            after = _counters(group)
        finally:
            if close:  # the fork server was started in this cgroup: end it with it
                default_launcher().close()
    total, user, system, faults = ((b - a) / n for a, b in zip(before, after, strict=True))
    return Cost(statistics.median(walls) * 1e3, total / 1e6, user / 1e6, system / 1e6, faults)


def fault_cost(pages: int = 2000, rounds: int = 21) -> float:
    """Microseconds per copy-on-write fault: a forked child writing to pages it shares."""
    area = mmap.mmap(-1, pages * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for i in range(pages):
        area[i * mmap.PAGESIZE] = 1
    times = []
    for _ in range(rounds):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            start = time.perf_counter_ns()
            for i in range(pages):
                area[i * mmap.PAGESIZE] = 2
            os.write(write, str(time.perf_counter_ns() - start).encode())
            os._exit(0)
        os.close(write)
        times.append(int(os.read(read, 64)))
        os.close(read)
        os.waitpid(pid, 0)
    return statistics.median(times) / pages / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=60, help="runs per runtime")
    parser.add_argument(
        "--fault-cost", action="store_true", help="also measure one copy-on-write fault"
    )
    args = parser.parse_args()
    if not all((V1 / c / "cgroup.procs").exists() for c in CONTROLLERS):
        raise SystemExit("benchmarks/cost.py needs the cgroup v1 cpuacct and memory controllers")
    with workspace("cost.py", ["/bin/true"]) as (bundle, runs, spec):
        # First, while this process has no thread: it forks.
        fault_us = fault_cost() if args.fault_cost else None
        assert spec.linux is not None
        write_spec_file(
            bundle / "config.json", attrs.evolve(spec, linux=attrs.evolve(spec.linux, seccomp=None))
        )
        costs: dict[str, Cost] = {}
        lazy = Config(lazy_gofer=True)
        for name, config in (("sandboxrt", None), ("sandboxrt lazy_gofer", lazy)):
            store = FileStore(runs / name.replace(" ", "-"))

            def run_sandboxrt(
                cid: str, store: FileStore = store, cfg: Config | None = config
            ) -> None:
                Container.run(cid, bundle, store=store, config=cfg)

            costs[name] = measure(name, args.n, run_sandboxrt, close=True)

        def bench(name: str, extra: list[str]) -> Cost:
            run = cli(name, runs / name, extra)
            flag = bundle_flag(name)
            return measure(name, args.n, lambda cid: run("run", flag, str(bundle), cid))

        costs |= bench_others(bench)
    base = costs["sandboxrt"]
    print(f"\n/bin/true, no seccomp profile, busybox, back to back, n={args.n}; per run")
    heads = f"{'wall ms':>10}{'CPU ms':>10}{'user':>8}{'sys':>8}{'faults':>9}{'CPU x':>8}"
    print(f"{'runtime':<22}{heads}")
    for name, cost in costs.items():
        print(
            f"{name:<22}{cost.wall_ms:>10.2f}{cost.cpu_ms:>10.2f}{cost.user_ms:>8.2f}"
            f"{cost.sys_ms:>8.2f}{cost.faults:>9.0f}{cost.cpu_ms / base.cpu_ms:>8.2f}"
        )
    if fault_us is not None:
        print(f"\none copy-on-write fault: {fault_us:.2f} µs")


if __name__ == "__main__":
    main()
