"""The plain 4-stage U-Net used by the UDA mitochondria papers (DA-ISC, CAFA, R4MITO)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat

__all__ = ["MitoUNet"]

_UPSAMPLE_MODES = ("deconv", "pixelshuffle", "nontrainable")


class MitoUNet(nn.Module):
    """
    U-Net that returns segmentation logits and, on request, its last decoder feature map.

    The architecture is the classic U-Net of the R4MITO / CAFA / DA-ISC papers ("a 4-stage U-Net with
    channels [64, 128, 256, 512]"): every stage is two 3x3 convolution-norm-activation blocks; the encoder
    halves the resolution by 2x2 max-pooling between stages (``len(channels) - 1`` times); the decoder
    upsamples by 2 (transposed convolution by default), concatenates the encoder feature map of the same
    resolution and applies two 3x3 convolution-norm-activation blocks; a final 1x1 convolution maps the
    last decoder feature map to ``out_channels`` logits. The building blocks are MONAI's
    (:py:class:`monai.networks.nets.basic_unet.TwoConv`, ``Down`` and ``UpCat``).

    Shapes (2D; 3D adds a depth axis ``D`` before ``H``)::

        x                         (B, in_channels, H, W)
        logits                    (B, out_channels, H, W)
        features (last decoder)   (B, channels[0], H, W)

    ``H`` and ``W`` (and ``D`` in 3D) must be divisible by ``2 ** (len(channels) - 1)`` (8 for the default
    four stages); pad the input otherwise (:py:class:`monai.inferers.SlidingWindowInferer` and
    :py:class:`monai.transforms.DivisiblePad` do this).

    Args:
        spatial_dims: number of spatial dimensions, 2 (the papers' setting) or 3.
        in_channels: number of input channels (1 for grey-scale EM).
        out_channels: number of output channels (logits), 2 for background / mitochondria.
        channels: channels of each stage, from the full-resolution stage to the bottleneck. At least two
            stages; every value a positive integer. The default is the papers' ``(64, 128, 256, 512)``.
        act: activation type and arguments, as understood by MONAI's ``Act`` factory.
        norm: normalisation type and arguments, as understood by MONAI's ``Norm`` factory
            (``"batch"`` for the papers' BatchNorm; ``("instance", {"affine": True})`` or ``None`` also work).
        dropout: dropout probability applied in every convolution block, in ``[0, 1)``.
        upsample: decoder upsampling, one of ``"deconv"`` (transposed convolution, the default),
            ``"pixelshuffle"`` or ``"nontrainable"`` (interpolation preceded by a convolution).
        bias: whether the convolutions have a bias term.

    Example::

        >>> net = MitoUNet()
        >>> logits, features = net(torch.zeros(2, 1, 64, 64), return_features=True)
        >>> logits.shape, features.shape
        (torch.Size([2, 2, 64, 64]), torch.Size([2, 64, 64, 64]))
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = (64, 128, 256, 512),
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple | None = "batch",
        dropout: float = 0.0,
        upsample: str = "deconv",
        bias: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(spatial_dims, bool) or spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence):
            raise TypeError(f"channels must be a sequence of positive integers, got {type(channels).__name__}.")
        channels = tuple(channels)
        if len(channels) < 2:
            raise ValueError(f"channels needs at least two stages (one downsampling), got {channels!r}.")
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels):
            raise ValueError(f"channels must be positive integers, got {channels!r}.")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}.")
        if upsample not in _UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {_UPSAMPLE_MODES}, got {upsample!r}.")

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = channels
        self.feature_channels = channels[0]
        self.divisor = 2 ** (len(channels) - 1)

        self.stem = TwoConv(spatial_dims, in_channels, channels[0], act, norm, bias, dropout)
        self.down_blocks = nn.ModuleList(
            [
                Down(spatial_dims, channels[i - 1], channels[i], act, norm, bias, dropout)
                for i in range(1, len(channels))
            ]
        )
        # decoder, from the bottleneck up: upsample channels[i] -> channels[i] // 2 (halves), concatenate the
        # encoder map with channels[i - 1] channels, two convolutions to channels[i - 1]
        self.up_blocks = nn.ModuleList(
            [
                UpCat(
                    spatial_dims,
                    channels[i],
                    channels[i - 1],
                    channels[i - 1],
                    act,
                    norm,
                    bias,
                    dropout,
                    upsample=upsample,
                    halves=channels[i] > 1,
                    is_pad=False,
                )
                for i in range(len(channels) - 1, 0, -1)
            ]
        )
        self.head = Conv[Conv.CONV, spatial_dims](channels[0], out_channels, kernel_size=1)

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            x: input of shape (B, in_channels, H, W) (3D: (B, in_channels, D, H, W)); every spatial size
                divisible by ``2 ** (len(channels) - 1)``.
            return_features: also return the last decoder feature map.

        Returns:
            logits (B, out_channels, H, W), or ``(logits, features)`` with features of shape
            (B, channels[0], H, W) when ``return_features`` is True.

        Raises:
            ValueError: when the input rank, channel number or spatial size does not fit the network.
        """
        if not torch.jit.is_tracing():  # traced graphs freeze shapes; check eagerly / in TorchScript only
            self._check_input(x)

        skips: list[torch.Tensor] = []
        h = self.stem(x)
        for down in self.down_blocks:
            skips.append(h)
            h = down(h)
        for i, up in enumerate(self.up_blocks):
            h = up(h, skips[len(skips) - 1 - i])
        logits = self.head(h)
        if return_features:
            return logits, h
        return logits

    def _check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError when ``x`` does not fit the network (rank, channels, divisible spatial size)."""
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"expected a {self.spatial_dims + 2}D input (batch, channel, {self.spatial_dims} spatial dims), "
                f"got shape {list(x.shape)}."
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channel(s), got {x.shape[1]} (shape {list(x.shape)}).")
        for size in x.shape[2:]:
            if size % self.divisor != 0:
                raise ValueError(
                    f"every spatial size must be divisible by {self.divisor} (2 ** (len(channels) - 1)), got spatial "
                    f"shape {list(x.shape[2:])}; pad the input (e.g. monai.transforms.DivisiblePad(k={self.divisor})) "
                    "or use an inferer that pads."
                )
