"""MultiTaskUNet + classification heads, built through nnU-Net's real plans -> network path (tiny 3d config)."""

from __future__ import annotations

import copy

import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from pancreas_mtl.model.classification_head import (
    GlobalPoolingHead,
    RoiAttentionPoolingHead,
    build_classification_head,
)
from pancreas_mtl.model.network import (
    MultiTaskUNet,
    build_multitask_network,
    default_stage_indices,
    label_probabilities,
    lesion_probability,
    resolve_arch_class_name,
    strip_state_dict_prefixes,
)
from tests import nnunet_plans

torch.set_num_threads(2)

PATCH = (16, 32, 32)
FEATURES = [8, 16, 32, 64]
N_SEG = 3  # background, pancreas, lesion


def _arch_kwargs(unet: str) -> dict:
    blocks = "n_blocks_per_stage" if unet == "ResidualEncoderUNet" else "n_conv_per_stage"
    return nnunet_plans.arch_kwargs(
        n_stages=4,
        features_per_stage=FEATURES,
        kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
        n_conv_per_stage_decoder=[1, 1, 1],
        **{blocks: [1, 1, 1, 1]},
    )


def _plans(unet: str = "ResidualEncoderUNet") -> dict:
    fullres = nnunet_plans.configuration(
        data_identifier="nnUNetPlans_3d_fullres",
        patch_size=PATCH,
        median_image_size=[64, 128, 128],
        spacing=[2.0, 0.8, 0.8],
        network_class_name=f"dynamic_network_architectures.architectures.unet.{unet}",
        arch_kwargs=_arch_kwargs(unet),
        batch_dice=True,
    )
    return nnunet_plans.plans(
        {"3d_fullres": fullres}, dataset_name="Dataset999_Tiny", spacing=[2.0, 0.8, 0.8], shape=[64, 128, 128]
    )


def _managers(unet: str = "ResidualEncoderUNet"):
    pm = PlansManager(_plans(unet))
    return pm, pm.get_configuration("3d_fullres")


def _build(ds: bool = True, variant: str = "roi_attention", unet: str = "ResidualEncoderUNet", seed: int = 0, **kw):
    torch.manual_seed(seed)
    pm, cm = _managers(unet)
    return build_multitask_network(pm, cm, 1, N_SEG, ds, head_variant=variant, hidden=16, **kw)


def _plain(seed: int = 1, ds: bool = True):
    torch.manual_seed(seed)
    _, cm = _managers()
    return get_network_from_plans(
        cm.network_arch_class_name,
        cm.network_arch_init_kwargs,
        cm.network_arch_init_kwargs_req_import,
        1,
        N_SEG,
        allow_init=True,
        deep_supervision=ds,
    )


def _x(b: int = 2, seed: int = 123) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, *PATCH, generator=g)


@pytest.fixture(scope="module")
def model() -> MultiTaskUNet:
    return _build(ds=True)


def _randomise_(module: torch.nn.Module, seed: int = 7) -> None:
    """Perturb all parameters so no tensor is exactly zero (nnU-Net zero-inits the last norm of residual blocks)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


# ----------------------------------------------------------------------------------------------- construction


def test_default_stage_indices():
    assert default_stage_indices(6) == [2, 3, 4, 5]
    assert default_stage_indices(7) == [3, 4, 5, 6]
    assert default_stage_indices(4) == [2, 3]
    assert default_stage_indices(2) == [0, 1]


def test_wrapper_keeps_nnunet_module_names(model):
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    assert model.segmentation_network_class is ResidualEncoderUNet
    assert model.stage_channels == FEATURES
    assert model.stage_indices == [2, 3]
    plain_keys = set(_plain().state_dict())
    keys = set(model.state_dict())
    assert plain_keys == {k for k in keys if not k.startswith("classification_head.")}
    assert any(k.startswith("classification_head.") for k in keys)
    assert model.key_to_encoder == "encoder.stages"  # ResEnc metadata carried over


# ----------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("variant", ["roi_attention", "global_pool"])
def test_output_shapes(variant):
    m = _build(ds=True, variant=variant).eval()
    x = _x()
    with torch.no_grad():
        seg, logits = m(x, return_class_logits=True)
        assert isinstance(seg, list) and len(seg) == 3
        assert [tuple(s.shape) for s in seg] == [(2, 3, 16, 32, 32), (2, 3, 16, 16, 16), (2, 3, 8, 8, 8)]
        assert logits.shape == (2, 3)
        m.decoder.deep_supervision = False
        seg2, logits2 = m(x, return_class_logits=True)
    assert isinstance(seg2, torch.Tensor) and seg2.shape == (2, 3, *PATCH)
    torch.testing.assert_close(seg2, seg[0])
    torch.testing.assert_close(logits2, logits)


def test_forward_equals_multitask_seg_output(model):
    model.eval()
    x = _x()
    with torch.no_grad():
        plain_out = model(x)
        seg, _ = model(x, return_class_logits=True)
    assert len(plain_out) == len(seg)
    for a, b in zip(plain_out, seg):
        assert torch.equal(a, b)


def test_forward_matches_the_plain_network_after_loading():
    plain = _plain(seed=5).eval()
    m = _build(seed=9).eval()
    m.load_segmentation_weights(plain.state_dict())
    x = _x()
    with torch.no_grad():
        for a, b in zip(plain(x), m(x)):
            assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------- gradients


def _grads_from_class_loss(m: MultiTaskUNet):
    m.train()
    _randomise_(m)
    m.zero_grad(set_to_none=True)
    _, logits = m(_x(), return_class_logits=True)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    return dict(m.named_parameters())


def _has_grad(p: torch.nn.Parameter) -> bool:
    return p.grad is not None and bool(p.grad.abs().sum() > 0)


@pytest.mark.parametrize("variant", ["roi_attention", "global_pool"])
def test_classification_grads_reach_encoder_but_not_decoder(variant):
    m = _build(variant=variant, stage_indices=[1, 2, 3])
    params = _grads_from_class_loss(m)
    enc = {n: p for n, p in params.items() if n.startswith("encoder.")}
    dec = {n: p for n, p in params.items() if n.startswith("decoder.")}  # named_parameters dedups decoder.encoder
    assert enc and dec
    for s in range(4):  # every stage up to the deepest one read by the head
        assert any(_has_grad(p) for n, p in enc.items() if n.startswith(f"encoder.stages.{s}.")), s
    assert any(_has_grad(p) for n, p in enc.items() if n.startswith("encoder.stem."))
    assert not any(_has_grad(p) for p in dec.values()), [n for n, p in dec.items() if _has_grad(p)]
    assert all(_has_grad(p) for n, p in params.items() if n.startswith("classification_head.mlp."))


def test_roi_attention_grads_reach_decoder_when_guidance_not_detached():
    m = _build(guidance_detach=False)
    params = _grads_from_class_loss(m)
    assert any(_has_grad(p) for n, p in params.items() if n.startswith("decoder."))
    assert _has_grad(params["classification_head.attention_convs.0.weight"])
    assert _has_grad(params["classification_head.guidance_scales"])


def test_shallow_stage_with_unused_deeper_stages_gets_no_grad_beyond():
    m = _build(variant="global_pool", stage_indices=[0, 1])
    params = _grads_from_class_loss(m)
    assert any(_has_grad(p) for n, p in params.items() if n.startswith("encoder.stages.1."))
    assert not any(_has_grad(p) for n, p in params.items() if n.startswith("encoder.stages.3."))


# ----------------------------------------------------------------------------------------------- heads


def test_heads_are_interchangeable():
    torch.manual_seed(0)
    skips = [torch.randn(2, c, 4, 8 // (i + 1), 8) for i, c in enumerate(FEATURES)]
    probs = torch.softmax(torch.randn(2, 3, 8, 16, 16), 1)
    heads = [build_classification_head(v, FEATURES, [1, 2, 3], hidden=16) for v in ("roi_attention", "global_pool")]
    assert isinstance(heads[0], RoiAttentionPoolingHead) and isinstance(heads[1], GlobalPoolingHead)
    for h in heads:
        assert h(skips, probs).shape == (2, 3)

    # and as parts of the full model: swapping the head leaves the segmentation path untouched
    a, b = _build(variant="roi_attention"), _build(variant="global_pool")
    b.load_segmentation_weights(a.state_dict())
    a.eval(), b.eval()
    x = _x()
    with torch.no_grad():
        sa, la = a(x, return_class_logits=True)
        sb, lb = b(x, return_class_logits=True)
    assert all(torch.equal(u, v) for u, v in zip(sa, sb))
    assert la.shape == lb.shape == (2, 3)


def test_unknown_head_variant():
    with pytest.raises(ValueError, match="roi_attention.*global_pool|global_pool.*roi_attention"):
        build_classification_head("transformer", FEATURES, [2, 3])
    with pytest.raises(ValueError, match="out of range"):
        build_classification_head("global_pool", FEATURES, [4])


def test_roi_attention_initially_pools_the_guidance_region():
    """Zero-init attention conv: weights follow the guidance, so pooling ~= mean over the lesion voxels."""
    head = RoiAttentionPoolingHead([4], [0], hidden=8, pancreas_weight=0.0, include_global_context=False)
    feat = torch.randn(1, 4, 4, 4, 4)
    probs = torch.zeros(1, 3, 4, 4, 4)
    probs[:, 0] = 1.0
    probs[:, :, 1:3, 1:3, 1:3] = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1, 1)
    (w,) = head.attention_weights([feat], probs)
    assert torch.allclose(w.sum(), torch.tensor(1.0))
    lesion = probs[:, 2:3] > 0.5
    assert w[lesion].sum() > 0.99


def test_guidance_resampled_by_average_pooling():
    head = RoiAttentionPoolingHead([4, 4], [0, 1], hidden=8)
    probs = torch.softmax(torch.randn(1, 3, 8, 8, 8), 1)
    g = head.guidance_map(probs)
    torch.testing.assert_close(head._resample(g, (4, 4, 4)), torch.nn.functional.avg_pool3d(g, 2))


def test_roi_attention_pools_in_fp32_under_autocast():
    """Defect: under mixed precision (nnU-Net's autocast on CUDA; here CPU autocast to fp16, which lists bmm too) the
    pooling ran in fp16. A 64^3 stage whose ROI holds 16^3 voxels gives each background voxel a weight of about
    2e-8, below fp16's smallest step (6e-8): the context outside the ROI vanished from the pooled features."""
    head = RoiAttentionPoolingHead([1], [0], hidden=16, include_global_context=False).eval()  # as training starts
    head.mlp = torch.nn.Identity()  # the head's output is then its pooled features
    size, roi = 64, slice(24, 40)
    feat = torch.ones(1, 1, size, size, size)  # the background's feature: 1; the ROI's: 0
    feat[..., roi, roi, roi] = 0
    probs = torch.zeros(1, 3, size, size, size)
    probs[:, 0] = 1
    probs[:, :, roi, roi, roi] = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1, 1)
    with torch.no_grad():
        reference = head([feat], probs)
        with torch.autocast("cpu", dtype=torch.float16):
            pooled = head([feat], probs)
    assert 0.005 < reference.item() < 0.01  # the background's share of the attention
    assert pooled.dtype == torch.float32
    torch.testing.assert_close(pooled, reference, rtol=1e-5, atol=0)


# ----------------------------------------------------------------------------------------------- weight loading


def test_load_plain_state_dict_exactly():
    plain = _plain(seed=3)
    _randomise_(plain, seed=11)
    m = _build(seed=4)
    head_before = {k: v.clone() for k, v in m.state_dict().items() if k.startswith("classification_head.")}
    report = m.load_segmentation_weights(plain.state_dict())
    own = m.state_dict()
    for k, v in plain.state_dict().items():
        assert torch.equal(own[k], v), k
    assert set(report["loaded"]) == set(plain.state_dict())
    assert set(report["head_initialised"]) == set(head_before) and head_before
    assert set(report["missing"]) == set(head_before)
    assert report["unexpected"] == []
    for k, v in head_before.items():
        assert torch.equal(own[k], v)
    # parameters really changed (not only a copy of the state dict)
    p = dict(m.named_parameters())["encoder.stem.convs.0.conv.weight"]
    assert torch.equal(p.detach(), plain.encoder.stem.convs[0].conv.weight.detach())


def test_load_nnunet_checkpoint_with_wrapper_prefixes(tmp_path):
    plain = _plain(seed=3)
    _randomise_(plain, seed=12)
    ckpt = {
        "network_weights": {f"_orig_mod.{k}": v for k, v in plain.state_dict().items()},
        "optimizer_state": {},
        "init_args": {"fold": 0},
        "current_epoch": 10,
    }
    path = tmp_path / "checkpoint_final.pth"
    torch.save(ckpt, path)
    for source in (ckpt, str(path), path):
        m = _build(seed=4)
        report = m.load_segmentation_weights(source)
        own = m.state_dict()
        assert all(torch.equal(own[k], v) for k, v in plain.state_dict().items())
        assert report["unexpected"] == []
        assert all(k.startswith("classification_head.") for k in report["head_initialised"])

    ddp = {f"module._orig_mod.{k}": v for k, v in plain.state_dict().items()}
    m = _build(seed=4)
    m.load_segmentation_weights({"network_weights": ddp})
    assert torch.equal(m.state_dict()["decoder.seg_layers.0.weight"], plain.state_dict()["decoder.seg_layers.0.weight"])


def test_strip_prefixes():
    sd = {"_orig_mod.a": 1, "module.b": 2, "module._orig_mod.c": 3, "d": 4}
    assert strip_state_dict_prefixes(sd) == {"a": 1, "b": 2, "c": 3, "d": 4}


def test_load_missing_encoder_tensor_raises_and_changes_nothing():
    sd = _plain(seed=3).state_dict()
    key = "encoder.stages.2.blocks.0.conv1.conv.weight"
    assert key in sd
    del sd[key]
    m = _build(seed=4)
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(RuntimeError, match=r"missing tensor 'encoder\.stages\.2\.blocks\.0\.conv1\.conv\.weight'"):
        m.load_segmentation_weights(sd)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_load_wrong_shape_raises():
    sd = _plain(seed=3).state_dict()
    key = "decoder.seg_layers.0.weight"
    sd[key] = torch.zeros(5, *sd[key].shape[1:])
    with pytest.raises(RuntimeError, match=r"shape mismatch for 'decoder\.seg_layers\.0\.weight'"):
        _build().load_segmentation_weights(sd)


def test_load_rejects_non_state_dict():
    with pytest.raises(RuntimeError, match="network_weights"):
        _build().load_segmentation_weights({"init_args": {}, "current_epoch": 3})


def test_unexpected_keys_reported():
    sd = dict(_plain(seed=3).state_dict())
    sd["classification_head.mlp.1.weight"] = torch.zeros(1)
    sd["foo.bar"] = torch.zeros(1)
    report = _build().load_segmentation_weights(sd)
    assert sorted(report["unexpected"]) == ["classification_head.mlp.1.weight", "foo.bar"]


# ----------------------------------------------------------------------------------------------- nnU-Net integration


def test_set_deep_supervision_toggle(model):
    x = _x(b=1)
    model.eval()
    with torch.no_grad():
        model.decoder.deep_supervision = False  # what nnUNetTrainer.set_deep_supervision_enabled does
        out = model(x)
        assert isinstance(out, torch.Tensor) and out.shape == (1, 3, *PATCH)
        assert not model.deep_supervision
        model.decoder.deep_supervision = True
        out = model(x)
        assert isinstance(out, list) and len(out) == 3
        assert model.deep_supervision


def test_trainer_style_set_deep_supervision_enabled():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class _Stub:
        is_ddp = False

    stub = _Stub()
    stub.network = _build(ds=True)
    nnUNetTrainer.set_deep_supervision_enabled(stub, False)
    assert stub.network.decoder.deep_supervision is False
    nnUNetTrainer.set_deep_supervision_enabled(stub, True)
    assert stub.network.decoder.deep_supervision is True


def test_apply_initialize_works_and_resets_head():
    m = _build()
    _randomise_(m)
    m.apply(m.initialize)  # as get_network_from_plans does for networks with .initialize
    head = m.classification_head
    assert torch.count_nonzero(head.attention_convs[0].weight) == 0
    assert torch.all(head.guidance_scales == 1.0)
    # residual blocks: last norm zeroed by ResidualEncoderUNet.initialize, i.e. the seg init was applied
    assert torch.count_nonzero(m.encoder.stages[1].blocks[0].conv2.norm.weight) == 0
    _, logits = m.eval()(_x(b=1), return_class_logits=True)
    assert torch.isfinite(logits).all()


def test_plain_conv_unet_supported():
    m = _build(unet="PlainConvUNet", ds=False)
    out = m(_x(b=1))
    seg, logits = m(_x(b=1), return_class_logits=True)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, *PATCH)
    assert logits.shape == (1, 3)
    assert torch.equal(out, seg)


def test_stale_residual_unet_class_path_is_resolved():
    """nnU-Net's old-plans converter writes ...architectures.residual_unet.ResidualEncoderUNet, absent in DNA 0.4.4."""
    stale = "dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet"
    assert resolve_arch_class_name(stale) == "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    ok = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    assert resolve_arch_class_name(ok) == ok
    plans = _plans()
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = stale
    pm = PlansManager(plans)
    m = build_multitask_network(pm, pm.get_configuration("3d_fullres"), 1, N_SEG, True, hidden=16)
    assert m.segmentation_network_class.__name__ == "ResidualEncoderUNet"


def test_non_unet_rejected():
    with pytest.raises(TypeError, match="encoder"):
        MultiTaskUNet(torch.nn.Conv3d(1, 3, 1))


# ----------------------------------------------------------------------------------------------- region outputs
def test_region_outputs_become_label_probabilities_the_label_map_agrees_with():
    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(2, 2, 4, 5, 6, generator=g)  # whole pancreas, lesion
    probs = label_probabilities(logits, region_outputs=True)
    whole, lesion = torch.sigmoid(logits[:, 0]), torch.sigmoid(logits[:, 1])
    assert probs.shape == (2, 3, 4, 5, 6) and (probs >= 0).all()
    assert torch.allclose(probs[:, 0], 1 - whole) and torch.allclose(probs[:, 2], lesion)
    assert torch.allclose(lesion_probability(logits, region_outputs=True), lesion)
    # where both outputs say lesion, nnU-Net's label map (regions_class_order [1, 2]) is 2 and so is the most probable
    # label; where neither says foreground, both are background
    both, neither = (whole > 0.5) & (lesion > 0.5), (whole <= 0.5) & (lesion <= 0.5)
    assert both.any() and neither.any()
    assert (probs.argmax(1)[both] == 2).all() and (probs.argmax(1)[neither] == 0).all()
    softmax = torch.randn(2, 3, 4, 5, 6, generator=g)
    assert torch.allclose(label_probabilities(softmax, region_outputs=False), torch.softmax(softmax, 1))
    assert torch.allclose(lesion_probability(softmax, region_outputs=False), torch.softmax(softmax, 1)[:, 2])


def test_two_outputs_build_a_region_network_whose_head_is_guided_by_the_lesion_region():
    pm, cm = _managers()
    torch.manual_seed(0)
    regions = build_multitask_network(pm, cm, 1, 2, False, head_variant="roi_attention", hidden=16)
    assert regions.region_outputs and not _build(ds=False).region_outputs
    x = _x()
    seg, class_logits = regions(x, return_class_logits=True)
    assert seg.shape == (2, 2, *PATCH) and class_logits.shape == (2, 3)
    guidance = regions.classification_head.guidance_map(label_probabilities(seg, region_outputs=True))
    head = regions.classification_head
    expected = torch.sigmoid(seg[:, 1:2]) + head.pancreas_weight * label_probabilities(seg, True)[:, 1:2]
    assert torch.allclose(guidance, expected)


def test_the_global_pool_head_takes_a_region_network_too():
    pm, cm = _managers()
    torch.manual_seed(0)
    regions = build_multitask_network(pm, cm, 1, 2, False, head_variant="global_pool", hidden=16)
    seg, class_logits = regions(_x(), return_class_logits=True)
    assert regions.region_outputs and seg.shape == (2, 2, *PATCH) and class_logits.shape == (2, 3)
