"""Multi-task wrapper around an nnU-Net v2 segmentation network (shared encoder, seg decoder, subtype head).

:class:`MultiTaskUNet` re-uses the ``encoder`` and ``decoder`` submodules of a network built by nnU-Net
(``ResidualEncoderUNet`` from the ResEnc planners, or ``PlainConvUNet``) under the same attribute names, so

* a stage-1 (segmentation-only) checkpoint maps 1:1 onto it (``encoder.*`` / ``decoder.*`` keys);
* ``forward(x)`` returns exactly what the plain network returns (tensor, or list of tensors with deep supervision),
  so nnU-Net's stock trainer, loss wrapper, validation and ``nnUNetPredictor`` work unchanged;
* nnU-Net's ``set_deep_supervision_enabled`` (``mod.decoder.deep_supervision = enabled``) keeps working.

Classification logits are obtained explicitly with ``forward(x, return_class_logits=True)``, which runs the
encoder once and feeds the same skips to the decoder and the head (the head's guidance is the softmax of the
highest-resolution segmentation output).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from pancreas_mtl.data.labels import LESION_LABEL, REGIONS_CLASS_ORDER
from pancreas_mtl.model.classification_head import build_classification_head

__all__ = [
    "HEAD_PREFIX",
    "MultiTaskUNet",
    "build_multitask_network",
    "default_stage_indices",
    "resolve_arch_class_name",
    "strip_state_dict_prefixes",
]

#: state_dict prefix of the classification head inside :class:`MultiTaskUNet`
HEAD_PREFIX = "classification_head."
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile, DDP / DataParallel
_ARCH_KEY_ATTRS = ("key_to_encoder", "key_to_stem", "keys_to_in_proj", "key_to_lpe")


def default_stage_indices(n_stages: int) -> list[int]:
    """Encoder stages the head reads by default: stage 2 up to the bottleneck, at most the last 4 stages.

    ResEnc M 3d_fullres for pancreas CT has 6 stages -> ``[2, 3, 4, 5]`` (1/4 .. 1/32 resolution). Stages 0-1 are
    full/half resolution low-level edges (expensive, little subtype signal beyond what stage 2 has); the deeper
    stages carry context. With very few stages all available ones are used.
    """
    if n_stages < 1:
        raise ValueError(f"n_stages must be >= 1, got {n_stages}")
    if n_stages <= 2:
        return list(range(n_stages))
    return list(range(max(2, n_stages - 4), n_stages))


def strip_state_dict_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Remove leading ``_orig_mod.`` (torch.compile) / ``module.`` (DDP) prefixes, in any nesting order."""
    out: dict[str, Any] = {}
    for k, v in state_dict.items():
        key = k
        changed = True
        while changed:
            changed = False
            for p in _WRAPPER_PREFIXES:
                if key.startswith(p):
                    key = key[len(p) :]
                    changed = True
        if key in out:
            raise RuntimeError(f"checkpoint key {k!r} collides with another key after stripping wrapper prefixes")
        out[key] = v
    return out


def _extract_state_dict(source: Any) -> dict[str, torch.Tensor]:
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise RuntimeError(f"segmentation checkpoint not found: {path}")
        # nnU-Net checkpoints hold non-tensor objects (init_args, logging, ...) -> weights_only=False, as nnU-Net
        # itself does in nnUNetTrainer.load_checkpoint. Only load checkpoints produced by this pipeline.
        source = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(source, Mapping):
        raise RuntimeError(f"expected a state dict, an nnU-Net checkpoint dict or a path, got {type(source).__name__}")
    if "network_weights" in source:
        sd = source["network_weights"]
    elif "state_dict" in source and isinstance(source["state_dict"], Mapping):
        sd = source["state_dict"]
    else:
        sd = source
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise RuntimeError(
            f"checkpoint does not look like a state dict: {len(bad)} non-tensor entries, e.g. {bad[:5]} "
            "(nnU-Net checkpoints keep the weights under 'network_weights')"
        )
    return strip_state_dict_prefixes(sd)


#: output channels of region-based training (training.labels regions): the whole pancreas, then the lesion
WHOLE_REGION_CHANNEL, LESION_REGION_CHANNEL = 0, 1


def lesion_probability(seg_logits: torch.Tensor, region_outputs: bool) -> torch.Tensor:
    """(B, C, *S) segmentation logits -> (B, *S) lesion probability: the softmax's lesion channel, or the sigmoid of
    the lesion region."""
    if region_outputs:
        return torch.sigmoid(seg_logits[:, LESION_REGION_CHANNEL].float())
    return torch.softmax(seg_logits.float(), dim=1)[:, LESION_LABEL]


def label_probabilities(seg_logits: torch.Tensor, region_outputs: bool) -> torch.Tensor:
    """(B, C, *S) segmentation logits -> (B, 3, *S) probabilities of background, pancreas and lesion.

    Softmax outputs give their softmax. Region outputs (sigmoids of the whole pancreas ``w`` and the lesion ``l``)
    give background ``1 - w``, pancreas ``max(w - l, 0)`` and lesion ``l``: where both outputs say lesion, or both
    say background, the most probable label is the one nnU-Net's label map (``regions_class_order``: the lesion over
    the pancreas) gives the voxel."""
    if not region_outputs:
        return torch.softmax(seg_logits.float(), dim=1)
    whole = torch.sigmoid(seg_logits[:, WHOLE_REGION_CHANNEL].float())
    lesion = torch.sigmoid(seg_logits[:, LESION_REGION_CHANNEL].float())
    return torch.stack([1 - whole, (whole - lesion).clamp_min(0), lesion], dim=1)


class MultiTaskUNet(nn.Module):
    """nnU-Net segmentation network + lesion-subtype classification head on the shared encoder.

    Parameters
    ----------
    segmentation_network:
        A network with ``.encoder`` (returning one skip per stage) and ``.decoder`` whose forward is
        ``decoder(encoder(x))`` - nnU-Net's ``ResidualEncoderUNet`` / ``PlainConvUNet``. Its ``encoder`` and
        ``decoder`` modules are taken over (not copied); the wrapper object itself is not kept as a submodule.
    head_variant:
        ``"roi_attention"`` (default) or ``"global_pool"``.
    stage_indices:
        Encoder stages fed to the head; default :func:`default_stage_indices`.
    region_outputs:
        The segmentation outputs are regions (whole pancreas, lesion; sigmoid) rather than softmax labels: the
        ROI-attention head's guidance comes from :func:`label_probabilities` either way.
    head_kwargs:
        Passed to :func:`~pancreas_mtl.model.classification_head.build_classification_head`
        (``num_classes``, ``hidden``, ``dropout``, ``guidance_detach``, ...).
    """

    def __init__(
        self,
        segmentation_network: nn.Module,
        head_variant: str = "roi_attention",
        stage_indices: Sequence[int] | None = None,
        region_outputs: bool = False,
        **head_kwargs: Any,
    ):
        super().__init__()
        self.region_outputs = bool(region_outputs)
        encoder = getattr(segmentation_network, "encoder", None)
        decoder = getattr(segmentation_network, "decoder", None)
        if not isinstance(encoder, nn.Module) or not isinstance(decoder, nn.Module):
            raise TypeError(
                f"{type(segmentation_network).__name__} has no .encoder/.decoder submodules; MultiTaskUNet needs an "
                "nnU-Net UNet such as ResidualEncoderUNet or PlainConvUNet"
            )
        if not hasattr(encoder, "output_channels"):
            raise TypeError(f"{type(encoder).__name__} has no output_channels; cannot size the classification head")
        if getattr(encoder, "return_skips", True) is not True:
            raise TypeError("the encoder must return its skips (return_skips=True) to be shared with the head")

        self.encoder = encoder
        self.decoder = decoder
        self.segmentation_network_class = type(segmentation_network)
        for attr in _ARCH_KEY_ATTRS:  # AbstractDynamicNetworkArchitectures metadata (pretraining / fine-tuning tools)
            if hasattr(segmentation_network, attr):
                setattr(self, attr, getattr(segmentation_network, attr))

        self.stage_channels: list[int] = [int(c) for c in encoder.output_channels]
        if stage_indices is None:
            stage_indices = default_stage_indices(len(self.stage_channels))
        dim = 2 if "2d" in getattr(getattr(encoder, "conv_op", None), "__name__", "3d").lower() else 3
        head_kwargs.setdefault("dim", dim)
        self.head_variant = head_variant
        self.classification_head = build_classification_head(
            head_variant, self.stage_channels, list(stage_indices), **head_kwargs
        )
        self.stage_indices: list[int] = list(self.classification_head.stage_indices)

    # ------------------------------------------------------------------ forward paths
    def forward(self, x: torch.Tensor, return_class_logits: bool = False):
        """Segmentation output exactly as the plain nnU-Net network returns it (tensor, or list with deep
        supervision), which is what nnU-Net's stock trainer and predictor call.

        ``return_class_logits=True`` is the explicit multi-task path: ``(seg_output, class_logits)`` from the same
        single encoder pass. It goes through ``forward`` (not a separate method) so that DDP's gradient
        synchronisation and a ``torch.compile``d module both see it.
        """
        skips = self.encoder(x)
        seg = self.decoder(skips)
        if not return_class_logits:
            return seg
        probs = None
        if getattr(self.classification_head, "uses_guidance", True):
            highres = seg[0] if isinstance(seg, (list, tuple)) else seg
            probs = label_probabilities(highres, self.region_outputs)
        return seg, self.classification_head(skips, probs)

    @property
    def deep_supervision(self) -> bool:
        return bool(self.decoder.deep_supervision)

    @deep_supervision.setter
    def deep_supervision(self, enabled: bool) -> None:
        self.decoder.deep_supervision = bool(enabled)

    def compute_conv_feature_map_size(self, input_size):
        """Same as the plain network's (segmentation part; the head's pooled maps are negligible)."""
        return self.encoder.compute_conv_feature_map_size(input_size) + self.decoder.compute_conv_feature_map_size(
            input_size
        )

    # ------------------------------------------------------------------ initialisation
    def initialize(self, module: nn.Module) -> None:
        """Per-module init usable as ``model.apply(model.initialize)`` (what get_network_from_plans does).

        Segmentation modules get the plain network's own ``initialize`` (He init + zeroed last norm of residual
        blocks); the head is reset with its own scheme (zero attention conv, small-std MLP).
        """
        if module is self.classification_head:
            self.classification_head.reset_parameters()
            return
        if module is self or any(module is m for m in self.classification_head.modules()):
            return  # head submodules are handled when the head itself is visited (apply visits children first)
        init = getattr(self.segmentation_network_class, "initialize", None)
        if init is not None:
            init(module)

    # ------------------------------------------------------------------ weights
    def load_segmentation_weights(self, state_dict_or_checkpoint_path: Any) -> dict[str, list[str]]:
        """Copy a stage-1 segmentation checkpoint into encoder + decoder (exact tensor copy).

        Accepts a state dict, an nnU-Net checkpoint dict (``network_weights``) or a path to one. Leading
        ``_orig_mod.`` / ``module.`` prefixes are stripped. Every encoder/decoder tensor of this model must be present
        with the same shape, else ``RuntimeError`` naming each offending tensor (nothing is modified in that case).
        Head tensors are left as initialised.

        Returns ``{"loaded", "missing", "unexpected", "head_initialised"}`` (lists of state_dict keys). ``missing``
        holds the model keys absent from the checkpoint, which can only be head keys on success.
        """
        src = _extract_state_dict(state_dict_or_checkpoint_path)
        own = self.state_dict()
        seg_keys = [k for k in own if not k.startswith(HEAD_PREFIX)]
        head_keys = [k for k in own if k.startswith(HEAD_PREFIX)]

        problems = []
        for k in seg_keys:
            if k not in src:
                problems.append(f"missing tensor {k!r} (model shape {tuple(own[k].shape)})")
            elif tuple(src[k].shape) != tuple(own[k].shape):
                problems.append(
                    f"shape mismatch for {k!r}: checkpoint {tuple(src[k].shape)} vs model {tuple(own[k].shape)}"
                )
        if problems:
            raise RuntimeError(
                "segmentation checkpoint does not match the encoder/decoder of this model "
                f"({len(problems)} problem(s)):\n  - " + "\n  - ".join(problems)
            )

        with torch.no_grad():
            for k in seg_keys:
                own[k].copy_(src[k])  # state_dict tensors share storage with the parameters/buffers
        seg_set = set(seg_keys)
        return {
            "loaded": list(seg_keys),
            "missing": [k for k in own if k not in src],
            "unexpected": [k for k in src if k not in seg_set],
            "head_initialised": head_keys,
        }


def resolve_arch_class_name(name: str) -> str:
    """Map a stale ``network_class_name`` onto the class that dynamic-network-architectures 0.4.x really has.

    nnU-Net's plans converter (and older docs) write
    ``dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet``, a module that does not exist
    in dynamic-network-architectures 0.4.4 (the class lives in ``...architectures.unet``). nnU-Net's fallback then
    imports every architecture module, including the timm-based ones, which fails without torchvision. Names that
    resolve, or that are not in ``architectures.unet``, are returned unchanged.
    """
    import pydoc

    if pydoc.locate(name) is not None:
        return name
    cls_name = name.rsplit(".", 1)[-1]
    candidate = f"dynamic_network_architectures.architectures.unet.{cls_name}"
    if name.startswith("dynamic_network_architectures.") and pydoc.locate(candidate) is not None:
        return candidate
    return name


def build_multitask_network(
    plans_manager,
    configuration_manager,
    num_input_channels: int,
    num_output_channels: int,
    enable_deep_supervision: bool = True,
    head_variant: str = "roi_attention",
    stage_indices: Sequence[int] | None = None,
    **head_kwargs: Any,
) -> MultiTaskUNet:
    """Build the plans' segmentation network exactly like ``nnUNetTrainer.build_network_architecture`` (nnU-Net
    2.8: ``get_network_from_plans`` with ``allow_init=True``, i.e. ``network.apply(network.initialize)``) and wrap
    it in :class:`MultiTaskUNet`. ``plans_manager`` is unused (kept for the trainer's signature). A stale
    ``...architectures.residual_unet.*`` class name is mapped by :func:`resolve_arch_class_name`.

    nnU-Net hands the builder no label manager: the quiz's labels give 3 softmax outputs (background, pancreas,
    lesion) or, with region-based training, 2 region outputs (whole pancreas, lesion), so the output count says
    which."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    seg = get_network_from_plans(
        resolve_arch_class_name(configuration_manager.network_arch_class_name),
        configuration_manager.network_arch_init_kwargs,
        configuration_manager.network_arch_init_kwargs_req_import,
        num_input_channels,
        num_output_channels,
        allow_init=True,
        deep_supervision=enable_deep_supervision,
    )
    return MultiTaskUNet(
        seg,
        head_variant=head_variant,
        stage_indices=stage_indices,
        region_outputs=num_output_channels == len(REGIONS_CLASS_ORDER),
        **head_kwargs,
    )
