"""Scale and rotation draws follow the configured distribution: mmpose's truncated normals
(RandomBBoxTransform) or the uniform ranges of Newell's PyTorch port."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import truncnorm

from trainer.config import AugmentConfig
from trainer.data import transforms

INPUT = (256, 256)
BOX = np.array([[0.0, 0.0, 100.0, 100.0]])


def _geometry(augment: AugmentConfig, n: int = 20000) -> transforms.Geometry:
    draws = np.random.default_rng(0).random((n, transforms.NUM_DRAWS))
    draws[:, transforms.HALF_BODY] = 1.0
    return transforms.sample_geometry(draws, np.repeat(BOX, n, 0), None, augment, INPUT, None)


def _factors(geometry: transforms.Geometry) -> np.ndarray:
    return geometry.box_size[:, 0] / (100.0 * 1.25)  # the padded box without augmentation


def test_truncnorm_scale_is_mmpose_random_bbox_transform():
    augment = AugmentConfig(scale_range=[0.5, 1.5], scale_distribution="truncnorm", rotation_prob=0.0,
                            shift_prob=0.0)
    factors = _factors(_geometry(augment))
    # mmpose: truncnorm(-1, 1) * sigma + mu, mu = 1.0, sigma = 0.5
    expected = truncnorm(-1.0, 1.0, loc=1.0, scale=0.5)
    quantiles = [0.05, 0.25, 0.5, 0.75, 0.95]
    np.testing.assert_allclose(np.quantile(factors, quantiles), expected.ppf(quantiles), atol=0.01)
    assert factors.min() >= 0.5 and factors.max() <= 1.5


def test_uniform_scale_and_rotation_are_the_port_ranges():
    augment = AugmentConfig(scale_range=[0.75, 1.25], scale_distribution="uniform", rotation_max=30.0,
                            rotation_distribution="uniform", rotation_prob=1.0, shift_prob=0.0)
    geometry = _geometry(augment)
    quantiles = np.array([0.05, 0.25, 0.5, 0.75, 0.95])
    np.testing.assert_allclose(np.quantile(_factors(geometry), quantiles), 0.75 + 0.5 * quantiles, atol=0.01)
    np.testing.assert_allclose(np.quantile(geometry.rotation, quantiles), -30 + 60 * quantiles, atol=1.0)


def test_truncnorm_rotation_has_sigma_rotation_max():
    augment = AugmentConfig(rotation_max=80.0, rotation_distribution="truncnorm", rotation_prob=1.0,
                            shift_prob=0.0)
    rotation = _geometry(augment).rotation
    expected = truncnorm(-1.0, 1.0, scale=80.0)
    np.testing.assert_allclose(np.quantile(rotation, [0.1, 0.5, 0.9]), expected.ppf([0.1, 0.5, 0.9]), atol=1.5)
    assert np.abs(rotation).max() <= 80.0


def test_unknown_distribution_is_a_config_error():
    from trainer.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="augment.scale_distribution"):
        config_from_dict({"augment": {"scale_distribution": "normal"}}, "test.yaml")
