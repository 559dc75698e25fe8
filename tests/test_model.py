"""The model against its oracles: the recomputed Table 1 (docs/paper.md#table-1) and torchvision's googlenet."""

import copy

import pytest
import torch
import torchvision

import googlenet
from googlenet import MIN_INPUT_SIZE, GoogLeNetOutputs, create_model
from googlenet.summary import PAPER_TABLE1, format_summary, layer_stats


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# Recomputed from the channel counts (docs/paper.md#table-1): weights and MACs per Table 1 row, true 5x5 branches.
RECOMPUTED = {
    "conv1": (9_408, 118_013_952),
    "conv2+conv3": (114_688, 359_661_568),
    "inception3a": (163_328, 128_049_152),
    "inception3b": (388_096, 304_267_264),
    "inception4a": (375_552, 73_608_192),
    "inception4b": (448_512, 87_908_352),
    "inception4c": (509_440, 99_850_240),
    "inception4d": (604_672, 118_515_712),
    "inception4e": (867_328, 169_996_288),
    "inception5a": (1_042_432, 51_079_168),
    "inception5b": (1_442_816, 70_697_984),
    "fc": (1_024_000, 1_024_000),
}


def test_paper_parameter_counts():
    assert n_params(create_model("googlenet", aux_logits=False)) == 6_998_552
    # Equal to Caffe's bvlc_googlenet, auxiliary heads included.
    assert n_params(create_model("googlenet")) == 13_378_280


def test_bn_parameter_counts_match_torchvision():
    assert n_params(create_model("googlenet_bn", aux_logits=False)) == 6_624_904
    tv = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True)
    assert n_params(create_model("googlenet_bn")) == n_params(tv)


def test_per_layer_weights_and_macs_equal_recomputed_table1():
    stats = {s.name: s for s in layer_stats(create_model("googlenet"), 224)}
    merged = dict(stats)
    merged["conv2+conv3"] = type(stats["conv2"])(
        "conv2+conv3",
        stats["conv3"].out_shape,
        0,
        stats["conv2"].weights + stats["conv3"].weights,
        stats["conv2"].macs + stats["conv3"].macs,
    )
    for name, (weights, macs) in RECOMPUTED.items():
        assert (merged[name].weights, merged[name].macs) == (weights, macs), name
    main = [s for s in stats.values() if not s.name.startswith("aux")]
    assert sum(s.weights for s in main) == 6_990_272
    assert sum(s.macs for s in main) == 1_582_671_872
    # Auxiliary heads, with biases: 3,188,840 on 4a and 3,190,888 on 4d with 1000 classes
    # (docs/paper.md#auxiliary-classifiers).
    assert stats["aux1"].params == 3_188_840 and stats["aux2"].params == 3_190_888


@pytest.mark.parametrize("variant", ["googlenet", "googlenet_bn"])
def test_stage_shapes_at_224(variant):
    stats = {s.name: s.out_shape for s in layer_stats(create_model(variant), 224)}
    for row in PAPER_TABLE1:
        assert stats[row.modules[-1]] == row.out_shape, row.label
    assert stats["maxpool1"] == (64, 56, 56) and stats["maxpool3"] == (480, 14, 14)
    assert stats["aux1"] == (1000,) and stats["aux2"] == (1000,)


def test_summary_flags_exactly_the_known_misprints_for_the_paper_variant():
    text = format_summary(create_model("googlenet"), 224)
    flagged = [line.split("  ")[0].strip() for line in text.splitlines() if "DIFFERS" in line]
    assert flagged == ["conv 7x7/2", "inception 4c", "inception 5a"]


def _randomise_bn_stats(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("transform_input", [False, True])
def test_bn_variant_reproduces_torchvision_logits(transform_input):
    torch.manual_seed(0)
    tv = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True, transform_input=transform_input)
    _randomise_bn_stats(tv)
    ours = create_model("googlenet_bn", transform_input=transform_input)
    ours.load_state_dict(tv.state_dict(), strict=True)
    tv.eval(), ours.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected, got = tv(x), ours(x)
    assert isinstance(got, torch.Tensor)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_folded_batchnorm_gives_the_same_logits_and_refuses_training():
    torch.manual_seed(0)
    model = create_model("googlenet_bn", num_classes=7).eval()
    _randomise_bn_stats(model)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = model(x, with_aux=True)
        folded = copy.deepcopy(model).fold_batchnorm()
        got = folded(x, with_aux=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    for g, e in zip(got, expected):  # logits and both aux heads
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="folded"):
        folded.train()
    paper = create_model("googlenet", num_classes=7)
    keys = set(paper.state_dict())
    assert set(paper.fold_batchnorm().state_dict()) == keys  # no BatchNorm: unchanged
    paper.train()  # and still trainable


def test_bn_variant_aux_heads_match_torchvision_in_training_mode():
    torch.manual_seed(0)
    tv = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True, dropout=0.0, dropout_aux=0.0)
    ours = create_model("googlenet_bn", dropout=0.0, aux_dropout=0.0)
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(3, 3, 96, 96)
    tv_out = tv.train()(x)  # torchvision: namedtuple (logits, aux_logits2, aux_logits1)
    out = ours.train()(x, with_aux=True)
    torch.testing.assert_close(out.logits, tv_out.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.aux_4a, tv_out.aux_logits1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.aux_4d, tv_out.aux_logits2, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", ["googlenet", "googlenet_bn"])
def test_backward_reaches_every_parameter(variant):
    model = create_model(variant, num_classes=7).train()
    out = model(torch.randn(2, 3, 64, 64), with_aux=True)
    (out.logits.sum() + out.aux_4a.sum() + out.aux_4d.sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_aux_outputs_only_when_asked():
    model = create_model("googlenet", num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    for mode in (model.train, model.eval):
        mode()
        plain = model(x)
        assert isinstance(plain, torch.Tensor) and plain.shape == (2, 5)
        out = model(x, with_aux=True)
        assert isinstance(out, GoogLeNetOutputs) and all(t.shape == (2, 5) for t in out)
    no_aux = create_model("googlenet", aux_logits=False)
    assert no_aux.aux1 is None and no_aux.aux2 is None
    with pytest.raises(ValueError, match="aux_logits=True"):
        no_aux(x, with_aux=True)


def test_paper_aux_pool_is_5x5_stride_3_at_224():
    model = create_model("googlenet", num_classes=3).eval()
    feats = torch.randn(1, 512, 14, 14)
    expected_pool = torch.nn.functional.avg_pool2d(feats, 5, 3)
    assert expected_pool.shape[-2:] == (4, 4)
    conv = model.aux1.conv
    seen = {}
    conv.register_forward_hook(lambda m, i, o: seen.update({"in": i[0]}))
    model.aux1(feats)
    torch.testing.assert_close(seen["in"], expected_pool)


@pytest.mark.parametrize("variant", ["googlenet", "googlenet_bn"])
def test_minimum_input_size_edge(variant):
    model = create_model(variant, num_classes=4).eval()
    size = MIN_INPUT_SIZE[variant]
    assert model(torch.randn(1, 3, size, size), with_aux=True).logits.shape == (1, 4)
    with pytest.raises(ValueError, match=f">= {size}"):
        model(torch.randn(1, 3, size - 1, size))
    assert model(torch.randn(1, 3, size, 3 * size + 5)).shape == (1, 4)  # non-square


def test_bad_input_errors_say_what_was_expected():
    model = create_model("googlenet", num_classes=4).eval()
    with pytest.raises(ValueError, match="3 input channels"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(3, 64, 64))


def test_builder_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="googlenet, googlenet_bn"):
        create_model("inception_v3")
    with pytest.raises(ValueError, match="unknown option"):
        create_model("googlenet", drop_rate=0.1)
    assert googlenet.list_models() == ["googlenet", "googlenet_bn"]


def test_reset_classifier():
    model = create_model("googlenet")
    model.reset_classifier(12)
    out = model(torch.randn(1, 3, 64, 64), with_aux=True)
    assert [t.shape[1] for t in out] == [12, 12, 12]
    assert model.config.num_classes == 12


def test_dropout_defaults_follow_each_variant():
    assert create_model("googlenet").dropout.p == 0.4
    assert create_model("googlenet_bn").dropout.p == 0.2
    assert create_model("googlenet").aux1.dropout.p == 0.7
    lrn = create_model("googlenet").lrn1
    assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 1e-4, 0.75, 1.0)
    assert create_model("googlenet").inception3a.branch3[1].conv.kernel_size == (5, 5)
    assert create_model("googlenet_bn").inception3a.branch3[1].conv.kernel_size == (3, 3)


@pytest.mark.parametrize("channels", [1, 3, 4, 64])
def test_lrn_equals_pytorchs_local_response_norm_forward_and_backward(channels):
    from googlenet.model import LocalResponseNorm

    # odd and even windows pad differently; the paper's beta takes the square-root path, 0.6 the general one;
    # a band built once for the channel count (as the model's are) must equal the one built per call.
    for size, beta, known in [(5, 0.75, None), (4, 0.75, None), (5, 0.6, None), (5, 0.75, channels)]:
        ref = torch.nn.LocalResponseNorm(size, 1e-4, beta, 2.0)
        ours = LocalResponseNorm(size, 1e-4, beta, 2.0, channels=known)
        x = (torch.randn(2, channels, 6, 7, dtype=torch.float64) * 40).requires_grad_()
        y_ref, y = ref(x), ours(x)
        torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
        g = torch.randn_like(y)
        (grad_ref,) = torch.autograd.grad(y_ref, x, g)
        (grad,) = torch.autograd.grad(y, x, g)
        torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)


def test_lrn_keeps_channels_last_and_is_computed_in_float32_under_autocast():
    from googlenet.model import LocalResponseNorm

    x = (torch.randn(2, 16, 8, 8) * 40).contiguous(memory_format=torch.channels_last)
    y = LocalResponseNorm()(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = LocalResponseNorm()(x.bfloat16())
    assert y16.dtype == torch.bfloat16
    ref = torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)(x.bfloat16().float())
    torch.testing.assert_close(y16.float(), ref, rtol=1e-2, atol=1e-2)  # bf16 output rounding only
    paper = create_model("googlenet")
    assert isinstance(paper.lrn1, LocalResponseNorm) and isinstance(paper.lrn2, LocalResponseNorm)
