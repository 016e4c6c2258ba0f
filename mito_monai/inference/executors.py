"""Executors that run a block-wise task over a block plan: in this process, or on Dask distributed.

Both take a picklable task ``task(block_index) -> result`` and yield the results as blocks finish,
with one progress bar (blocks done / total and voxels per second) in the calling process. In this
process, a task with load / compute / store stages reads ahead and writes behind in two threads.
The Dask executor ships the task (and the network in it) to each worker once, sends only block
indices afterwards, and gathers only the small per-block results; the workers write their blocks into
the output store themselves. A worker that dies has its blocks rerun elsewhere by Dask.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

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
    """Run the blocks one after the other in this process.

    A task with ``load(item)``, ``compute(item, loaded)`` and ``store(item, computed)`` stages (such as
    :class:`~mito_monai.inference.tasks.BlockSegmentation`) runs as a pipeline: a reader thread loads the
    next item and a writer thread stores the previous one while this thread computes (one
    ``concurrent.futures`` thread each, so at most one item is read ahead and one waits to be written:
    memory stays a few blocks). Results come in the order of ``items``, as without the pipeline; an error
    in the reader or writer thread is raised here unchanged (the same exception, e.g. the
    :class:`~mito_monai.io.DataError` naming the block), after the other thread has stopped.

    Args:
        pipeline: overlap reading and writing with compute; ``False`` runs every stage in this thread.
    """

    def __init__(self, pipeline: bool = True) -> None:
        self.pipeline = bool(pipeline)

    def __enter__(self) -> InProcessExecutor:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def map(
        self, task: Callable, items: Sequence, desc: str = "blocks", progress: bool = True, voxels: Sequence[int] | None = None
    ) -> Iterator:
        bar = _Progress(len(items), desc, progress, voxels)
        try:
            if self.pipeline and all(callable(getattr(task, n, None)) for n in ("load", "compute", "store")):
                yield from self._pipelined(task, list(items), bar)
            else:
                for i, item in enumerate(items):
                    result = task(item)
                    bar.update(i)
                    yield result
        finally:
            bar.close()

    @staticmethod
    def _pipelined(task, items: list, bar: _Progress) -> Iterator:
        if not items:
            return
        with ThreadPoolExecutor(1, thread_name_prefix="block-reader") as reader, \
                ThreadPoolExecutor(1, thread_name_prefix="block-writer") as writer:
            loading = reader.submit(task.load, items[0])
            storing: Future | None = None
            try:
                for i, item in enumerate(items):
                    loaded = loading.result()
                    if i + 1 < len(items):
                        loading = reader.submit(task.load, items[i + 1])
                    computed = task.compute(item, loaded)
                    del loaded
                    if storing is not None:
                        result = storing.result()
                        bar.update(i - 1)
                        yield result
                    storing = writer.submit(task.store, item, computed)
                    del computed
                result = storing.result()
                bar.update(len(items) - 1)
                yield result
            finally:  # on an error the read-ahead is dropped; a block already computed is still written
                loading.cancel()


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
