"""Seeing inside the network: layer names, DeepDream, feature visualisation, attribution maps."""

import contextlib
import copy
from pathlib import Path

import pytest
import torch

from googlenet import cli, visualize
from googlenet.checkpoint import LoadedModel
from googlenet.dream import deep_dream, model_input
from googlenet.layers import caffe_names, layer_output, module_name, resolve_layer
from googlenet.model import create_model
from googlenet.preprocessing import Preprocessing
from googlenet.visualize import RedirectedReLU, parse_channels, visualize_channel

from .conftest import class_image, write_image
from .test_tools import make_checkpoint

PRE = Preprocessing((0.5,) * 3, (0.25,) * 3, 64)


@pytest.fixture(scope="module")
def paper_model():
    """A random-weight paper-variant network (He init: activations neither vanish nor explode)."""
    torch.manual_seed(0)
    return create_model("googlenet", num_classes=10, aux_logits=True).eval()


# ------------------------------------------------------------------------------------------------- layers


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("inception4c", "inception4c"),
        ("inception_4c/output", "inception4c"),
        ("inception4c.branch2", "inception4c.branch2"),
        ("inception_4c/3x3", "inception4c.branch2"),
        ("inception_4c/5x5", "inception4c.branch3"),
        ("inception_4c/1x1", "inception4c.branch1"),
        ("inception_4c/pool_proj", "inception4c.branch4"),
        ("conv2/3x3", "conv3"),
        ("conv2/3x3_reduce", "conv2"),
        ("pool5/7x7_s1", "pool5"),
        ("loss1/conv", "aux1.conv"),
    ],
)
def test_layer_names_in_both_namings(paper_model, name, module):
    assert module_name(paper_model, name) == module
    target, _ = resolve_layer(paper_model, name)
    assert target is dict(paper_model.named_modules()).get(module, target)


def test_caffe_names_reach_the_tensor_caffe_names(paper_model):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        branch = layer_output(paper_model, "inception_4c/3x3", x)
        whole = layer_output(paper_model, "inception_4c/output", x)
        pool5 = layer_output(paper_model, "pool5/7x7_s1", x)
    # the 3x3 branch is the block's channels 128-383 (after the 128 of the 1x1 branch)
    assert torch.equal(branch, whole[:, 128:384])
    assert pool5.shape == (1, 1024)
    for caffe in caffe_names():  # every Caffe name reaches a module of the network
        resolve_layer(paper_model, caffe)


@pytest.mark.parametrize("bad", ["inception_9z/output", "inception9z", "inception4c.branch7"])
def test_an_unknown_layer_lists_the_valid_ones_on_one_line(paper_model, bad):
    with pytest.raises(ValueError) as e:
        module_name(paper_model, bad)
    message = str(e.value)
    assert "\n" not in message and bad in message
    assert "inception" in message.replace(bad, "")


def test_parse_channels():
    assert parse_channels("0-3,8") == [0, 1, 2, 3, 8]


# ------------------------------------------------------------------------------------------ visualisation


def _comparison_images() -> torch.Tensor:
    """20 images in [0, 1]: uniform noise, and stripes, checkerboards and ramps."""
    g = torch.Generator().manual_seed(1)
    noise = torch.rand(10, 3, 64, 64, generator=g)
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    structured = [
        torch.stack([(xx // (2 + k) % 2).float(), (yy // (2 + k) % 2).float(), (xx + yy).float() / 128])
        for k in range(5)
    ]
    structured += [
        torch.nn.functional.interpolate(class_image(k, 0)[None].float(), (64, 64))[0] / 255 for k in range(5)
    ]
    return torch.cat([noise, torch.stack(structured)])


def test_visualisation_drives_its_channel_far_above_natural_and_noise_images(paper_model):
    # Channel 0 of this network is one the comparison images leave near zero, as most channels are; a
    # channel they already drive hard (11 here) ends about 5x their mean after these few steps.
    layer, channel = "inception3b", 0
    image = visualize_channel(paper_model, layer, channel, size=64, steps=96, seed=0, preprocessing=PRE)
    assert image.dtype == torch.uint8 and image.shape == (3, 64, 64)
    with torch.no_grad():
        others = layer_output(paper_model, layer, model_input(_comparison_images(), PRE)).mean(dim=(2, 3))
        mine = layer_output(paper_model, layer, model_input(image[None].float() / 255, PRE)).mean(dim=(2, 3))[0]
    assert mine[channel] > 10 * others[:, channel].mean()
    assert mine[channel] > others[:, channel].max()
    assert (mine[channel] > mine).float().mean() > 0.6  # above most of the layer's other channels


def test_redirected_relu_is_relu_forward_and_moves_only_stuck_images():
    x = torch.tensor([[[-1.0, 2.0, -3.0]], [[-1.0, -2.0, -3.0]]], requires_grad=True)  # image 1: all negative
    y = RedirectedReLU.apply(x)
    assert torch.equal(y, x.clamp_min(0))
    grad = torch.tensor([[[-1.0, -1.0, 1.0]], [[-1.0, 1.0, -2.0]]])
    (g,) = torch.autograd.grad(y, x, grad)
    # Image 0 has an ordinary gradient (at its positive input): exactly ReLU's. Image 1 has none: the
    # gradient passes where descent raises a negative input (grad < 0), not where it would lower it.
    assert torch.equal(g[0], torch.tensor([[0.0, -1.0, 0.0]]))
    assert torch.equal(g[1], torch.tensor([[-1.0, 0.0, -2.0]]))


def test_visualisation_moves_a_channel_the_starting_image_leaves_at_zero(paper_model, monkeypatch):
    # Shift one channel's bias so that the starting image and its jittered copies leave it below
    # zero: the ordinary ReLU gradient is zero there, so only the redirected gradient can move the image.
    model = copy.deepcopy(paper_model)
    conv = model.inception3b.branch1.conv
    start = visualize.optimise_images(model, PRE, "inception3b", visualize.channel_objective([0]), size=64, steps=0)
    with torch.no_grad():
        pre_activation = conv(layer_output(model, "inception3a", model_input(start, PRE)))[0, 0]
        conv.bias[0] -= pre_activation.max() + 5 * pre_activation.std()  # jittered copies stay below zero too

    def channel_mean(image):
        with torch.no_grad():
            return layer_output(model, "inception3b", model_input(image[None].float() / 255, PRE))[0, 0].mean()

    image = visualize_channel(model, "inception3b", 0, size=64, steps=24, seed=0, preprocessing=PRE)
    assert channel_mean(image) > 0
    monkeypatch.setattr(visualize, "redirected_relus", lambda model: contextlib.nullcontext())
    image = visualize_channel(model, "inception3b", 0, size=64, steps=24, seed=0, preprocessing=PRE)
    assert channel_mean(image) == 0  # the ordinary gradient left it where it started


def test_visualisation_is_reproducible(paper_model):
    a = visualize_channel(paper_model, "inception_3a/output", 2, size=32, steps=4, seed=5, preprocessing=PRE)
    b = visualize_channel(paper_model, "inception3a", 2, size=32, steps=4, seed=5, preprocessing=PRE)
    c = visualize_channel(paper_model, "inception3a", 2, size=32, steps=4, seed=6, preprocessing=PRE)
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------------------------------------- DeepDream


def _loaded(model: torch.nn.Module) -> LoadedModel:
    return LoadedModel(model=model, class_names=[f"c{i}" for i in range(10)], preprocessing=PRE, path=Path("-"))


def test_deep_dream_raises_the_objective_at_every_octave(paper_model):
    image = torch.nn.functional.interpolate(class_image(1, 0)[None].float(), (80, 96))[0].to(torch.uint8)
    out, objectives = deep_dream(
        _loaded(paper_model),
        image,
        "inception_4a/output",
        octaves=3,
        octave_scale=1.3,
        steps=4,
        jitter=8,
        return_objectives=True,
    )
    assert out.dtype == torch.uint8 and out.shape == image.shape
    assert len(objectives) == 3
    for before, after in objectives:
        assert after > 1.2 * before
    assert not torch.equal(out, image)


def test_deep_dream_is_reproducible_by_seed(paper_model):
    image = class_image(2, 0, size=(48, 48))
    run = lambda seed: deep_dream(_loaded(paper_model), image, "inception3b", octaves=2, steps=2, seed=seed)  # noqa: E731
    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


# ------------------------------------------------------------------------------------------- the commands


def test_commands_write_pngs_and_say_where(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "m.pt", [f"c{i}" for i in range(10)], img_size=48, variant="googlenet")
    image = write_image(tmp_path / "in.png", class_image(0, 0, size=(56, 64)))
    runs = {
        "dream.png": ["dream", str(image), "--octaves", "2", "--steps", "2"],
        "viz.png": ["visualize", "--layer", "inception_3a/output", "--channel", "3", "--steps", "2", "--size", "32"],
        "grid.png": ["visualize", "--channels", "0-3", "--steps", "2", "--size", "32"],
        "cam.png": ["explain", str(image), "--layer", "inception3b"],  # inception5b is 1 x 1 at 48 px
        "sal.png": ["explain", str(image), "--method", "saliency", "--target", "c4"],
    }
    for name, args in runs.items():
        out = tmp_path / name
        assert cli.main([*args, "--checkpoint", str(ckpt), "--out", str(out), "--device", "cpu"]) == 0
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert str(out) in capsys.readouterr().out
    again = tmp_path / "again.png"
    cli.main(["dream", str(image), "--octaves", "2", "--steps", "2", "--checkpoint", str(ckpt), "--out", str(again)])
    assert again.read_bytes() == (tmp_path / "dream.png").read_bytes()


def test_an_unknown_layer_is_a_one_line_error(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "m.pt", ["a", "b"], img_size=48, variant="googlenet")
    args = ["visualize", "--checkpoint", str(ckpt), "--layer", "inception_4q/output", "--out", str(tmp_path / "v.png")]
    assert cli.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("googlenet: error: unknown layer") and "\n" not in err


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "--layer inception5b: Grad-CAM needs spatial maps, and its output is [1, 1024, 1, 1] at this"),
        (["--layer", "fc"], "--layer fc: Grad-CAM needs spatial maps, and its output is [1, 2]"),
        (["--layer", "pool5"], "--layer pool5: Grad-CAM needs spatial maps, and its output is [1, 1024]"),
        (["--method", "saliency", "--layer", "conv1"], "--layer is Grad-CAM's; --method saliency attributes to"),
    ],
)
def test_explain_refuses_a_layer_it_cannot_use(tmp_path, capsys, args, message):
    pytest.importorskip("pytorch_grad_cam")
    ckpt = make_checkpoint(tmp_path / "m.pt", ["a", "b"], img_size=48, variant="googlenet")
    image = write_image(tmp_path / "in.png", class_image(0, 0, size=(56, 64)))
    out = tmp_path / "cam.png"
    assert cli.main(["explain", str(image), "--checkpoint", str(ckpt), "--out", str(out), *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"googlenet: error: {message}") and "\n" not in err, err
    assert not out.exists()


# ------------------------------------------------------------------------------- attribution on a trained model

CANVAS, ITEM = 64, 28


def _pasted(images: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST items [N, 28, 28] pasted at random positions on empty canvases: uint8 RGB [N, 3, 64, 64]
    and each item's top-left corner [N, 2] (row, column)."""
    n = images.shape[0]
    corners = torch.randint(0, CANVAS - ITEM + 1, (n, 2), generator=g)
    canvas = torch.zeros(n, CANVAS, CANVAS, dtype=torch.uint8)
    for i, (y, x) in enumerate(corners.tolist()):
        canvas[i, y : y + ITEM, x : x + ITEM] = images[i]
    return canvas[:, None].expand(-1, 3, -1, -1).contiguous(), corners


@pytest.fixture(scope="module")
def localisation_model():
    """googlenet_bn trained briefly to tell three Fashion-MNIST classes (trouser, sneaker, bag) pasted anywhere
    on a 64 px canvas, and held-out pasted images with their boxes. Three classes of distinct shapes: a few
    hundred steps learn them (85-95% held out), which ten classes would not."""
    from googlenet.data import DataError, load_fashion_mnist

    try:
        x_train, y_train = load_fashion_mnist("train")
        x_test, y_test = load_fashion_mnist("test")
    except DataError:
        pytest.skip("Fashion-MNIST not available")
    x_train, y_train = _subset(x_train, y_train)
    x_test, y_test = _subset(x_test, y_test)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    # Mean 0: the empty canvas is 0 at the input, as the convolutions' zero padding is, so the borders do
    # not stand out from the background.
    pre = Preprocessing((0.0,) * 3, (0.3,) * 3, CANVAS, resize_ratio=1.0)
    model = create_model("googlenet_bn", num_classes=len(CLASSES), aux_logits=False)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(TRAIN_STEPS):
        index = torch.randint(0, len(x_train), (16,), generator=g)
        images, _ = _pasted(x_train[index], g)
        loss = torch.nn.functional.cross_entropy(model(pre.to_input(images)), y_train[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    images, corners = _pasted(x_test[:HELD_OUT], g)
    loaded = LoadedModel(model=model, class_names=[str(c) for c in CLASSES], preprocessing=pre, path=Path("-"))
    return loaded, images, corners, y_test[:HELD_OUT]


TRAIN_STEPS, HELD_OUT = 250, 40
CLASSES = (1, 7, 8)
# At 64 px inception5b's map is 2 x 2, too coarse to point at a 28 px item; inception3b's is 8 x 8.
CAM_LAYER = "inception3b"


def _subset(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    keep = torch.tensor(CLASSES)
    mask = torch.isin(labels, keep)
    return images[mask], torch.searchsorted(keep, labels[mask])


def _gradcam_maps(loaded: LoadedModel, images: torch.Tensor, layer: str = CAM_LAYER, targets=None) -> torch.Tensor:
    from googlenet.explain import explain

    targets = targets if targets is not None else [None] * len(images)
    return torch.stack([explain(loaded, image, "gradcam", t, layer)[0] for image, t in zip(images, targets)])


@pytest.mark.slow
def test_gradcam_points_at_the_pasted_item(localisation_model):
    """The pointing game (Zhang et al. 2016, "Top-down Neural Attention by Excitation Backprop"): the map's
    maximum inside the item's box; chance is the box's share of the canvas, (28 / 64)^2 = 19%."""
    pytest.importorskip("pytorch_grad_cam")
    loaded, images, corners, _ = localisation_model
    maps = _gradcam_maps(loaded, images)
    peaks = maps.flatten(1).argmax(dim=1)
    rows, cols = peaks // CANVAS, peaks % CANVAS
    inside = (
        (rows >= corners[:, 0])
        & (rows < corners[:, 0] + ITEM)
        & (cols >= corners[:, 1])
        & (cols < corners[:, 1] + ITEM)
    )
    print(f"pointing game: {inside.float().mean():.0%} of {len(inside)} held-out images")
    assert inside.float().mean() >= 0.8


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks with ties given their average rank: a map's flat zero background must not count as agreement."""
    ranks = torch.empty_like(values)
    ranks[values.argsort()] = torch.arange(len(values), dtype=values.dtype)
    _, tie = torch.unique(values, return_inverse=True)
    total = torch.zeros(int(tie.max()) + 1, dtype=values.dtype).index_add_(0, tie, ranks)
    return (total / torch.bincount(tie).to(values.dtype))[tie]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two maps (scipy.stats.spearmanr without scipy)."""
    ra, rb = _ranks(a.flatten().double()), _ranks(b.flatten().double())
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


@pytest.mark.slow
def test_gradcam_depends_on_the_top_layers_weights(localisation_model):
    """Adebayo et al. 2018, "Sanity Checks for Saliency Maps": re-initialising the top layers must change the
    map; a map that follows the image rather than the model would survive it."""
    pytest.importorskip("pytorch_grad_cam")
    loaded, images, _, _ = localisation_model
    fresh = create_model("googlenet_bn", num_classes=len(CLASSES), aux_logits=False)  # another draw of the same init
    randomised = copy.deepcopy(loaded.model)
    for name in ("inception5a", "inception5b", "fc"):
        getattr(randomised, name).load_state_dict(getattr(fresh, name).state_dict())
    other = LoadedModel(randomised.eval(), loaded.class_names, loaded.preprocessing, loaded.path)
    # inception4e: below the re-initialised layers, and with a 4 x 4 map (inception3b's 8 x 8 maps are
    # mostly the item's silhouette whatever the weights above, since its activations are).
    with torch.no_grad():
        targets = loaded.model(loaded.preprocessing.to_input(images[:20])).argmax(dim=1).tolist()
    trained = _gradcam_maps(loaded, images[:20], "inception4e", targets)
    random = _gradcam_maps(other, images[:20], "inception4e", targets)
    correlations = torch.tensor([spearman(a, b) for a, b in zip(trained, random)])
    defined = correlations[~correlations.isnan()]  # NaN: a constant map (Grad-CAM's ReLU left nothing)
    assert len(defined) >= 5
    assert defined.mean() < 0.5
    print(f"Spearman, trained vs top layers re-initialised: {defined.mean():.2f} over {len(defined)} maps")
