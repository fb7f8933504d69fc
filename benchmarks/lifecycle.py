"""Container lifecycle latency: sandboxrt beside runc, crun and runsc, in one run.

Prints the median and spread (p10-p90) of running ``/bin/true`` to completion
(create + start + wait + destroy) and of each step separately, for every
runtime that is installed, with ratios against sandboxrt. All runtimes use
the same busybox bundle and run in one private mount namespace with a tmpfs
over /sys/fs/cgroup/unified (crun refuses this machine's hybrid layout
otherwise). Needs root.

    python benchmarks/lifecycle.py [-n 30] [--overlay]

``--overlay`` runs sandboxrt with ``Config(overlay=True)`` (the rootfs under a
tmpfs overlay); the other runtimes run as usual, so their ratios show its cost.
A second sandboxrt column has ``Config(lazy_gofer=True)``: no gofer process
until a file call (decision 38); a third ``ForkServerLauncher(build_ahead=True)``:
the root of each run built ahead, for a bundle nothing changes (decision 63).

The first tables time runs back to back: the throughput of a loop of runs. A
last table times isolated runs: each ``run`` comes after ``--gap`` seconds
(0.2 by default, 0 to skip it) with nothing running, the runtimes in another
order each round (each following each other alike): the latency of a container
run now and then. The two differ:
a runtime that moves its container into a cgroup by pid takes the kernel's
cgroup threadgroup lock, whose first taking after a quiet spell waits for an
RCU grace period (decision 39).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import attrs

from sandboxrt import (
    Config,
    Container,
    CreateOptions,
    FileStore,
    ForkServerLauncher,
    Spec,
    write_spec_file,
)
from sandboxrt.bundle import make_bundle

STEPS = ("run", "create", "start", "wait", "destroy")
Timings = dict[str, list[float]]
T = TypeVar("T")


def enter_private_namespace() -> None:
    """Re-run this script in a private mount namespace with the cgroup2 mount hidden."""
    if os.environ.get("SANDBOXRT_BENCH_NS") == "1":
        if os.path.ismount("/sys/fs/cgroup/unified"):
            subprocess.run(["mount", "-t", "tmpfs", "none", "/sys/fs/cgroup/unified"], check=True)
        return
    # The workspace is made (and removed) out here: what the runtimes mounted over it in
    # the private namespace (a rootfs's /dev, say) kept the script from removing it there.
    work = tempfile.mkdtemp(prefix="sandboxrt-bench-")
    runs = tempfile.mkdtemp(prefix="sandboxrt-bench-", dir="/run")
    env = {**os.environ, "SANDBOXRT_BENCH_NS": "1", "SANDBOXRT_BENCH_DIRS": f"{work}:{runs}"}
    argv = ["unshare", "--mount", "--propagation", "private", sys.executable, *sys.argv]
    signal.signal(signal.SIGTERM, lambda signo, frame: sys.exit(128 + signo))
    try:
        code = subprocess.run(argv, env=env, check=False).returncode
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(runs, ignore_errors=True)
    raise SystemExit(code)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_sandboxrt(
    bundle: Path,
    root: Path,
    n: int,
    config: Config | None = None,
    launcher: ForkServerLauncher | None = None,
) -> Timings:
    store = FileStore(root)
    out: Timings = {step: [] for step in STEPS}
    options: CreateOptions = {"store": store, "config": config, "launcher": launcher}
    Container.run("warmup", bundle, **options)  # starts the fork server
    for i in range(n):
        out["run"].append(timed(lambda i=i: Container.run(f"run{i}", bundle, **options)))
    for i in range(n):
        start = time.perf_counter()
        c = Container.create(f"c{i}", bundle, **options)
        out["create"].append(time.perf_counter() - start)
        out["start"].append(timed(c.start))
        out["wait"].append(timed(c.wait))
        out["destroy"].append(timed(c.destroy))
    return out


def cli(binary: str, root: Path, extra: list[str]) -> Callable[..., None]:
    """A function running ``binary`` (a runc-style CLI) with ``args``; a failure raises
    ``CalledProcessError`` with its stderr."""
    base = [binary, "--root", str(root), *extra]
    # A file, not a pipe, for stderr: a created container's init holds it open.
    errors = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the function

    def run(*args: str) -> None:
        errors.seek(0)
        errors.truncate()
        done = subprocess.run([*base, *args], check=False, stdout=subprocess.DEVNULL, stderr=errors)
        if done.returncode != 0:
            errors.seek(0)
            raise subprocess.CalledProcessError(done.returncode, args, stderr=errors.read())

    return run


def bundle_flag(binary: str) -> str:
    return "--bundle" if binary != "runsc" else "-bundle"


def bench_cli(binary: str, bundle: Path, root: Path, n: int, extra: list[str]) -> Timings:
    """runc-style CLI: run; create, start, wait (poll state), delete."""
    base = [binary, "--root", str(root), *extra]
    out: Timings = {step: [] for step in STEPS}
    run = cli(binary, root, extra)
    flag = bundle_flag(binary)
    run("run", flag, str(bundle), "warmup")
    for i in range(n):
        out["run"].append(timed(lambda i=i: run("run", flag, str(bundle), f"run{i}")))
    for i in range(n):
        cid = f"c{i}"
        out["create"].append(timed(lambda cid=cid: run("create", flag, str(bundle), cid)))
        out["start"].append(timed(lambda cid=cid: run("start", cid)))

        def wait(cid: str = cid) -> None:
            while True:
                state = subprocess.run(
                    [*base, "state", cid], capture_output=True, text=True, check=False
                )
                if '"stopped"' in state.stdout or state.returncode != 0:
                    return
                time.sleep(0.0005)

        out["wait"].append(timed(wait))
        out["destroy"].append(timed(lambda cid=cid: run("delete", "--force", cid)))
    return out


def summary(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return statistics.median(ordered) * 1000, pick(0.1) * 1000, pick(0.9) * 1000


#: The runtimes compared with sandboxrt, and the flags each needs here.
OTHERS: dict[str, list[str]] = {
    "runc": [],
    "crun": [],
    "runsc": ["--network=none", "--platform=ptrace"],
}


def bench_others(bench: Callable[[str, list[str]], T]) -> dict[str, T]:
    """``bench(name, flags)`` for every installed runtime of :data:`OTHERS`; failures skipped."""
    results: dict[str, T] = {}
    for name, extra in OTHERS.items():
        if shutil.which(name) is None:
            print(f"{name}: not installed, skipped")
            continue
        try:
            results[name] = bench(name, extra)
        except subprocess.CalledProcessError as exc:
            err = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
            print(f"{name}: failed ({err[-1] if err else exc}), skipped")
    return results


def warn_of_dying_memory_cgroups() -> None:
    """Say so when the memory hierarchy holds many more cgroups than the others: removed
    cgroups that pages or kernel objects still pin ("dying"), which slow every runtime's
    containers down (here by a third and more, after a test run), until reclaimed."""
    counts: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/cgroups").read_text().splitlines()[1:]:
            name, _, number, _ = line.split()
            counts[name] = int(number)
    extra = counts.get("memory", 0) - counts.get("pids", 0)
    if extra > 50:
        print(
            f"note: {extra} more memory cgroups than pids cgroups (dying ones, mostly), which"
            " slow every runtime down; `sync; echo 3 > /proc/sys/vm/drop_caches` reclaims them"
        )


@contextlib.contextmanager
def workspace(script: str, args: list[str]) -> Iterator[tuple[Path, Path, Spec]]:
    """A busybox bundle running ``args`` and a state dir under /run, in a private
    mount namespace; ``(bundle, runs, spec)``. Removed afterwards, also when the
    script is ended with SIGTERM (``timeout``): its containers are destroyed first."""
    if os.geteuid() != 0:
        raise SystemExit(f"benchmarks/{script} needs root")
    if os.environ.get("SANDBOXRT_BENCH_NS") != "1":
        warn_of_dying_memory_cgroups()
    enter_private_namespace()
    signal.signal(signal.SIGTERM, lambda signo, frame: sys.exit(128 + signo))
    work, runs = (Path(d) for d in os.environ["SANDBOXRT_BENCH_DIRS"].split(":"))
    try:
        bundle = work / "bundle"
        spec = make_bundle(bundle, args, rootfs="busybox")
        # The oldest spec version every runtime here accepts (Debian 12's crun stops at 1.0).
        spec = attrs.evolve(spec, oci_version="1.0.2")
        write_spec_file(bundle / "config.json", spec)
        yield bundle, runs, spec
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(runs, ignore_errors=True)


def compare(bundle: Path, runs: Path, n: int, title: str, config: Config | None = None) -> None:
    """Time every runtime on ``bundle`` and print one table (sandboxrt with ``config``)."""
    results: dict[str, Timings] = {"sandboxrt": bench_sandboxrt(bundle, runs / "sbrt", n, config)}
    # Beside it: no gofer until the file API is used (decision 38).
    lazy = attrs.evolve(config or Config(), lazy_gofer=True)
    results["sandboxrt lazy_gofer"] = bench_sandboxrt(bundle, runs / "lazy", n, lazy)
    # And with the root of each run built ahead, for a bundle nothing changes (decision 63).
    with contextlib.closing(ForkServerLauncher(build_ahead=True)) as ahead:
        results["sandboxrt build_ahead"] = bench_sandboxrt(bundle, runs / "ahead", n, config, ahead)
    results |= bench_others(lambda name, extra: bench_cli(name, bundle, runs / name, n, extra))
    base = {step: summary(results["sandboxrt"][step])[0] for step in STEPS}
    print(f"\n{title}, n={n}; median ms [p10-p90] (ratio to sandboxrt)")
    print(f"{'step':<8}" + "".join(f"{name:>28}" for name in results))
    for step in STEPS:
        cells = []
        for timings in results.values():
            med, p10, p90 = summary(timings[step])
            ratio = med / base[step] if base[step] else float("nan")
            cells.append(f"{med:7.2f} [{p10:6.2f}-{p90:6.2f}] x{ratio:4.2f}")
        print(f"{step:<8}" + "".join(f"{c:>28}" for c in cells))


def balanced_orders(k: int) -> list[list[int]]:
    """Orders of ``0..k-1`` in which each one comes right after each other equally often
    over the whole list (a Williams design: ``k`` orders, ``2k`` for an odd ``k``)."""
    first, low, high = [0], 1, k - 1
    while len(first) < k:
        first.append(low)
        low += 1
        if len(first) < k:
            first.append(high)
            high -= 1
    orders = [[(x + i) % k for x in first] for i in range(k)]
    return orders + [order[::-1] for order in orders] if k % 2 else orders


def isolated(
    bundle: Path, runs: Path, n: int, gap: float, title: str, config: Config | None
) -> None:
    """Time ``run`` of every runtime, each run after ``gap`` idle seconds, the runtimes
    in rounds (so that a drift of the machine reaches them all alike); print one table."""
    lazy = attrs.evolve(config or Config(), lazy_gofer=True)
    ahead = ForkServerLauncher(build_ahead=True)
    runners: dict[str, Callable[[str], None]] = {}
    for name, cfg, launcher in (
        ("sandboxrt", config, None),
        ("sandboxrt lazy_gofer", lazy, None),
        ("sandboxrt build_ahead", config, ahead),
    ):
        store = FileStore(runs / name.replace(" ", "-"))

        def run_sandboxrt(
            cid: str,
            store: FileStore = store,
            cfg: Config | None = cfg,
            launcher: ForkServerLauncher | None = launcher,
        ) -> None:
            Container.run(cid, bundle, store=store, config=cfg, launcher=launcher)

        runners[name] = run_sandboxrt

    def run_cli(name: str, extra: list[str]) -> Callable[[str], None]:
        run = cli(name, runs / name, extra)
        run("run", bundle_flag(name), str(bundle), "warmup")
        return lambda cid: run("run", bundle_flag(name), str(bundle), cid)

    runners |= bench_others(run_cli)
    results: dict[str, list[float]] = {name: [] for name in runners}
    for run in runners.values():
        run("warmup2")  # (sandboxrt: starts the fork server)
    items = list(runners.items())
    orders = balanced_orders(len(items))
    for i in range(n):
        # Each round in an order of its own: what one runtime leaves behind slows the one
        # after it (a run right after crun's or runsc's took 5 ms more here, whichever it
        # was), so each must follow each other alike (decision 53).
        for name, run in (items[k] for k in orders[i % len(orders)]):
            time.sleep(gap)
            results[name].append(timed(functools.partial(run, f"iso{i}")))
    base = summary(results["sandboxrt"])[0]
    print(f"\n{title}, isolated runs ({gap:g} s idle before each), n={n}; median ms [p10-p90]")
    print(f"{'step':<8}" + "".join(f"{name:>28}" for name in results))
    cells = []
    for values in results.values():
        med, p10, p90 = summary(values)
        cells.append(f"{med:7.2f} [{p10:6.2f}-{p90:6.2f}] x{med / base:4.2f}")
    print(f"{'run':<8}" + "".join(f"{c:>28}" for c in cells))
    ahead.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=30, help="iterations per step")
    parser.add_argument(
        "--overlay", action="store_true", help="sandboxrt with Config(overlay=True)"
    )
    parser.add_argument(
        "--gap",
        type=float,
        default=0.2,
        help="idle seconds before each isolated run (0: skip them)",
    )
    args = parser.parse_args()
    config = Config(overlay=True) if args.overlay else None
    mode = ", sandboxrt with an overlay root" if args.overlay else ""
    with workspace("lifecycle.py", ["/bin/true"]) as (bundle, runs, spec):
        compare(
            bundle,
            runs / "default",
            args.n,
            f"/bin/true, default spec (seccomp), busybox{mode}",
            config,
        )
        # The same without a seccomp profile, as `runc spec` writes it.
        assert spec.linux is not None
        write_spec_file(
            bundle / "config.json", attrs.evolve(spec, linux=attrs.evolve(spec.linux, seccomp=None))
        )
        title = f"/bin/true, no seccomp profile, busybox{mode}"
        compare(bundle, runs / "plain", args.n, title, config)
        if args.gap > 0:
            isolated(bundle, runs / "isolated", args.n, args.gap, title, config)


if __name__ == "__main__":
    main()
