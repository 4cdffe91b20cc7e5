"""Segmentation heads, loss, geometry helpers (fast, no data)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medprobe.errors import ConfigError
from medprobe.heads.seg_heads import create_seg_head, seg_head_names
from medprobe.heads.seg_train import IGNORE, content_box, dice_ce_loss, resize_labels, to_original
from medprobe.preprocess import PreprocessConfig


@pytest.mark.parametrize("name", ["linear", "seg-linear", "decoder2d", "decoder3d"])
@pytest.mark.parametrize("use_image", [True, False])
def test_heads_shapes_and_backward(name: str, use_image: bool) -> None:
    hp = {} if "linear" in name else {"use_image": use_image, "width": 32}
    head = create_seg_head(name, [12, 12, 8], n_classes=3, patch=16, n_views=2, **hp)
    feats = [torch.randn(2, c, 5, 3, 4) for c in (12, 12, 8)]
    image = torch.randn(2, 2, 5, 48, 64)
    out = head(feats, image)
    assert out.shape == (2, 3, 5, 48, 64)
    out.mean().backward()
    assert all(p.grad is not None for p in head.parameters() if p.requires_grad)


def test_2d_heads_treat_slices_independently() -> None:
    torch.manual_seed(0)
    head = create_seg_head("decoder2d", [8], 2, 16, 1, width=16).eval()
    f, im = torch.randn(1, 8, 3, 2, 2), torch.randn(1, 1, 3, 32, 32)
    full = head([f], im)
    one = head([f[:, :, 1:2]], im[:, :, 1:2])
    assert torch.allclose(full[:, :, 1:2], one, atol=1e-5)


def test_registry_errors() -> None:
    assert {"linear", "decoder2d", "decoder3d"} <= set(seg_head_names())
    with pytest.raises(ConfigError, match=r"unknown head 'unet9000' \(known: .*decoder2d, decoder3d, linear"):
        create_seg_head("unet9000", [8], 2, 16)
    with pytest.raises(ConfigError, match="unknown option"):
        create_seg_head("decoder3d", [8], 2, 16, widht=3)
    with pytest.raises(ConfigError, match="positive patch size"):
        create_seg_head("decoder2d", [8], 2, 0)


def test_dice_ce_loss_ignores_padding_and_rewards_truth() -> None:
    target = torch.randint(0, 3, (2, 4, 8, 8))
    good = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float() * 20
    bad = torch.roll(good, 1, dims=1)
    assert dice_ce_loss(good, target) < 0.01 < dice_ce_loss(bad, target)
    padded = target.clone()
    padded[:, 2:] = IGNORE
    garbage = good.clone()
    garbage[:, :, 2:] = bad[:, :, 2:]
    assert float(dice_ce_loss(garbage, padded)) < 0.01


@pytest.mark.parametrize("resize", ["stretch", "aspect_pad", "pad"])
def test_labels_round_trip_through_preprocessed_grid(resize: str) -> None:
    pre = PreprocessConfig(resolution=(64, 64), resize=resize)
    lab = np.zeros((2, 40, 30), np.uint8)
    lab[:, 10:30, 5:20] = 1
    lab[1, 15:25, 8:12] = 2
    top, left, nh, nw = content_box(40, 30, pre)
    assert top + nh <= 64 and left + nw <= 64
    small = resize_labels(lab, pre)
    assert small.shape == (2, 64, 64)
    prob = torch.nn.functional.one_hot(torch.from_numpy(small).long(), 3).permute(3, 0, 1, 2).float()
    back = to_original(prob, lab.shape, pre)
    assert back.shape == lab.shape
    assert (back == lab).mean() > 0.97
