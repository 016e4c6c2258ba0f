"""One DualRel branch (a ResNet encoder, a U-Net upsampling path, mito filters and prototypes) and what it outputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets.basic_unet import TwoConv, UpCat
from monai.networks.nets.resnet import ResNet, get_inplanes, resnet_params

from mito_monai.networks.blocks.referential_attention import ReferentialCrossAttention

__all__ = ["DualRelBranch", "DualRelBranchOutput", "DualRelOutput"]


@dataclass
class DualRelBranchOutput:
    """
    Everything one DualRel branch computes (B batch, K mito filters, C embedding channels).

    Attributes:
        log_probabilities: (B, 2, H, W) log class probabilities, channel 0 background, channel 1 mitochondria.
            They are valid logits (``softmax(dim=1)`` gives ``probabilities`` back exactly), so they go
            straight into ``torch.nn.functional.cross_entropy`` / ``monai.losses.DiceCELoss(softmax=True)``.
        probabilities: (B, 2, H, W), ``exp(log_probabilities)``; sums to 1 over the channel axis.
        activations: (B, K, H, W) activation maps ``A_k = sigmoid(f~_k . E)`` (eq. 7).
        prototypes: (B, K, C) ``p_k = mean over pixels of A_k * E`` (eq. 8).
        mito_features: (B, K, C) ``f~_k``, the output of the referential cross-attention.
        embedding: (B, C, H, W) pixel embedding ``E`` of the upsampling path.
    """

    log_probabilities: torch.Tensor
    probabilities: torch.Tensor
    activations: torch.Tensor
    prototypes: torch.Tensor
    mito_features: torch.Tensor
    embedding: torch.Tensor

    def loss_quantities(self) -> dict[str, torch.Tensor]:
        """What a trainer hands to the loss terms: ``logits`` (the log probabilities), ``prototypes`` and
        ``mito_features``; a trainer needs no DualRel-specific type to use them."""
        return {"logits": self.log_probabilities, "prototypes": self.prototypes, "mito_features": self.mito_features}


@dataclass
class DualRelOutput:
    """
    Output of :class:`DualRelNet` with both branches.

    Attributes:
        branches: the two :class:`DualRelBranchOutput`, branch 0 then branch 1.
        reliability: (B, K) prototype reliabilities ``r_k`` in (0, 1] (eq. 9); ``None`` when the forward pass
            was asked not to compute them (``with_reliability=False``).
    """

    branches: tuple[DualRelBranchOutput, DualRelBranchOutput]
    reliability: torch.Tensor | None


class DualRelBranch(nn.Module):
    """One DualRel branch: ResNet encoder, U-Net upsampling path, mito filters and referential cross-attention."""

    def __init__(
        self,
        in_channels: int,
        embed_dim: int,
        num_filters: int,
        encoder_depth: int,
        decoder_channels: tuple[int, ...],
        num_references: int,
        use_references: bool,
        reference_strategy: str,
        ffn_hidden: int | None,
        attention_dropout: float,
        act: str | tuple,
        norm: str | tuple,
        upsample: str,
    ) -> None:
        super().__init__()
        block, layers = resnet_params[f"resnet{encoder_depth}"][:2]
        # torchvision-compatible layout and stride: 7x7 stride-2 stem, max-pooling, 1x1 conv + norm shortcuts
        # without bias, no average pooling / fully connected head in use
        self.encoder = ResNet(
            block=block,
            layers=list(layers),
            block_inplanes=get_inplanes(),
            spatial_dims=2,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            shortcut_type="B",
            feed_forward=False,
            bias_downsample=False,
            act=act,
            norm=norm,
        )
        expansion = 4 if block == "bottleneck" else 1
        # channels of the skips at strides 2 (stem), 4, 8, 16 and of the deepest map at stride 32
        encoder_channels = [64] + [c * expansion for c in get_inplanes()]
        self.feature_channels = encoder_channels[-1]
        # full-resolution skip for the last up-step (the ResNet has no stride-1 feature map)
        self.full_resolution = TwoConv(2, in_channels, decoder_channels[-1], act, norm, bias=True)
        skip_channels = list(reversed(encoder_channels[:-1])) + [decoder_channels[-1]]  # strides 16, 8, 4, 2, 1
        ups = []
        previous = encoder_channels[-1]
        for skip, out in zip(skip_channels, decoder_channels):
            ups.append(
                UpCat(
                    2, previous, skip, out, act, norm, bias=True, upsample=upsample, halves=previous > 1, is_pad=False
                )
            )
            previous = out
        self.up_blocks = nn.ModuleList(ups)
        self.embedding_head = nn.Conv2d(decoder_channels[-1], embed_dim, kernel_size=1)
        self.reduce = nn.Conv2d(encoder_channels[-1], embed_dim, kernel_size=1)
        self.mito_filters = nn.Parameter(torch.randn(num_filters, embed_dim))
        self.attention = ReferentialCrossAttention(
            embed_dim,
            num_references=num_references,
            use_references=use_references,
            reference_strategy=reference_strategy,
            ffn_hidden=ffn_hidden,
            dropout=attention_dropout,
        )

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """ResNet feature maps at strides 2 (stem, before max-pooling), 4, 8, 16 and 32."""
        enc = self.encoder
        stem = enc.act(enc.bn1(enc.conv1(x)))
        stride4 = enc.layer1(enc.maxpool(stem))
        stride8 = enc.layer2(stride4)
        stride16 = enc.layer3(stride8)
        return [stem, stride4, stride8, stride16, enc.layer4(stride16)]

    @torch.jit.unused
    def forward(self, x: torch.Tensor) -> DualRelBranchOutput:
        log_probabilities, activations, prototypes, mito, embedding = self._compute(x)
        return DualRelBranchOutput(
            log_probabilities=log_probabilities,
            probabilities=log_probabilities.exp(),
            activations=activations,
            prototypes=prototypes,
            mito_features=mito,
            embedding=embedding,
        )

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """The (B, 2, H, W) log-probabilities alone; TorchScript-compatible (``forward`` is left to Python)."""
        return self._compute(x)[0]

    def _compute(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(log_probabilities, activations, prototypes, mito_features, embedding)`` of :class:`DualRelBranchOutput`."""
        features = self.encode(x)
        skips = features[:-1][::-1] + [self.full_resolution(x)]
        h = features[-1]
        for i, up in enumerate(self.up_blocks):
            h = up(h, skips[i])
        embedding = self.embedding_head(h)  # E, (B, C, H, W)

        tokens = self.reduce(features[-1]).flatten(2).transpose(1, 2)  # X~, (B, hw, C)
        queries = self.mito_filters.unsqueeze(0).expand(x.shape[0], -1, -1)
        mito = self.attention.attend(queries, tokens)  # f~, (B, K, C)

        scores = torch.einsum("bkc,bchw->bkhw", mito, embedding)
        activations = torch.sigmoid(scores)  # eq. 7
        num_pixels = embedding.shape[2] * embedding.shape[3]
        prototypes = torch.einsum("bkhw,bchw->bkc", activations, embedding) / num_pixels  # eq. 8

        # merge (section 3.4): score_fg = sum_{k <= K/2} A_k, score_bg = sum_{k > K/2} A_k, probabilities
        # score / (score_fg + score_bg). In log space (log A_k = logsigmoid) so nothing underflows to log(0).
        half = scores.shape[1] // 2
        log_act = F.logsigmoid(scores)
        log_scores = torch.stack(
            [torch.logsumexp(log_act[:, half:], dim=1), torch.logsumexp(log_act[:, :half], dim=1)], dim=1
        )
        log_probabilities = torch.log_softmax(log_scores, dim=1)
        return log_probabilities, activations, prototypes, mito, embedding


