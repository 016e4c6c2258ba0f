"""Executors that run a block-wise task over a block plan: in this process, or on Dask distributed.

Both take a picklable task ``task(block_index) -> result`` and yield the results as blocks finish,
with one progress bar (blocks done / total and voxels per second) in the calling process.
The Dask executor ships the task (and the network in it) to each worker once, sends only block
indices afterwards, and gathers only the small per-block results; the workers write their blocks into
the output store themselves. A worker that dies has its blocks rerun elsewhere by Dask.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence

__all__ = ["InProcessExecutor", "DaskExecutor", "make_executor"]


class _Progress:
    """A tqdm bar over blocks that also shows voxels per second."""

    def __init__(self, total: int, desc: str, enabled: bool, voxels: Sequence[int] | None) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="block", disable=not enabled or total == 0)
        self.voxels = voxels
        self.done_voxels = 0
        self.start = time.perf_counter()

    def update(self, position: int) -> None:
        if self.voxels is not None:
            self.done_voxels += self.voxels[position]
            rate = self.done_voxels / max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix_str(f"{rate / 1e6:.2f} Mvoxel/s", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class InProcessExecutor:
    """Run the blocks one after the other in this process."""

    def __enter__(self) -> InProcessExecutor:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def map(
        self, task: Callable, items: Sequence, desc: str = "blocks", progress: bool = True, voxels: Sequence[int] | None = None
    ) -> Iterator:
        bar = _Progress(len(items), desc, progress, voxels)
        try:
            for i, item in enumerate(items):
                result = task(item)
                bar.update(i)
                yield result
        finally:
            bar.close()


def _apply(item, task):
    return task(item)


class DaskExecutor:
    """Run the blocks on Dask distributed: a ``LocalCluster`` of ``workers`` processes on 127.0.0.1, or an
    existing scheduler at ``address`` (e.g. one started by ``dask scheduler``, or by dask-jobqueue's
    ``SLURMCluster``/``PBSCluster``/``LSFCluster`` on a cluster).

    Args:
        workers: processes of the local cluster (one thread each; the CPU threads are shared among them).
        address: ``tcp://HOST:PORT`` of a running scheduler; then ``workers`` is not used.
        processes: local workers are processes (True) or threads of this process (False).
        connect_timeout: seconds to wait for the scheduler at ``address`` before failing.
    """

    def __init__(
        self, workers: int = 2, address: str | None = None, processes: bool = True, connect_timeout: float = 5.0
    ) -> None:
        if address is None and int(workers) < 1:
            raise ValueError(f"dask_workers must be at least 1, got {workers}.")
        self.workers, self.address = int(workers), address
        self.processes, self.connect_timeout = processes, connect_timeout
        self.client = self.cluster = None

    def __enter__(self) -> DaskExecutor:
        from distributed import Client, LocalCluster

        if self.address:
            try:
                self.client = Client(self.address, timeout=self.connect_timeout)
            except (OSError, TimeoutError) as e:
                raise ValueError(
                    f"no Dask scheduler answers at {self.address} within {self.connect_timeout:g} s "
                    f"({type(e).__name__}); start one (`dask scheduler`) or leave --dask_address out for a local cluster."
                ) from None
        else:
            threads = max(1, (os.cpu_count() or 1) // self.workers)
            # worker processes talk TCP on 127.0.0.1; thread workers share this process (in-process comms)
            extra = {"host": "127.0.0.1", "env": {"OMP_NUM_THREADS": str(threads)}} if self.processes else {}
            self.cluster = LocalCluster(
                n_workers=self.workers, threads_per_worker=1, processes=self.processes, dashboard_address=None, **extra
            )
            self.client = Client(self.cluster)
        return self

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def map(
        self, task: Callable, items: Sequence, desc: str = "blocks", progress: bool = True, voxels: Sequence[int] | None = None
    ) -> Iterator:
        from distributed import as_completed

        if not items:
            return
        shipped = self.client.scatter(task, broadcast=True, hash=False)
        futures = self.client.map(_apply, list(items), task=shipped, pure=False)
        position = {f.key: i for i, f in enumerate(futures)}
        bar = _Progress(len(items), desc, progress, voxels)
        try:
            for future in as_completed(futures):
                result = future.result()
                bar.update(position[future.key])
                yield result
        finally:
            bar.close()
            for f in futures:
                f.cancel()


def make_executor(scheduler: str = "local", workers: int = 2, address: str | None = None, processes: bool = True):
    """``local`` -> :class:`InProcessExecutor`; ``dask`` -> :class:`DaskExecutor`."""
    if scheduler == "local":
        return InProcessExecutor()
    if scheduler == "dask":
        return DaskExecutor(workers=workers, address=address, processes=processes)
    raise ValueError(f"scheduler must be 'local' or 'dask', got {scheduler!r}.")
