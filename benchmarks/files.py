"""File API throughput: ``container.files.copy_in``/``copy_out`` beside ``cp``, same disk.

Copies one file of ``--size`` MiB (random data, not sparse) into a running
busybox container's rootfs and back out with the file API, and the same
copies with ``cp`` between the same directories, and prints the median
throughput of ``--repeat`` rounds in MB/s. Every copy goes through the page
cache alike (no sync). Same workspace and private mount namespace as
``lifecycle.py``. Needs root.

    python benchmarks/files.py [--size 512] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
from pathlib import Path

from lifecycle import timed, workspace

from sandboxrt import Container, FileStore

CHUNK = 8 << 20


def make_source(path: Path, size: int) -> None:
    block = os.urandom(CHUNK)
    with open(path, "wb") as f:
        for _ in range(size // CHUNK):
            f.write(block)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="file size in MiB (256-1024)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    size = args.size << 20
    with workspace("files.py", ["sleep", "600"]) as (bundle, runs, _):
        work = bundle.parent
        source = work / "source.bin"
        make_source(source, size)
        rootfs = bundle / "rootfs"
        results: dict[str, list[float]] = {
            k: [] for k in ("cp in", "copy_in", "cp out", "copy_out")
        }
        container = Container.create("files-bench", bundle, store=FileStore(runs / "sbrt"))
        try:
            container.start()
            cp_in = rootfs / "cp.bin"
            cp_out, api_out = work / "cp-out.bin", work / "api-out.bin"
            for _ in range(args.repeat):
                results["cp in"].append(
                    timed(lambda: subprocess.run(["cp", source, cp_in], check=True))
                )
                results["copy_in"].append(timed(lambda: container.files.copy_in(source, "/in.bin")))
                results["cp out"].append(
                    timed(lambda: subprocess.run(["cp", cp_in, cp_out], check=True))
                )
                results["copy_out"].append(
                    timed(lambda: container.files.copy_out("/in.bin", api_out))
                )
                assert api_out.stat().st_size == size
                for path in (cp_in, cp_out, api_out, rootfs / "in.bin"):
                    path.unlink()
        finally:
            container.destroy()
        print(f"\n{args.size} MiB file, {args.repeat} rounds; median MB/s (ratio to cp)")
        for direction in ("in", "out"):
            cp = size / statistics.median(results[f"cp {direction}"]) / 1e6
            api = size / statistics.median(results[f"copy_{direction}"]) / 1e6
            print(f"copy {direction:<4} cp {cp:8.0f}   sandboxrt {api:8.0f}   x{api / cp:.2f}")


if __name__ == "__main__":
    main()
