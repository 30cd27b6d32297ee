"""The probability heatmap of a photo: its most probable places, as the page and the PNG map
draw them."""

from __future__ import annotations

import torch

from .predictor import Predictor

HEAT_POINTS = 2000  # most probable places sent for the heatmap (the rest carry little mass)


def probability_heat(predictor: Predictor, feats: torch.Tensor) -> list[list[float]]:
    """[lat, lon, probability] of the HEAT_POINTS most probable places of one photo's CLIP
    features (1, D): the heatmap the page and ``explain --map`` draw."""
    return predictor.strongest(predictor.probabilities(feats)[0], HEAT_POINTS)
