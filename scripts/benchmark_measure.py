#!/usr/bin/env python
"""Benchmark of ``python -m mito_monai measure`` on a synthetic OME-Zarr volume; prints one JSON object.

Writes (once, reused when present) ``DIR/instances.zarr`` (uint32 instance IDs, voxel size 30 x 8 x 8 nm) and
``DIR/raw.zarr`` (uint8 image): ``--count`` mitochondria-like ellipsoids (semi-axes 2-6 slices in z, 6-14 voxels
across, 15-60 voxels long, any orientation in the slice plane) at random places of a ``--shape`` volume, later
ones painted over earlier ones where they overlap (so some touch), in a child process of its own. Then runs the
command as a user would, in another child process, and reports its wall time and peak resident memory (that
child's own ``ru_maxrss`` from ``os.wait4``: neither the generation nor this process is counted), with the CPU and
``torch.backends.cpu.get_cpu_capability()``.

Example::

    OMP_NUM_THREADS=1 python scripts/benchmark_measure.py --dir /tmp/bench_measure --shape 64 2048 2048 --count 3000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_volume(folder: Path, shape: tuple[int, int, int], count: int, seed: int = 0) -> None:
    """Write the synthetic instances and image (see the module docstring)."""
    from mito_monai.io import create_ome_zarr_image

    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint32)
    for i in range(1, count + 1):
        c = rng.uniform(0, 1, 3) * shape
        a = np.array([rng.uniform(2, 6), rng.uniform(6, 14), rng.uniform(15, 60)])  # z, across, along
        angle = rng.uniform(0, np.pi)
        reach = np.array([a[0], a[2], a[2]])
        lo = np.maximum(np.floor(c - reach).astype(int), 0)
        hi = np.minimum(np.ceil(c + reach).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        z, y, x = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        u = (y - c[1]) * np.cos(angle) + (x - c[2]) * np.sin(angle)
        v = -(y - c[1]) * np.sin(angle) + (x - c[2]) * np.cos(angle)
        inside = ((z - c[0]) / a[0]) ** 2 + (v / a[1]) ** 2 + (u / a[2]) ** 2 <= 1
        labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]][inside] = i
    chunks = (16, 256, 256)
    out = create_ome_zarr_image(folder / "instances.zarr.tmp", "instances", shape, np.uint32, chunks, (30, 8, 8), "nanometer")
    out[...] = labels
    raw = np.where(labels > 0, 90, 170).astype(np.uint8)
    del labels
    raw = np.clip(raw + rng.normal(0, 20, shape).astype(np.float32), 0, 255).astype(np.uint8)
    image = create_ome_zarr_image(folder / "raw.zarr.tmp", "raw", shape, np.uint8, chunks, (30, 8, 8), "nanometer")
    image[...] = raw
    os.replace(folder / "raw.zarr.tmp", folder / "raw.zarr")
    os.replace(folder / "instances.zarr.tmp", folder / "instances.zarr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 2048, 2048])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--generate_only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more arguments for `measure`")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    if args.generate_only:
        make_volume(args.dir, tuple(args.shape), args.count)
        return
    generated = None
    if not (args.dir / "instances.zarr").exists():  # in a child: a forked child of a large process counts its pages
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--dir", str(args.dir), "--shape", *map(str, args.shape),
                        "--count", str(args.count), "--generate_only"], check=True)
        generated = time.perf_counter() - start
    table = args.dir / "table.csv"
    command = [sys.executable, "-m", "mito_monai", "measure", "--instances", str(args.dir / "instances.zarr"),
               "--image", str(args.dir / "raw.zarr"), "--output", str(table), "--overwrite", "true", *args.extra]
    start = time.perf_counter()
    with open(args.dir / "measure.log", "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        sys.exit(f"measure failed, see {args.dir / 'measure.log'}")
    summary = json.loads((args.dir / "table_summary.json").read_text())
    import torch

    print(json.dumps({
        "command": " ".join(["python -m mito_monai"] + command[3:]),
        "shape": args.shape, "voxels": int(np.prod(args.shape)), "instances": summary["count"],
        "seconds": round(seconds, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024.0, 1),
        "generate_seconds": None if generated is None else round(generated, 1),
        "volume_fraction": summary["volume_fraction"], "median_volume_nm3": summary["volume"]["median"],
        "cpu": _cpu_name(), "cpus": os.cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }, indent=2))


if __name__ == "__main__":
    main()
