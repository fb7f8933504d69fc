"""What a running container costs in memory: sandboxrt beside runc, crun and runsc.

Each runtime creates and starts ``-k`` containers running ``sleep`` (busybox
bundle, no seccomp profile, same private mount namespace as ``lifecycle.py``)
and, with all of them running, two figures are taken per container:

- **runtime PSS**: the proportional set size of the runtime's own processes
  that live beside the container (for sandboxrt its supervisor, its gofer and
  anything else under the supervisor but the workload; for runsc its sandbox
  and gofer; runc and crun leave none once the container has started);
- **machine**: the growth of the host's used memory (``MemTotal - MemFree -
  Buffers - Cached + Shmem - SReclaimable``), the workload and the kernel's
  share (page tables, namespaces, cgroups) included.

sandboxrt's fork server and the processes it keeps warm are one per library
process, not per container: their PSS is printed once, apart. A second
sandboxrt row has ``Config(lazy_gofer=True)``: no gofer until a file call
(decision 38). Needs root.

    python benchmarks/memory.py [-k 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
from lifecycle import bench_others, bundle_flag, cli, workspace

from sandboxrt import DEVNULL, Config, Container, FileStore, write_spec_file
from sandboxrt._proc.launcher import default_launcher

#: Settling time after the last start, before anything is read.
SETTLE = 0.5


@attrs.frozen
class Footprint:
    runtime_pss_kib: float
    machine_kib: float
    processes: float


def used_kib() -> int:
    """The host's used memory, tmpfs included, page cache and reclaimable slab not."""
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        info[key] = int(value.split()[0])
    free = info["MemFree"] + info["Buffers"] + info["Cached"] - info["Shmem"]
    return info["MemTotal"] - free - info["SReclaimable"]


def pss_kib(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("Pss:"))


def processes() -> dict[int, tuple[int, str]]:
    """Every process: pid -> (parent pid, command name)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        found[int(entry)] = (int(stat[stat.rindex(")") + 2 :].split()[1]), name)
    return found


def descendants(roots: set[int], table: dict[int, tuple[int, str]]) -> set[int]:
    found = set(roots)
    grew = True
    while grew:
        more = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return found


def is_workload(pid: int, table: dict[int, tuple[int, str]]) -> bool:
    return table[pid][1] == "sleep"


def footprint(
    start: Callable[[int], None], runtime_pids: Callable[[set[int]], set[int]], k: int
) -> Footprint:
    """Start ``k`` containers with ``start(i)``; ``runtime_pids(new)`` picks the runtime's
    processes among the processes that appeared (``new``)."""
    time.sleep(SETTLE)
    before, used_before = set(processes()), used_kib()
    for i in range(k):
        start(i)
    time.sleep(SETTLE)
    table = processes()
    new = set(table) - before
    mine = {pid for pid in runtime_pids(new) if pid in table and not is_workload(pid, table)}
    return Footprint(
        runtime_pss_kib=sum(pss_kib(pid) for pid in mine) / k,
        machine_kib=(used_kib() - used_before) / k,
        processes=len(mine) / k,
    )


def sandboxrt_round(
    bundle: Path, root: Path, k: int, config: Config | None = None
) -> tuple[Footprint, int]:
    """One round of sandboxrt; also the PSS of the fork server and its warm processes."""
    store = FileStore(root)
    containers: list[Container] = []

    def start(i: int) -> None:
        c = Container.create(
            f"m{i}", bundle, store=store, config=config, stdin=DEVNULL, stdout=DEVNULL
        )
        containers.append(c)
        c.start()

    def runtime_pids(new: set[int]) -> set[int]:
        roots = set()
        for c in containers:
            assert c.sandbox is not None
            roots.add(c.sandbox.pid)
            if c.gofer is not None:  # (none with lazy_gofer)
                roots.add(c.gofer.pid)
        return descendants(roots, processes())

    try:
        result = footprint(start, runtime_pids, k)
        table = processes()
        server = next(pid for pid, (ppid, _) in table.items() if ppid == os.getpid())
        standing = descendants({server}, table) - runtime_pids(set())
        return result, sum(pss_kib(pid) for pid in standing)
    finally:
        for c in containers:
            c.destroy()


def cli_round(binary: str, extra: list[str], bundle: Path, root: Path, k: int) -> Footprint:
    run = cli(binary, root, extra)
    made: list[str] = []

    def start(i: int) -> None:
        cid = f"m{i}"
        run("create", bundle_flag(binary), str(bundle), cid)
        made.append(cid)
        run("start", cid)

    try:
        return footprint(start, lambda new: new, k)
    finally:
        for cid in made:
            with contextlib.suppress(subprocess.CalledProcessError):
                run("delete", "--force", cid)


def median(values: list[Footprint]) -> Footprint:
    return Footprint(
        *(statistics.median(getattr(v, f.name) for v in values) for f in attrs.fields(Footprint))
    )


@contextlib.contextmanager
def fork_server_started(bundle: Path, root: Path) -> Iterator[None]:
    Container.create("warmup", bundle, store=FileStore(root), stdin=DEVNULL).destroy()
    try:
        yield
    finally:
        default_launcher().close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", type=int, default=10, help="containers running at once")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per runtime (median)")
    args = parser.parse_args()
    with workspace("memory.py", ["sleep", "1000"]) as (bundle, runs, spec):
        assert spec.linux is not None
        write_spec_file(
            bundle / "config.json", attrs.evolve(spec, linux=attrs.evolve(spec.linux, seccomp=None))
        )
        results: dict[str, Footprint] = {}
        with fork_server_started(bundle, runs / "warm"):
            rounds = [
                sandboxrt_round(bundle, runs / f"sbrt{r}", args.k) for r in range(args.rounds)
            ]
            results["sandboxrt"] = median([f for f, _ in rounds])
            standing = statistics.median(s for _, s in rounds)
            lazy = Config(lazy_gofer=True)
            results["lazy_gofer"] = median(
                [
                    sandboxrt_round(bundle, runs / f"lazy{r}", args.k, lazy)[0]
                    for r in range(args.rounds)
                ]
            )
        results |= bench_others(
            lambda name, extra: median(
                [
                    cli_round(name, extra, bundle, runs / f"{name}{r}", args.k)
                    for r in range(args.rounds)
                ]
            )
        )
    print(
        f"\nsleep in a busybox container, {args.k} running at once, median of {args.rounds} rounds"
    )
    print(f"{'runtime':<12}{'runtime PSS/container':>24}{'processes':>11}{'machine/container':>20}")
    for name, f in results.items():
        print(
            f"{name:<12}{f.runtime_pss_kib / 1024:>20.2f} MiB{f.processes:>11.1f}"
            f"{f.machine_kib / 1024:>16.2f} MiB"
        )
    print(
        f"sandboxrt's fork server and warm processes (once per library process): "
        f"{standing / 1024:.2f} MiB PSS"
    )


if __name__ == "__main__":
    main()
