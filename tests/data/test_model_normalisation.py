"""The imagenet pipeline normalises with the model's own mean/std, and every consumer agrees.

The reference is independent of torchvision and of rankedlist's transforms: PIL's bilinear resize
of the short side, a numpy centre crop, ``/ 255`` and ``(x - mean) / std`` in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rankedlist.data import build_transform
from rankedlist.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from rankedlist.export import input_contract, prepare_image

#: OpenAI CLIP's normalisation: three different values per statistic, so a channel mix-up shows.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


def photo(width: int = 150, height: int = 97, seed: int = 0) -> Image.Image:
    """A non-square RGB image of smooth gradients plus noise (every pixel value differs)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    noisy = base + rng.normal(0, 25, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def reference(image: Image.Image, size: int, mean, std) -> np.ndarray:
    """The imagenet test pipeline by hand: short side to round(size * 256 / 224) (the long side
    truncated), centre crop ``size``, then ``(x / 255 - mean) / std`` per RGB channel."""
    short = round(size * 256 / 224)
    w, h = image.size
    new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    arr = np.asarray(image.resize(new, Image.Resampling.BILINEAR), dtype=np.float64)
    top, left = round((arr.shape[0] - size) / 2), round((arr.shape[1] - size) / 2)
    arr = arr[top : top + size, left : left + size] / 255.0
    out = (arr - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)
    return out.transpose(2, 0, 1)


@pytest.mark.parametrize("mean, std", [(HALF, HALF), (CLIP_MEAN, CLIP_STD)])
def test_imagenet_test_pipeline_uses_the_given_mean_and_std(mean, std):
    image = photo()
    got = build_transform("imagenet", False, 64, mean=mean, std=std)(image)
    assert got.shape == (3, 64, 64) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), reference(image, 64, mean, std), rtol=0, atol=2e-6)
    if mean == HALF:  # the [-1, 1] range of EfficientNet-Lite0's package weights
        assert got.min() >= -1 and got.max() <= 1 and got.min() < -0.5 and got.max() > 0.5


def test_imagenet_pipeline_without_mean_and_std_is_imagenets():
    image = photo(seed=1)
    got = build_transform("imagenet", False, 64)(image).numpy()
    want = reference(image, 64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    # the contract's default is ImageNet's too (what exports before this change recorded)
    contract = input_contract("imagenet", 64, 8)
    assert contract["mean"] == [0.485, 0.456, 0.406] and contract["std"] == [0.229, 0.224, 0.225]


def test_the_training_pipeline_normalises_with_the_given_mean_and_std():
    # A random crop of a single-colour image is that colour everywhere: its value tells which
    # normalisation ran, whatever the crop and flip.
    colour = np.array([200, 30, 120])
    image = Image.new("RGB", (90, 70), tuple(int(c) for c in colour))
    x = build_transform("imagenet", True, 32, mean=CLIP_MEAN, std=CLIP_STD)(image)
    want = (colour / 255 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    np.testing.assert_allclose(x[:, 16, 16].numpy(), want, rtol=0, atol=2e-6)


def test_the_contract_records_the_models_normalisation_and_reproduces_it(tmp_path):
    contract = input_contract("imagenet", 48, 8, mean=CLIP_MEAN, std=CLIP_STD)
    assert contract["mean"] == list(CLIP_MEAN) and contract["std"] == list(CLIP_STD)
    assert contract["channel_order"] == "RGB" and "the model's mean" in contract["summary"]
    path = tmp_path / "wide.png"
    photo(171, 64, seed=2).save(path)
    got = prepare_image(path, contract)
    np.testing.assert_allclose(
        got, reference(photo(171, 64, seed=2), 48, CLIP_MEAN, CLIP_STD), rtol=0, atol=2e-6
    )


@pytest.mark.parametrize("style, size", [("glyphs", 32), ("bninception", 96)])
def test_styles_with_their_own_normalisation_ignore_a_models(style, size):
    # Those protocols fix their inputs (glyphs [-1, 1], the paper's BGR 0-255 minus its mean):
    # a model's mean/std passed along changes nothing, in the transform or the contract.
    image = photo(seed=3)
    plain = build_transform(style, False, size)(image)
    given = build_transform(style, False, size, mean=CLIP_MEAN, std=CLIP_STD)(image)
    assert torch.equal(plain, given)
    assert input_contract(style, size, 8, mean=CLIP_MEAN, std=CLIP_STD) == input_contract(
        style, size, 8
    )


@pytest.mark.parametrize(
    "mean, std, match",
    [
        ((0.5, 0.5), HALF, "mean must be three finite numbers"),
        ((0.5, float("nan"), 0.5), HALF, "mean must be three finite numbers"),
        (HALF, (0.5, 0.0, 0.5), "std must be positive"),
        (HALF, "abc", "std must be three finite numbers"),
    ],
)
def test_a_bad_mean_or_std_is_one_clear_error(mean, std, match):
    with pytest.raises(ValueError, match=match) as err:
        build_transform("imagenet", False, 32, mean=mean, std=std)
    assert "\n" not in str(err.value) and "input_" in str(err.value)
    with pytest.raises(ValueError, match=match):
        input_contract("imagenet", 32, 8, mean=mean, std=std)


@pytest.mark.slow
def test_every_consumer_of_a_non_imagenet_model_feeds_it_the_same_tensor(tmp_path):
    """folder_efficientnet's EfficientNet-Lite0 (package weights, trained on [-1, 1] inputs): the
    run's eval transform, the checkpoint's, the evaluation's, the ONNX export's contract
    (numpy) and the export's index model all give the model's own normalisation."""
    from rankedlist.export.checked_export import export_checkpoint
    from rankedlist.retrieval.index_models import open_index_model
    from rankedlist.training.checkpoint import load_checkpoint
    from rankedlist.training.checkpoint_model import load_model_from_checkpoint
    from rankedlist.training.config import load_config
    from rankedlist.training.distributed import DistributedContext
    from rankedlist.training.evaluate_checkpoint import evaluate_checkpoint
    from rankedlist.training.run import build_run

    root = tmp_path / "photos"
    for c in range(4):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(5):  # 10 test images: Recall@8 needs 8 others
            photo(80 + 13 * i, 60 + 7 * c, seed=10 * c + i).save(root / f"class{c}" / f"{i}.png")
    size = 48
    config = load_config(
        "folder_efficientnet",
        [f"data.root={root}", "data.p=2", "data.k=2", "data.val_fraction=0",
         f"data.image_size={size}", "model.embedding_dim=8", "train.device=cpu",
         f"train.run_dir={tmp_path / 'run'}"],
    )  # fmt: skip
    run = build_run(config, DistributedContext(), load_pretrained=True)
    model = run.model
    assert model.input_mean == HALF and model.input_std == HALF  # the package's weights
    checkpoint = run.save("best.pt", weights_only=True)
    assert load_checkpoint(checkpoint)["input_normalisation"] == {
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
    }
    run.save("last.pt")  # a full one, to resume

    loaded = load_model_from_checkpoint(checkpoint, device="cpu")
    evaluated: dict = {}
    evaluate_checkpoint(checkpoint, "test", device="cpu", embeddings_out=evaluated)
    export = tmp_path / "model.onnx"
    export_checkpoint(checkpoint, export)
    from_export = open_index_model(model_file=export, device="cpu")
    assert from_export.meta["input_contract"]["mean"] == list(HALF)

    query = tmp_path / "query.png"
    photo(133, 77, seed=99).save(query)
    with Image.open(query) as im:
        image = im.convert("RGB")
    want = reference(image, size, HALF, HALF)
    tensors = {
        "run": run.eval_transform(image).numpy(),
        "checkpoint": loaded.transform(image).numpy(),
        "evaluation": evaluated["dataset"].transform(image).numpy(),
        "contract": prepare_image(query, from_export.meta["input_contract"]),
        "index model": from_export.transform(image).numpy(),
    }
    for name, got in tensors.items():
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6, err_msg=name)
        assert np.abs(got - tensors["run"]).max() <= 1e-6, name
    # not ImageNet's: the old pipeline is far from this one
    imagenet = reference(image, size, IMAGENET_MEAN, IMAGENET_STD)
    assert np.abs(imagenet - want).max() > 0.5


@pytest.mark.slow
def test_a_checkpoint_from_before_the_record_keeps_imagenets_normalisation(tmp_path):
    """Weights trained when the imagenet pipeline always used ImageNet's mean/std keep it when
    loaded, exported or resumed, whatever the model reports; a damaged record is one error."""
    from rankedlist.export.checked_export import export_checkpoint
    from rankedlist.export.input_contract import read_sidecar
    from rankedlist.training.checkpoint import load_checkpoint, save_checkpoint
    from rankedlist.training.checkpoint_model import load_model_from_checkpoint
    from rankedlist.training.config import load_config
    from rankedlist.training.distributed import DistributedContext
    from rankedlist.training.run import build_run, start_run

    root = tmp_path / "photos"
    for c in range(4):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(2):
            photo(70 + 9 * i, 50 + 5 * c, seed=20 * c + i).save(root / f"class{c}" / f"{i}.png")
    overrides = [f"data.root={root}", "data.p=2", "data.k=2", "data.val_fraction=0",
                 "data.image_size=32", "model.embedding_dim=8", "model.pretrained=false",
                 "train.device=cpu"]  # fmt: skip
    config = load_config("folder_efficientnet", [*overrides, f"train.run_dir={tmp_path / 'a'}"])
    run = build_run(config, DistributedContext(), load_pretrained=False)
    state = load_checkpoint(run.save("last.pt"))
    del state["input_normalisation"]  # what a checkpoint of an earlier version holds
    old = save_checkpoint(state, tmp_path / "old.pt")

    image = photo(seed=7)
    imagenet = reference(image, 32, IMAGENET_MEAN, IMAGENET_STD)
    loaded = load_model_from_checkpoint(old, device="cpu")
    assert loaded.model.input_mean == HALF  # the model reports [-1, 1] ...
    np.testing.assert_allclose(loaded.transform(image).numpy(), imagenet, rtol=0, atol=2e-6)
    export = tmp_path / "old.pt2"
    export_checkpoint(old, export)
    assert read_sidecar(export)["mean"] == list(IMAGENET_MEAN)  # ... its weights learnt ImageNet's
    resumed_config = load_config(
        "folder_efficientnet", [*overrides, f"train.run_dir={tmp_path / 'b'}"]
    )
    resumed, log = start_run(resumed_config, DistributedContext(), resume=old)
    try:
        np.testing.assert_allclose(resumed.eval_transform(image).numpy(), imagenet, atol=2e-6)
        assert load_checkpoint(resumed.save("last.pt"))["input_normalisation"]["mean"] == list(
            IMAGENET_MEAN
        )
    finally:
        log.close()
        resumed.release_folder()

    state["input_normalisation"] = {"mean": [0.5, 0.5], "std": [0.5] * 3}
    damaged = save_checkpoint(state, tmp_path / "damaged.pt")
    with pytest.raises(ValueError, match="damaged.pt records a damaged input normalisation"):
        load_model_from_checkpoint(damaged, device="cpu")
