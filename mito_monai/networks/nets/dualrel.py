"""DualRel (CVPR 2023): two ResNet/U-Net branches with mito filters, prototypes and a reliability head."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Union

import torch
import torch.nn as nn
from monai.networks.nets.resnet import resnet_params

from mito_monai.ops import AGENT_STRATEGIES
from mito_monai.networks.nets.dualrel_branch import DualRelBranch, DualRelBranchOutput, DualRelOutput

__all__ = ["DualRelBranchOutput", "DualRelInferenceNet", "DualRelNet", "DualRelOutput", "DualRelSingleBranch"]

logger = logging.getLogger(__name__)

_UPSAMPLE_MODES = ("deconv", "pixelshuffle", "nontrainable")
# total stride of the ResNet encoder (stem convolution 2, max-pooling 2, three strided stages 2 each)
_ENCODER_STRIDE = 32
# the reliability is eps + (1 - eps) * sigmoid(.): strictly positive even where the sigmoid underflows
_RELIABILITY_EPS = 1e-6


class DualRelNet(nn.Module):
    """
    The dual-reliable network of DualRel (Mai et al., CVPR 2023) for semi-supervised mitochondria segmentation.

    Two branches of the same structure, independently initialised (docs/design.md section 4). Each branch:

    - encoder: MONAI's :py:class:`monai.networks.nets.ResNet` (2D, ``encoder_depth`` 50 by default, the
      torchvision layout: 7x7 stride-2 stem, max-pooling, bias-free 1x1 shortcut projections) without its
      pooling / fully connected head; its feature maps at strides 2, 4, 8, 16, 32 are taken by calling the
      ResNet's layers directly;
    - upsampling path: a U-Net decoder of five MONAI ``UpCat`` blocks (upsample x2, concatenate the encoder map
      of the same stride, two 3x3 conv-norm-act); the last step, from stride 2 to the input resolution,
      concatenates a full-resolution ``TwoConv`` of the input, since the ResNet has no stride-1 map. A 1x1
      convolution then gives the pixel embedding ``E`` (B, C, H, W) with ``C = embed_dim``;
    - ``K = num_filters`` learnable mito filters ``f_k`` (C-dim, standard normal initialisation) queried against
      the deepest encoder map reduced by a 1x1 convolution from D to C channels and flattened (B, hw, C), by
      :class:`mito_monai.networks.blocks.ReferentialCrossAttention` -> mito features ``f~_k`` (B, K, C);
    - activation maps ``A_k = sigmoid(f~_k . E)`` (B, K, H, W) and prototypes ``p_k = mean_pixels(A_k * E)``;
    - merge (paper section 3.4): foreground score ``sum_{k=1}^{K/2} A_k``, background score the sum of the
      other half; the 2-class probability map divides each score by their sum (channel 0 background,
      channel 1 mitochondria). It is computed in log space (``log A_k = logsigmoid``, ``logsumexp``,
      ``log_softmax``), so the log-probabilities are finite even where activations underflow.

    Shared by the branches: the reliability head ``r_k = eps + (1 - eps) sigmoid(MLP([f~_k^1, f~_k^2]))``,
    a two-layer MLP (Linear(2C, C) - ReLU - Linear(C, 1)); ``eps = 1e-6`` keeps ``r_k`` strictly positive
    (the RPC loss has ``exp(1 - 1/r)``). Each branch has its own mito filters, 1x1 reduction and attention
    (the paper draws one set but does not say whether it is shared; independent branches keep the two
    predictions independent, the usual two-branch co-training setting).

    ``forward(x)`` runs both branches (training); ``forward(x, branch=0)`` runs one branch and returns its
    (B, 2, H, W) log-probabilities, usable with ``argmax``, ``softmax`` and MONAI inferers, e.g.
    ``SlidingWindowInferer(...)(x, net, branch=0)`` (the inferer passes keyword arguments to the network).

    Args:
        in_channels: input channels (1 for grey-scale EM).
        num_classes: number of classes; the merge defines exactly 2 (background, mitochondria).
        embed_dim: C, the channels of the pixel embedding, mito filters and tokens.
        num_filters: K, the number of mito filters; even (the merge splits them into halves), at least 2.
            The paper's best value is 12 (Fig. 3).
        num_references: number of reference points of the referential correlation.
        use_references: False gives plain cross-attention (the paper's "w/o ref." ablation).
        pretrained_path: optional local file with a ResNet state dict (e.g. torchvision's ResNet-50 weights,
            saved with ``torch.save``) loaded into both encoders; see :meth:`load_pretrained_encoders`.
            Nothing is ever downloaded.
        encoder_depth: ResNet depth, one of 10, 18, 34, 50, 101, 152, 200 (MONAI's ``resnet_params``).
        decoder_channels: output channels of the five up-steps (strides 16, 8, 4, 2, 1).
        reference_strategy: how reference points are chosen, one of ``"orthogonal"``, ``"random"``, ``"all"``.
        ffn_hidden: hidden width of the attention FFN (``None``: ``4 * embed_dim``).
        attention_dropout: dropout of the attention block, in [0, 1).
        act: activation of the encoder and decoder, as understood by MONAI's ``Act`` factory.
        norm: normalisation of the encoder and decoder, as understood by MONAI's ``Norm`` factory.
        upsample: decoder upsampling, ``"deconv"``, ``"pixelshuffle"`` or ``"nontrainable"``.
        branch_seeds: optional two different integer seeds for a reproducible initialisation: branch ``i`` is
            initialised right after ``torch.manual_seed(branch_seeds[i])`` (the reliability head follows branch
            1 from the same stream), inside ``torch.random.fork_rng``, so the global RNG is left untouched.
            ``None``: everything is initialised one part after the other from the global RNG (the two branches
            differ all the same).

    Example::

        >>> net = DualRelNet()
        >>> out = net(torch.zeros(2, 1, 64, 64))
        >>> out.branches[0].probabilities.shape, out.reliability.shape
        (torch.Size([2, 2, 64, 64]), torch.Size([2, 12]))
        >>> net(torch.zeros(2, 1, 64, 64), branch=0).shape
        torch.Size([2, 2, 64, 64])
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        embed_dim: int = 64,
        num_filters: int = 12,
        num_references: int = 16,
        use_references: bool = True,
        pretrained_path: str | os.PathLike | None = None,
        encoder_depth: int = 50,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        reference_strategy: str = "orthogonal",
        ffn_hidden: int | None = None,
        attention_dropout: float = 0.0,
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = "batch",
        upsample: str = "deconv",
        branch_seeds: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("embed_dim", embed_dim),
            ("num_filters", num_filters),
            ("num_references", num_references),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if num_classes != 2 or isinstance(num_classes, bool):
            raise ValueError(
                f"DualRelNet merges its activation maps into exactly 2 classes (background, mitochondria), "
                f"got num_classes={num_classes!r}."
            )
        if num_filters < 2 or num_filters % 2 != 0:
            raise ValueError(
                f"num_filters must be an even number >= 2 (the first half votes for mitochondria, the second for "
                f"background), got {num_filters!r}."
            )
        depths = sorted(int(name[len("resnet") :]) for name in resnet_params)
        if isinstance(encoder_depth, bool) or encoder_depth not in depths:
            raise ValueError(f"encoder_depth must be one of {depths}, got {encoder_depth!r}.")
        if isinstance(decoder_channels, (str, bytes)) or not isinstance(decoder_channels, Sequence):
            raise TypeError(f"decoder_channels must be a sequence of 5 positive integers, got {decoder_channels!r}.")
        decoder_channels = tuple(decoder_channels)
        if len(decoder_channels) != 5 or any(
            isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in decoder_channels
        ):
            raise ValueError(
                "decoder_channels must be 5 positive integers (up-steps to strides 16, 8, 4, 2, 1), "
                f"got {decoder_channels!r}."
            )
        if not isinstance(use_references, bool):
            raise TypeError(f"use_references must be a bool, got {type(use_references).__name__}.")
        if reference_strategy not in AGENT_STRATEGIES:
            raise ValueError(f"reference_strategy must be one of {AGENT_STRATEGIES}, got {reference_strategy!r}.")
        if upsample not in _UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {_UPSAMPLE_MODES}, got {upsample!r}.")
        if branch_seeds is not None:
            if isinstance(branch_seeds, (str, bytes)) or not isinstance(branch_seeds, Sequence):
                raise TypeError(f"branch_seeds must be None or two integers, got {branch_seeds!r}.")
            branch_seeds = tuple(branch_seeds)
            if len(branch_seeds) != 2 or any(isinstance(s, bool) or not isinstance(s, int) for s in branch_seeds):
                raise ValueError(f"branch_seeds must be None or two integers, got {branch_seeds!r}.")
            if branch_seeds[0] == branch_seeds[1]:
                raise ValueError(f"branch_seeds must differ (different initialisation), got {branch_seeds!r}.")
        if pretrained_path is not None and not isinstance(pretrained_path, (str, os.PathLike)):
            raise TypeError(f"pretrained_path must be None or a path, got {type(pretrained_path).__name__}.")

        self.in_channels = in_channels
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.num_filters = num_filters
        self.divisor = _ENCODER_STRIDE

        def make_branch() -> DualRelBranch:
            return DualRelBranch(
                in_channels=in_channels,
                embed_dim=embed_dim,
                num_filters=num_filters,
                encoder_depth=encoder_depth,
                decoder_channels=decoder_channels,
                num_references=num_references,
                use_references=use_references,
                reference_strategy=reference_strategy,
                ffn_hidden=ffn_hidden,
                attention_dropout=attention_dropout,
                act=act,
                norm=norm,
                upsample=upsample,
            )

        def make_reliability_head() -> nn.Sequential:
            return nn.Sequential(nn.Linear(2 * embed_dim, embed_dim), nn.ReLU(inplace=True), nn.Linear(embed_dim, 1))

        if branch_seeds is None:
            branches = [make_branch(), make_branch()]
            head = make_reliability_head()
        else:
            branches = []
            for i in range(2):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(branch_seeds[i])
                    branches.append(make_branch())
                    if i == 1:
                        head = make_reliability_head()
        self.branches = nn.ModuleList(branches)
        self.reliability_head = head
        self.pretrained_report: dict[str, list[str]] | None = None
        if pretrained_path is not None:
            self.pretrained_report = self.load_pretrained_encoders(pretrained_path)

    def forward(
        self, x: torch.Tensor, branch: int | None = None, details: bool = False, with_reliability: bool = True
    ) -> Union[DualRelOutput, DualRelBranchOutput, torch.Tensor]:
        """
        Everything a training step needs comes out of this one call, so that a
        ``torch.nn.parallel.DistributedDataParallel`` wrapper (which only sees ``forward``) synchronises the
        gradients of every part that was used.

        Args:
            x: (B, in_channels, H, W) with H and W divisible by 32.
            branch: ``None`` runs both branches (training); 0 or 1 runs that branch only (inference).
            details: with ``branch`` 0 or 1, return the branch's whole :class:`DualRelBranchOutput` instead of
                its log-probabilities.
            with_reliability: with ``branch=None``, whether to compute the reliabilities (False leaves
                ``DualRelOutput.reliability`` None and the reliability head out of the graph, e.g. for CPS).

        Returns:
            a :class:`DualRelOutput` for ``branch=None``; otherwise the branch's (B, 2, H, W) log-probabilities
            (logits whose softmax is the merged probability map; channel 1 is mitochondria), or its
            :class:`DualRelBranchOutput` with ``details=True``.

        Raises:
            ValueError: for a wrong input rank, channel number or spatial size, or an invalid ``branch``.
        """
        if branch is None:
            self._check_input(x)
            first, second = self.branches[0](x), self.branches[1](x)
            reliability = self.reliability(first, second) if with_reliability else None
            return DualRelOutput(branches=(first, second), reliability=reliability)
        out = self.forward_branch(x, branch)
        return out if details else out.log_probabilities

    def forward_branch(self, x: torch.Tensor, branch: int) -> DualRelBranchOutput:
        """
        Run one branch and return everything it computes.

        Args:
            x: (B, in_channels, H, W) with H and W divisible by 32.
            branch: 0 or 1.
        """
        if isinstance(branch, bool) or branch not in (0, 1):
            raise ValueError(f"branch must be None, 0 or 1, got {branch!r}.")
        self._check_input(x)
        return self.branches[branch](x)

    def reliability(self, first: DualRelBranchOutput, second: DualRelBranchOutput) -> torch.Tensor:
        """``r_k = eps + (1 - eps) * sigmoid(MLP(concat(f~_k^1, f~_k^2))))``, (B, K) in (0, 1] (eq. 9)."""
        joint = torch.cat([first.mito_features, second.mito_features], dim=-1)  # (B, K, 2C)
        logit = self.reliability_head(joint).squeeze(-1)
        return _RELIABILITY_EPS + (1.0 - _RELIABILITY_EPS) * torch.sigmoid(logit)

    def load_pretrained_encoders(self, path: str | os.PathLike) -> dict[str, list[str]]:
        """
        Load a local ResNet state dict into both encoders (non-strict), and report what matched.

        The file is read with ``torch.load(weights_only=True)``. A checkpoint that wraps the weights under
        ``"state_dict"`` or ``"model"`` is unwrapped, and ``"module."`` (DataParallel) and ``"encoder."`` /
        ``"backbone."`` prefixes are removed. Keys follow the torchvision / MONAI ResNet names (``conv1.weight``,
        ``layer1.0.bn1.weight``, ...). A stem convolution trained on RGB (3 input channels) is adapted to a
        1-channel network by summing over its input channels (the grey image then gives the response the RGB
        network gives to the same grey value in every colour channel). Tensors whose shape does not fit are
        skipped and reported; the classifier (``fc.*``) is reported as unexpected.

        Args:
            path: local file holding the state dict.

        Returns:
            ``{"loaded": [...], "missing": [...], "unexpected": [...], "mismatched": [...]}`` key lists (also
            logged, and stored in ``self.pretrained_report``).

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            ValueError: if the file holds no state dict, or none of its tensors fits the encoder.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"pretrained_path {path!r} does not exist (weights are never downloaded).")
        state = torch.load(path, map_location="cpu", weights_only=True)
        for wrapper in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
        if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"{path!r} does not hold a state dict of tensors (got {type(state).__name__}).")
        cleaned: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                continue
            for prefix in ("module.", "encoder.", "backbone."):
                if key.startswith(prefix):
                    key = key[len(prefix) :]
            cleaned[key] = value

        target = self.branches[0].encoder.state_dict()
        loadable: dict[str, torch.Tensor] = {}
        mismatched: list[str] = []
        for key, value in cleaned.items():
            if key not in target:
                continue
            expected = target[key].shape
            if key == "conv1.weight" and value.dim() == 4 and value.shape[1] != expected[1] and expected[1] == 1:
                value = value.sum(dim=1, keepdim=True)
            if value.shape != expected:
                mismatched.append(f"{key}: file {tuple(value.shape)} vs encoder {tuple(expected)}")
                continue
            loadable[key] = value
        if not loadable:
            raise ValueError(
                f"no tensor of {path!r} fits the ResNet encoder: {len(cleaned)} tensors in the file, e.g. "
                f"{sorted(cleaned)[:5]}; the encoder expects keys such as {sorted(target)[:5]}"
                + (f"; shape mismatches: {mismatched[:5]}" if mismatched else "")
                + "."
            )
        for branch in self.branches:
            branch.encoder.load_state_dict(loadable, strict=False)
        report = {
            "loaded": sorted(loadable),
            "missing": sorted(set(target) - set(loadable)),
            "unexpected": sorted(set(cleaned) - set(target)),
            "mismatched": mismatched,
        }
        logger.info(
            "DualRelNet: loaded %d/%d encoder tensors from %s into both branches; missing %d %s, unexpected %d %s, "
            "shape-mismatched %d %s.",
            len(report["loaded"]),
            len(target),
            path,
            len(report["missing"]),
            report["missing"][:10],
            len(report["unexpected"]),
            report["unexpected"][:10],
            len(mismatched),
            mismatched[:10],
        )
        self.pretrained_report = report
        return report

    @torch.jit.unused
    def _check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError when ``x`` does not fit the network (rank, channels, spatial size divisible by 32)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}.")
        if torch.jit.is_tracing():
            return
        if x.dim() != 4:
            raise ValueError(f"expected a 4D input (B, {self.in_channels}, H, W), got shape {list(x.shape)}.")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channel(s), got {x.shape[1]} (shape {list(x.shape)}).")
        if any(size % self.divisor != 0 or size == 0 for size in x.shape[2:]):
            raise ValueError(
                f"H and W must be divisible by {self.divisor} (the ResNet encoder's total stride), got spatial "
                f"shape {list(x.shape[2:])}; pad the input (e.g. monai.transforms.DivisiblePad(k={self.divisor})) "
                "or use an inferer whose window size is a multiple of 32."
            )


class DualRelSingleBranch(nn.Module):
    """
    One branch of a :class:`DualRelNet` as a plain segmentation network, for evaluators and inferers.

    ``forward(x)`` is ``network(x, branch=branch)``: (B, 1, H, W) -> (B, 2, H, W) log-probabilities (channel 1
    mitochondria; ``softmax(dim=1)`` gives the merged probability map). The wrapped network is shared, not
    copied: training it changes this view, and checkpoints are the wrapped network's state dict (load them into
    ``network``, not into this wrapper).

    Args:
        network: the two-branch network.
        branch: 0 or 1; DualRel infers with one branch (docs/design.md section 4).
    """

    def __init__(self, network: DualRelNet, branch: int = 0) -> None:
        super().__init__()
        if not isinstance(network, DualRelNet):
            raise TypeError(f"network must be a DualRelNet, got {type(network).__name__}.")
        if isinstance(branch, bool) or branch not in (0, 1):
            raise ValueError(f"branch must be 0 or 1, got {branch!r}.")
        self.network = network
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x, branch=self.branch)


class DualRelInferenceNet(DualRelNet):
    """
    A :class:`DualRelNet` whose ``forward(x)`` is one branch's log-probabilities: the bundle's deployable network.

    ``forward(x)``: (B, in_channels, H, W) -> (B, 2, H, W) log-probabilities of branch ``branch`` (channel 1
    mitochondria; ``softmax(dim=1)`` gives the merged probability map), the same values as
    ``DualRelNet.forward(x, branch=branch)``. It has the parameters and state-dict keys of a
    :class:`DualRelNet` (both branches and the reliability head), so a training checkpoint loads into it as
    it is (``load_state_dict``, ``monai.handlers.CheckpointLoader``, ``monai.bundle ckpt_export``). Unlike
    :class:`DualRelNet` it is TorchScript-compatible (``torch.jit.script``; only the ``"orthogonal"`` and
    ``"all"`` reference strategies script) and has the (B, 2, H, W) contract the MONAI model zoo checks.
    :class:`DualRelSingleBranch` is the other way to run one branch: a view of a network being trained.

    Args:
        branch: 0 or 1, the branch ``forward`` runs; DualRel infers with one branch (docs/design.md section 4).
        kwargs: the arguments of :class:`DualRelNet`.
    """

    def __init__(self, branch: int = 0, **kwargs) -> None:
        if isinstance(branch, bool) or branch not in (0, 1):
            raise ValueError(f"branch must be 0 or 1, got {branch!r}.")
        super().__init__(**kwargs)
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """
        Args:
            x: (B, in_channels, H, W) with H and W divisible by 32.

        Returns:
            (B, 2, H, W) log-probabilities of the chosen branch.
        """
        if not torch.jit.is_scripting():
            self._check_input(x)
        out = x
        for i, module in enumerate(self.branches):
            if i == self.branch:
                out = module.segment(x)
        return out
