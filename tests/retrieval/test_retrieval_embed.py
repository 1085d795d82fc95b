"""list_images and embed_images against a hand-written reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _retrieval_helpers import make_image_folder
from PIL import Image

from rankedlist.data import CorruptImageError, build_transform
from rankedlist.models import create_model
from rankedlist.retrieval import embed_images, list_images


def test_list_images_is_recursive_sorted_and_skips_hidden_and_resource_forks(tmp_path):
    for rel in ["b/2.png", "b/1.JPG", "a.jpeg", "b/deep/3.webp", "._a.jpeg", "b/._1.JPG",
                ".hidden.png", ".cache/x.png", "notes.txt", "b/deep/readme.md"]:  # fmt: skip
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["a.jpeg", "b/1.JPG", "b/2.png", "b/deep/3.webp"]
    with pytest.raises(FileNotFoundError, match="nope"):
        list_images(tmp_path / "nope")
    with pytest.raises(NotADirectoryError, match="a.jpeg is a file"):
        list_images(tmp_path / "a.jpeg")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = create_model("glyphnet", embedding_dim=16)
    return model, build_transform(model.input_style, train=False, image_size=model.input_size)


def by_hand(model, transform, paths):
    """Reference: PIL decode, the transform, one batch through model.embed in eval mode."""
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    model.eval()
    with torch.no_grad():
        return model.embed(x).numpy()


def test_embed_images_equals_model_embed_by_hand(tmp_path, tiny):
    model, transform = tiny
    paths = list_images(make_image_folder(tmp_path, classes=2, per_class=3))
    model.train()
    emb = embed_images(model, paths, transform, batch_size=4, progress=False)
    assert model.training  # the caller's mode is restored
    assert emb.shape == (6, 16) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, by_hand(model, transform, paths), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_embed_images_accepts_a_dataset(tmp_path, tiny):
    from rankedlist.data import get_dataset

    model, transform = tiny
    root = make_image_folder(tmp_path, classes=4, per_class=2)
    dataset = get_dataset("folder", root, split="train", transform=transform)
    emb = embed_images(model, dataset, batch_size=3, progress=False)
    paths = dataset.paths
    assert len(paths) == 4  # the train half of the classes
    np.testing.assert_allclose(emb, by_hand(model, transform, paths), atol=1e-5)
    with pytest.raises(ValueError, match="its own transform"):
        embed_images(model, dataset, transform, progress=False)


def test_a_corrupt_image_is_named_or_skipped(tmp_path, tiny):
    model, transform = tiny
    paths = list_images(make_image_folder(tmp_path, classes=1, per_class=3))
    bad = tmp_path / "class_0" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    images = [paths[0], bad, paths[1], paths[2]]
    with pytest.raises(CorruptImageError, match="broken.png"):
        embed_images(model, images, transform, batch_size=2, progress=False)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        embed_images(model, [tmp_path / "missing.png"], transform, progress=False)
    with pytest.warns(UserWarning, match="broken.png"):
        emb, kept = embed_images(
            model, images, transform, batch_size=2, progress=False, skip_corrupt=True
        )
    assert kept.tolist() == [0, 2, 3]
    np.testing.assert_allclose(emb, by_hand(model, transform, paths), atol=1e-5)


def test_embed_images_rejects_bad_arguments(tmp_path, tiny):
    model, transform = tiny
    with pytest.raises(ValueError, match="no images"):
        embed_images(model, [], transform)
    with pytest.raises(TypeError, match="list_images"):
        embed_images(model, str(tmp_path), transform)
    with pytest.raises(ValueError, match="test transform"):
        embed_images(model, [tmp_path / "a.png"], None)
    with pytest.raises(TypeError, match="embed"):
        embed_images(torch.nn.Linear(2, 2), [tmp_path / "a.png"], transform)


def test_package_exports_resolve_to_the_functions():
    import rankedlist.retrieval as retrieval

    for name in retrieval.__all__:
        assert getattr(retrieval, name).__name__ == name  # not a same-named submodule
