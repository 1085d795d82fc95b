"""Weight-loading helpers: checkpoint unwrapping and the load report."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from rankedlist.models.pretrained import (
    PretrainedWeightsError,
    load_backbone_state_dict,
    read_state_dict,
)


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def test_read_state_dict_unwraps_and_strips_module_prefix(tmp_path: Path) -> None:
    sd = {"module.0.weight": torch.ones(4, 3, 3, 3)}
    for wrapper in ("state_dict", "model", "model_state_dict"):
        path = tmp_path / f"{wrapper}.pth"
        torch.save({wrapper: sd, "epoch": 1}, path)
        assert list(read_state_dict(path)) == ["0.weight"]


def test_read_state_dict_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "missing.pth")
    path = tmp_path / "junk.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="Could not read"):
        read_state_dict(path)
    path = tmp_path / "list.pth"
    torch.save([1, 2], path)
    with pytest.raises(PretrainedWeightsError, match="state dict"):
        read_state_dict(path)


def test_load_reshapes_old_bn_vectors_and_ignores_prefixes() -> None:
    src = _net()
    for p in src.parameters():
        nn.init.normal_(p)
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    sd["1.weight"] = sd["1.weight"].reshape(1, 4)  # PyTorch 0.3 style (1, C)
    sd["classifier.weight"] = torch.zeros(10, 4)
    dst = _net()
    report = load_backbone_state_dict(dst, sd, "test", ignore_prefixes=("classifier.",))
    assert report.ignored == ["classifier.weight"] and not report.missing
    for key, value in src.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(dst.state_dict()[key], value)
    assert "tensors loaded" in str(report)


def test_non_strict_load_reports_missing() -> None:
    dst = _net()
    report = load_backbone_state_dict(dst, {"0.weight": torch.zeros(4, 3, 3, 3)}, "t", strict=False)
    assert report.loaded == ["0.weight"]
    assert "0.bias" in report.missing and "1.running_var" in report.missing
    assert torch.equal(dst[0].weight.detach(), torch.zeros(4, 3, 3, 3))
