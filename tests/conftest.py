"""Shared fixtures and options of the test suite: ``--run-slow`` runs the tests marked ``slow`` (real-data or
long checks), skipped otherwise."""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False, help="run the tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_torch_thread():
    """The CPU is shared; one intra-op thread is much faster than two contending ones at the tests' sizes.

    Use it in a module with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ------------------------------------------------------------------------------------------------------------
# the toy network and slices the engine tests train on (import them: ``from conftest import TinyNet, ToySlices``)


class TinyNet(torch.nn.Module):
    """1 -> 4 features (optionally batch-normalised) -> 2 logits; ``return_features`` like MitoUNet."""

    def __init__(self, batch_norm: bool = False) -> None:
        super().__init__()
        self.body = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(4) if batch_norm else torch.nn.Identity()
        self.head = torch.nn.Conv2d(4, 2, 1)

    def forward(self, x, return_features: bool = False):
        f = torch.tanh(self.norm(self.body(x)))
        logits = self.head(f)
        return (logits, f) if return_features else logits


def tiny_unet(seed: int = 0, channels=(4, 8)):
    """A two-stage MitoUNet with the weights of ``torch.manual_seed(seed)``."""
    from mito_monai.networks.nets import MitoUNet

    torch.manual_seed(seed)
    return MitoUNet(spatial_dims=2, in_channels=1, out_channels=2, channels=channels)


def _flipped(x, noise):
    return (x + noise).flip(-1)


class ToySlices(torch.utils.data.Dataset):
    """``n`` fixed random (1, size, size) slices ``low + scale * U(0, 1)``.

    Labelled: ``{"image", "label"}`` with label ``image > 0.5`` (of ``label_dtype``). Unlabelled: a weak view (the
    slice) and a strong view ``strong(slice, noise)`` (default: the slice plus ``noise * N(0, 1)``, flipped), and
    the slice as ``"image"`` too when ``with_image``.
    """

    def __init__(
        self,
        n: int,
        labelled: bool = True,
        seed: int = 0,
        size: int = 8,
        low: float = 0.0,
        scale: float = 1.0,
        noise: float = 0.0,
        strong=_flipped,
        label_dtype: torch.dtype = torch.long,
        dtype: torch.dtype = torch.float32,
        with_image: bool = False,
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        shape = (n, 1, size, size)
        uniform = torch.rand(*shape, generator=g, dtype=dtype)
        self.images = low + scale * uniform if (low, scale) != (0.0, 1.0) else uniform
        self.noise = noise * torch.randn(*shape, generator=g, dtype=dtype) if noise else torch.zeros(shape, dtype=dtype)
        self.labelled, self.strong, self.label_dtype, self.with_image = labelled, strong, label_dtype, with_image

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i]
        if self.labelled:
            return {"image": x, "label": (x > 0.5).to(self.label_dtype)}
        views = {"image_weak": x, "image_strong": self.strong(x, self.noise[i])}
        return {**views, "image": x} if self.with_image else views


def exception_messages(exc: BaseException | None) -> str:
    """The messages of an exception and of its causes (MONAI wraps errors raised inside config expressions)."""
    out = []
    while exc is not None:
        out.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return " | ".join(out)
