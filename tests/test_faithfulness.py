"""Localisation and faithfulness metrics on hand-made maps and a toy model whose evidence we know."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from schoolvision.explain.faithfulness import (
    BASELINES,
    baseline_maps,
    centre_gaussian,
    energy_share,
    format_table,
    pointing_game,
    random_maps,
    road_drop,
    summarise,
)


def _mask(shape=(32, 32), box=(4, 12, 4, 12)):
    m = np.zeros(shape, bool)
    r0, r1, c0, c1 = box
    m[r0:r1, c0:c1] = True
    return m


def test_pointing_game_hit_miss_and_blank():
    mask = _mask()
    heat = np.zeros((32, 32), np.float32)
    heat[6, 6] = 1.0
    assert pointing_game(heat, mask) == 1.0
    heat2 = np.zeros((32, 32), np.float32)
    heat2[20, 20] = 1.0
    assert pointing_game(heat2, mask) == 0.0
    assert pointing_game(np.zeros((32, 32)), mask) == 0.0  # a blank map points nowhere
    heat3 = np.zeros((32, 32), np.float32)
    heat3[13, 13] = 1.0  # one pixel diagonal outside the box (rows/cols 4..11)
    assert pointing_game(heat3, mask) == 0.0
    assert pointing_game(heat3, mask, tolerance_px=2) == 0.0  # 2.83 px away
    assert pointing_game(heat3, mask, tolerance_px=3) == 1.0
    with pytest.raises(ValueError):
        pointing_game(np.zeros((8, 8)), mask)


def test_energy_share():
    mask = _mask()
    inside = mask.astype(np.float32)
    assert energy_share(inside, mask) == pytest.approx(1.0)
    assert energy_share(1 - inside, mask) == pytest.approx(0.0)
    assert energy_share(np.ones((32, 32)), mask) == pytest.approx(mask.mean())
    assert energy_share(-np.ones((32, 32)), mask) == 0.0  # negative evidence is not mass
    half = inside * 3 + (1 - inside) * 1  # positive everywhere, more inside
    assert energy_share(half, mask) == pytest.approx(3 * 64 / (3 * 64 + 1024 - 64))


def test_baselines():
    g = centre_gaussian(2, (33, 33))
    assert g.shape == (2, 33, 33) and g.dtype == np.float32
    assert np.unravel_index(g[0].argmax(), g[0].shape) == (16, 16)
    a = random_maps(3, (8, 8), np.random.default_rng(0))
    b = random_maps(3, (8, 8), np.random.default_rng(0))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0], a[1])
    centre = _mask(box=(12, 20, 12, 20))
    corner = _mask(box=(0, 8, 0, 8))
    assert pointing_game(centre_gaussian(1, (32, 32))[0], centre) == 1.0
    assert pointing_game(centre_gaussian(1, (32, 32))[0], corner) == 0.0
    maps = baseline_maps(3, (8, 8), np.random.default_rng(0))
    assert tuple(maps) == BASELINES == ("random", "centre-gaussian")
    np.testing.assert_array_equal(maps["random"], a)
    np.testing.assert_array_equal(maps["centre-gaussian"], centre_gaussian(3, (8, 8)))


class _BoxModel(nn.Module):
    """School logit = mean brightness inside a fixed box: its true evidence is the box."""

    def __init__(self, box=(4, 12, 4, 12)):
        super().__init__()
        self.box = box
        self.scale = nn.Parameter(torch.tensor(20.0))

    def forward(self, x):
        r0, r1, c0, c1 = self.box
        s = x[:, :, r0:r1, c0:c1].mean(dim=(1, 2, 3)) * self.scale
        return torch.stack([torch.zeros_like(s), s], dim=1)


def test_road_drop_rewards_the_map_that_finds_the_evidence():
    x = torch.zeros(2, 3, 32, 32)
    x[:, :, 4:12, 4:12] = 1.0
    model = _BoxModel().eval()
    right = np.repeat(_mask()[None].astype(np.float32), 2, axis=0)
    wrong = np.repeat(_mask(box=(20, 28, 20, 28))[None].astype(np.float32), 2, axis=0)
    d_right = road_drop(model, x, right, target=1, percentiles=(80,))
    d_wrong = road_drop(model, x, wrong, target=1, percentiles=(80,))
    assert d_right.shape == (2,)
    assert (d_right > 0.3).all()
    assert (np.abs(d_wrong) < 0.05).all()
    assert road_drop(model, x[:0], right[:0], target=1).shape == (0,)


def test_summarise_subsets_and_table():
    def scored(method, pred, pointing, energy, road):
        return {"method": method, "label": 1, "pred": pred, "has_footprint": True, "pointing_game": pointing,
                "energy_share": energy, "road_drop": road}

    recs = [
        scored("gradcam", 1, 1.0, 0.8, 0.2),
        scored("gradcam", 0, 0.0, 0.1, 0.0),
        {"method": "gradcam", "label": 0, "pred": 1, "has_footprint": False},
        scored("random", 1, 0.0, 0.3, 0.01),
    ]
    t = summarise(recs, {"gradcam": 0.05}, subset="correct_school")
    assert t["gradcam"]["n_chips"] == 1 and t["gradcam"]["pointing_game"] == 1.0
    assert t["gradcam"]["seconds_per_chip"] == 0.05
    assert t["random"]["pointing_game"] == 0.0
    t_all = summarise(recs, subset="school")
    assert t_all["gradcam"]["n_chips"] == 2 and t_all["gradcam"]["pointing_game"] == 0.5
    text = format_table(t)
    assert "gradcam" in text and "random" in text and "pointing_game" in text
    empty = summarise([{"method": "x", "label": 0, "pred": 0, "has_footprint": False}])
    assert empty["x"]["pointing_game"] is None and "-" in format_table(empty)


def test_linear_infill_solves_pytorch_grad_cams_system():
    """The array-built system gives NoisyLinearImputer's values (noise off), borders and corners included."""
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    from schoolvision.explain.faithfulness import linear_infill

    rng = np.random.default_rng(3)
    img = torch.from_numpy(rng.random((3, 40, 52)).astype(np.float32))
    removed = rng.random((40, 52)) < 0.6
    removed[0, :] = removed[:, -1] = True  # whole edges unknown
    expected = NoisyLinearImputer(noise=0.0)(img, torch.from_numpy((~removed).astype(np.float32)))
    values = linear_infill(img.numpy(), removed)
    got = img.reshape(3, -1).clone()
    got[:, np.flatnonzero(removed)] = torch.tensor(values, dtype=torch.float).t()
    assert torch.equal(got.reshape_as(img), expected)
    assert not torch.equal(got.reshape_as(img), img)  # the removed pixels did change
