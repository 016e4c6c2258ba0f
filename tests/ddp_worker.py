"""Started by ``tests/test_distributed.py`` under ``torchrun``: DomainAdaptationTrainer steps on a DDP-wrapped net.

Usage: ``torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py OUT_PREFIX``. Rank r trains on
its share of the batches of the single-process reference in ``test_distributed.py`` and writes its
final parameters to ``OUT_PREFIX<r>.pt``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]  # the tests and the repository
from test_engines import Slices, TinyNet  # noqa: E402

from mito_monai.engines import DomainAdaptationTrainer, LossTerm  # noqa: E402
from mito_monai.runtime import init_distributed  # noqa: E402
from mito_monai.losses import FeatureConsistencyLoss, PseudoLabelConsistencyLoss  # noqa: E402

STEPS, GLOBAL_BATCH = 2, 4


def shard(dataset, rank: int, world: int) -> Subset:
    """Rank ``rank``'s contiguous part of every global batch: the reference's batch k is [4k, 4k + 4)."""
    local = GLOBAL_BATCH // world
    return Subset(dataset, [k * GLOBAL_BATCH + rank * local + i for k in range(STEPS) for i in range(local)])


def build_trainer(net: torch.nn.Module, rank: int, world: int) -> DomainAdaptationTrainer:
    """Supervised CE plus the ``cf`` and ``reg`` terms (pixel means, so the mean over ranks of the
    local gradients equals the single-process gradient of the whole batch), STEPS iterations."""
    terms = {
        "cf": LossTerm(FeatureConsistencyLoss(), 0.5, ["target_features_strong", "target_features_weak"]),
        "reg": LossTerm(PseudoLabelConsistencyLoss(), 0.3, ["target_logits_strong", "target_logits_weak"]),
    }
    local = GLOBAL_BATCH // world
    return DomainAdaptationTrainer(
        amp=False,  # float32 on every machine (precision auto: tests/test_precision.py)
        device="cpu",
        max_epochs=1,
        epoch_length=STEPS,
        train_data_loader=DataLoader(shard(Slices(8), rank, world), batch_size=local),
        target_data_loader=DataLoader(shard(Slices(8, labelled=False, seed=1), rank, world), batch_size=local),
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=1e-2),
        loss_function=lambda logits, y: torch.nn.functional.cross_entropy(logits, y[:, 0]),
        terms=terms,
    )


def main(out_prefix: str) -> None:
    init_distributed(timeout_minutes=5)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
    net = torch.nn.parallel.DistributedDataParallel(TinyNet())
    build_trainer(net, rank, world).run()
    torch.save(net.module.state_dict(), f"{out_prefix}{rank}.pt")
    torch.distributed.destroy_process_group()


def run_then_exit(main, out_prefix: str) -> None:
    """Run a worker's ``main``, then leave without the interpreter's teardown.

    The results are on disk and the process group is gone by then; at teardown a C++ thread of torch was
    once destroyed while joinable under load ("terminate called without an active exception", SIGABRT
    after the work was done), which is not what these tests check. An exception in ``main`` still fails.
    """
    main(out_prefix)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    run_then_exit(main, sys.argv[1])
