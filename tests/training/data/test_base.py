"""training.data.base: recipes and exact channel statistics."""


import numpy as np
import pytest

from training import data


def test_channel_stats_matches_numpy():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(5, 4, 4, 3), dtype=np.uint8)
    mean, std = data.channel_stats(rgb)
    np.testing.assert_allclose(mean, (rgb / 255.0).mean(axis=(0, 1, 2)), rtol=1e-9)
    np.testing.assert_allclose(std, (rgb / 255.0).std(axis=(0, 1, 2)), rtol=1e-9)
    grey_mean, grey_std = data.channel_stats(rgb[..., 0])
    assert grey_mean == (mean[0],) * 3 and grey_std == pytest.approx((std[0],) * 3)


def test_recipes():
    small = data.small_recipe(28, name="mnist", mean=(0.1,) * 3, std=(0.3,) * 3,
                              min_image_size=32)
    assert (small.size, small.pad, small.flip) == (32, 4, False)
    assert data.small_recipe(32, name="cifar10", mean=(0,) * 3, std=(1,) * 3).flip
    large = data.large_recipe(min_image_size=67)
    assert (large.size, large.resize) == (224, 256)
    assert (data.large_recipe(image_size=112).resize) == 128
