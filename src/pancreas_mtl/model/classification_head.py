"""Lesion-subtype classification heads that read the shared nnU-Net encoder.

Both heads take the *full* list of encoder skip features (one tensor per encoder stage, as returned by
``ResidualEncoder`` / ``PlainConvEncoder`` with ``return_skips=True``) plus the segmentation probabilities at full
resolution, and return ``(B, num_classes)`` logits. They share one call signature, so they are interchangeable:

    logits = head(skips, seg_probs)

* :class:`RoiAttentionPoolingHead` pools every chosen stage with a spatial attention map whose prior is the
  segmentation's lesion (and, weaker, pancreas) probability, so the descriptor is dominated by the lesion region even
  though the lesion is a tiny fraction of the patch.
* :class:`GlobalPoolingHead` is the plain baseline: global average (+ max) pooling of the same stages. It ignores the
  segmentation probabilities.

Several stages are used, not only the bottleneck: the subtype signal (cyst wall, septa, solid/cystic texture, duct
relation) is partly fine-grained and lives in the shallower, higher-resolution stages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "HEAD_VARIANTS",
    "GlobalPoolingHead",
    "RoiAttentionPoolingHead",
    "build_classification_head",
]

_CONV_BY_DIM = {2: nn.Conv2d, 3: nn.Conv3d}
_POOL_BY_DIM = {2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def _normalise_stage_indices(stage_channels: Sequence[int], stage_indices: Sequence[int]) -> list[int]:
    """Validate ``stage_indices`` against ``stage_channels`` (channels of EVERY encoder stage); negatives allowed."""
    n = len(stage_channels)
    if n == 0:
        raise ValueError("stage_channels is empty: pass the channels of every encoder stage")
    if len(stage_indices) == 0:
        raise ValueError("stage_indices is empty: choose at least one encoder stage for the classification head")
    out: list[int] = []
    for i in stage_indices:
        i = int(i)
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise ValueError(f"stage index {i} is out of range for an encoder with {n} stages (valid: 0..{n - 1})")
        if j in out:
            raise ValueError(f"stage index {i} is given twice in stage_indices={list(stage_indices)}")
        out.append(j)
    return sorted(out)


def _mlp(in_features: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Small regularised MLP: LayerNorm(in) -> Linear -> LayerNorm -> GELU -> Dropout -> Linear.

    The leading LayerNorm equalises the scale of the pooled vectors coming from different stages (and of avg- vs
    max-pooled values) before they are mixed.
    """
    return nn.Sequential(
        nn.LayerNorm(in_features),
        nn.Linear(in_features, hidden),
        nn.LayerNorm(hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


def _reset_mlp(mlp: nn.Sequential) -> None:
    for m in mlp.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _StageHeadBase(nn.Module):
    """Shared bookkeeping: which encoder stages are read and how many channels they have."""

    #: whether :meth:`forward` actually reads the segmentation probabilities (lets callers skip computing them)
    uses_guidance: bool = False

    def __init__(self, stage_channels: Sequence[int], stage_indices: Sequence[int], num_classes: int, dim: int):
        super().__init__()
        if dim not in _CONV_BY_DIM:
            raise ValueError(f"dim must be 2 or 3, got {dim}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.stage_channels = [int(c) for c in stage_channels]
        self.stage_indices = _normalise_stage_indices(self.stage_channels, stage_indices)
        self.num_classes = int(num_classes)
        self.dim = int(dim)

    def _selected(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != len(self.stage_channels):
            raise ValueError(
                f"expected one feature map per encoder stage ({len(self.stage_channels)}), got {len(features)}; "
                "pass the full skip list returned by the encoder"
            )
        sel = []
        for i in self.stage_indices:
            f = features[i]
            if f.ndim != self.dim + 2 or f.shape[1] != self.stage_channels[i]:
                raise ValueError(
                    f"encoder stage {i}: expected a (B, {self.stage_channels[i]}, *spatial[{self.dim}]) tensor, "
                    f"got shape {tuple(f.shape)}"
                )
            sel.append(f)
        return sel

    def reset_parameters(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class RoiAttentionPoolingHead(_StageHeadBase):
    """Segmentation-guided attention pooling over several encoder stages.

    For each chosen stage ``s`` with features ``F_s`` (B, C_s, *S_s):

    1. guidance ``g = p[lesion] + pancreas_weight * p[pancreas]`` (full-resolution softmax probabilities), resampled
       to ``S_s`` by adaptive average pooling (i.e. the fraction of lesion/pancreas inside each coarse voxel);
    2. attention logits ``a = conv1x1(F_s) + scale_s * log(g + eps)``; ``w = softmax(a)`` over all voxels;
    3. pooled vector ``v_s = sum_voxels(w * F_s)`` (B, C_s).

    ``scale_s`` is learnable (initialised to ``guidance_scale``) and the 1x1 conv is zero-initialised, so at the start
    the pooling is exactly a guidance-weighted mean: lesion voxels count 1, pancreas voxels ``pancreas_weight``,
    background ~``eps``. The network can then learn where inside/around the ROI to look and how strongly to trust the
    prior. The pooled vectors of all stages (plus, if ``include_global_context``, a plain global average of the
    deepest chosen stage for scene context) are concatenated and fed to a small MLP.

    ``guidance_detach=True`` (default) detaches the probabilities before use. Reason: the attention weights are a
    function of the segmentation output; without the detach, the classification loss could lower itself by *changing
    the segmentation* (e.g. spreading lesion probability over whatever tissue is discriminative for the subtype),
    which degrades the masks and lets the classification loss - weighted arbitrarily against the Dice/CE loss - drive
    the segmentation decoder. Detached, the decoder is trained by the segmentation loss only, and the classification
    gradient reaches the shared encoder only through the pooled features.
    """

    uses_guidance = True

    def __init__(
        self,
        stage_channels: Sequence[int],
        stage_indices: Sequence[int],
        num_classes: int = 3,
        hidden: int = 128,
        dropout: float = 0.3,
        guidance_detach: bool = True,
        *,
        lesion_channel: int = 2,
        pancreas_channel: int = 1,
        pancreas_weight: float = 0.25,
        guidance_scale: float = 1.0,
        eps: float = 1e-4,
        include_global_context: bool = True,
        dim: int = 3,
    ):
        super().__init__(stage_channels, stage_indices, num_classes, dim)
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.guidance_detach = bool(guidance_detach)
        self.lesion_channel = int(lesion_channel)
        self.pancreas_channel = int(pancreas_channel)
        self.pancreas_weight = float(pancreas_weight)
        self.initial_guidance_scale = float(guidance_scale)
        self.eps = float(eps)
        self.include_global_context = bool(include_global_context)

        conv = _CONV_BY_DIM[self.dim]
        self.attention_convs = nn.ModuleList(conv(self.stage_channels[i], 1, kernel_size=1) for i in self.stage_indices)
        self.guidance_scales = nn.Parameter(torch.full((len(self.stage_indices),), self.initial_guidance_scale))
        in_features = sum(self.stage_channels[i] for i in self.stage_indices)
        if self.include_global_context:
            in_features += self.stage_channels[self.stage_indices[-1]]
        self.in_features = in_features
        self.mlp = _mlp(in_features, hidden, num_classes, dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for c in self.attention_convs:
            nn.init.zeros_(c.weight)
            nn.init.zeros_(c.bias)
        with torch.no_grad():
            self.guidance_scales.fill_(self.initial_guidance_scale)
        _reset_mlp(self.mlp)

    def guidance_map(self, seg_probs: torch.Tensor) -> torch.Tensor:
        """(B, C_seg, *S) probabilities -> (B, 1, *S) guidance ``p_lesion + pancreas_weight * p_pancreas``."""
        if seg_probs.ndim != self.dim + 2:
            raise ValueError(f"seg_probs must be (B, C, *spatial[{self.dim}]), got shape {tuple(seg_probs.shape)}")
        need = max(self.lesion_channel, self.pancreas_channel) + 1
        if seg_probs.shape[1] < need:
            raise ValueError(
                f"seg_probs has {seg_probs.shape[1]} channels; need >= {need} "
                f"(lesion channel {self.lesion_channel}, pancreas channel {self.pancreas_channel})"
            )
        p = seg_probs.detach() if self.guidance_detach else seg_probs
        p = p.float()
        g = p[:, self.lesion_channel : self.lesion_channel + 1]
        if self.pancreas_weight != 0:
            g = g + self.pancreas_weight * p[:, self.pancreas_channel : self.pancreas_channel + 1]
        return g

    def _resample(self, g: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        size = tuple(int(s) for s in size)
        if tuple(g.shape[2:]) == size:
            return g
        if all(t <= s for t, s in zip(size, g.shape[2:])):
            # Mean over each coarse cell = fraction of ROI in it; exact for nnU-Net's integer strides.
            return _POOL_BY_DIM[self.dim](g, size)
        mode = "trilinear" if self.dim == 3 else "bilinear"
        return F.interpolate(g, size=size, mode=mode, align_corners=False)

    def attention_weights(self, features: Sequence[torch.Tensor], seg_probs: torch.Tensor) -> list[torch.Tensor]:
        """Per chosen stage, the (B, 1, *S_s) attention weights (each sums to 1 over voxels). For inspection."""
        sel = self._selected(features)
        g = self.guidance_map(seg_probs)
        out = []
        for k, f in enumerate(sel):
            out.append(self._weights(k, f, g).view(f.shape[0], 1, *f.shape[2:]))
        return out

    def _weights(self, k: int, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        b = f.shape[0]
        if g.shape[0] != b:
            raise ValueError(f"batch size mismatch: features have {b}, seg_probs have {g.shape[0]}")
        gs = self._resample(g, f.shape[2:])
        logits = self.attention_convs[k](f).float() + self.guidance_scales[k] * torch.log(gs + self.eps)
        return torch.softmax(logits.reshape(b, -1), dim=1)  # (B, N), float32

    def forward(self, features: Sequence[torch.Tensor], seg_probs: torch.Tensor | None) -> torch.Tensor:
        if seg_probs is None:
            raise ValueError("RoiAttentionPoolingHead needs the segmentation probabilities (seg_probs), got None")
        sel = self._selected(features)
        g = self.guidance_map(seg_probs)
        pooled = []
        for k, f in enumerate(sel):
            b, c = f.shape[:2]
            w = self._weights(k, f, g)  # (B, N)
            flat = f.reshape(b, c, -1).float()
            # Autocast runs bmm in fp16, where attention weights of about 1/N (N voxels: tens of thousands) lose
            # most of their digits or underflow to zero: the pooling stays in fp32.
            with torch.autocast(flat.device.type, enabled=False):
                pooled.append(torch.bmm(flat, w.unsqueeze(-1)).squeeze(-1))  # (B, C)
        if self.include_global_context:
            pooled.append(sel[-1].float().flatten(2).mean(-1))
        return self.mlp(torch.cat(pooled, dim=1))


class GlobalPoolingHead(_StageHeadBase):
    """Baseline: global average (+ max) pooling of the chosen stages -> same MLP. Ignores ``seg_probs``."""

    uses_guidance = False

    def __init__(
        self,
        stage_channels: Sequence[int],
        stage_indices: Sequence[int],
        num_classes: int = 3,
        hidden: int = 128,
        dropout: float = 0.3,
        *,
        use_max: bool = True,
        dim: int = 3,
    ):
        super().__init__(stage_channels, stage_indices, num_classes, dim)
        self.use_max = bool(use_max)
        per = 2 if self.use_max else 1
        self.in_features = per * sum(self.stage_channels[i] for i in self.stage_indices)
        self.mlp = _mlp(self.in_features, hidden, num_classes, dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset_mlp(self.mlp)

    def forward(self, features: Sequence[torch.Tensor], seg_probs: torch.Tensor | None = None) -> torch.Tensor:
        pooled = []
        for f in self._selected(features):
            flat = f.float().flatten(2)
            pooled.append(flat.mean(-1))
            if self.use_max:
                pooled.append(flat.amax(-1))
        return self.mlp(torch.cat(pooled, dim=1))


HEAD_VARIANTS: dict[str, type[_StageHeadBase]] = {
    "roi_attention": RoiAttentionPoolingHead,
    "global_pool": GlobalPoolingHead,
}


def build_classification_head(
    variant: str,
    stage_channels: Sequence[int],
    stage_indices: Sequence[int],
    num_classes: int = 3,
    hidden: int = 128,
    dropout: float = 0.3,
    **kwargs,
) -> nn.Module:
    """Build a head by name (``"roi_attention"`` or ``"global_pool"``); extra kwargs go to the head class.

    ``guidance_detach`` and the other guidance options are only meaningful for ``"roi_attention"``; passing them to
    ``"global_pool"`` raises ``TypeError`` like any unknown keyword.
    """
    try:
        cls = HEAD_VARIANTS[variant]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown classification head variant {variant!r}; valid variants: {sorted(HEAD_VARIANTS)}"
        ) from None
    if not (0.0 <= dropout < 1.0) or math.isnan(dropout):
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return cls(stage_channels, stage_indices, num_classes=num_classes, hidden=hidden, dropout=dropout, **kwargs)
