"""Started by ``tests/test_distributed.py`` under ``torchrun``: SemiSupervisedTrainer steps on a DDP-wrapped DualRelNet.

Usage: ``torchrun --standalone --nproc_per_node=2 tests/ddp_ssl_worker.py OUT_PREFIX``. For each method of
:data:`METHODS`, rank r trains on its share of the labelled and unlabelled batches of the single-process
reference in ``test_distributed.py`` and writes its final parameters to ``OUT_PREFIX<method>_<r>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Subset

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]  # the tests and the repository
from ddp_worker import run_then_exit, shard  # noqa: E402
from test_semi_supervised import Slices, ce, terms_for  # noqa: E402

from mito_monai.engines import SemiSupervisedTrainer, method_terms  # noqa: E402
from mito_monai.runtime import init_distributed  # noqa: E402
from mito_monai.networks.nets import DualRelNet  # noqa: E402

STEPS, GLOBAL_BATCH = 2, 4
#: DualRel uses every parameter; CPS leaves the reliability head out, Mean Teacher the second branch
METHODS = ("dualrel", "cps", "mean_teacher")


def tiny_net(seeds: tuple[int, int]) -> DualRelNet:
    """Every batch norm replaced by a per-image GroupNorm(1, C), so that half batches on two ranks are
    normalised as the whole batch is (batch statistics would differ per rank)."""
    net = DualRelNet(
        embed_dim=8, num_filters=4, num_references=4, encoder_depth=10, decoder_channels=(8, 8, 8, 8, 8),
        branch_seeds=seeds,
    )
    for module in list(net.modules()):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.BatchNorm2d):
                setattr(module, name, torch.nn.GroupNorm(1, child.num_features))
    return net.double()


def build_trainer(net: torch.nn.Module, method: str, rank: int, world: int) -> SemiSupervisedTrainer:
    """STEPS iterations of ``method`` (terms that are means over pixels/images, so the mean over ranks of the
    local gradients is the single-process gradient of the whole batch); the teacher averages the unwrapped net."""
    core = net.module if isinstance(net, torch.nn.parallel.DistributedDataParallel) else net
    teacher = None
    if "mt" in method_terms(method):
        teacher = AveragedModel(core, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    local = GLOBAL_BATCH // world
    return SemiSupervisedTrainer(
        amp=False,  # float32 on every machine (precision auto: tests/test_precision.py)
        device="cpu", max_epochs=1, epoch_length=STEPS,
        train_data_loader=DataLoader(shard(Slices(8, True, seed=0, size=64), rank, world), batch_size=local),
        unlabelled_data_loader=DataLoader(shard(Slices(8, False, seed=1, size=64), rank, world), batch_size=local),
        network=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9), loss_function=ce,
        terms=terms_for(method), teacher=teacher,
        unlabelled_key="image_strong" if method == "mean_teacher" else "image_weak", teacher_key="image_weak",
        decollate=False,
    )


def main(out_prefix: str) -> None:
    init_distributed(timeout_minutes=5)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    for method in METHODS:
        # different initial weights per rank: DDP must broadcast rank 0's
        net = torch.nn.parallel.DistributedDataParallel(
            tiny_net((1 + 10 * rank, 2 + 10 * rank)), find_unused_parameters="rpc" not in method_terms(method)
        )
        build_trainer(net, method, rank, world).run()
        torch.save(net.module.state_dict(), f"{out_prefix}{method}_{rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    run_then_exit(main, sys.argv[1])
