"""What a threshold layer computes: which layers are thresholds, their thresholds t_k and their levels l_k.

    HardThreshold   t = [0],   levels {-1, 1} ({0, 1} with zero_one)
    Staircase       t_k = a + (b - a) k / (n - 1)  (k = 0..n-1; n = 1: t_0 = a),   l_k = a + (b - a) k / n  (k = 0..n)

y = l_j with j = sum_k 1[x > t_k]: ``ops.hard_threshold`` / ``ops.staircase`` exactly (x > t is the only way up).
"""

from __future__ import annotations

from keras_ftprop import layers as ftprop_layers

# A layer is a threshold iff it is an instance of one of these (subclasses included).
THRESHOLD_TYPES = (ftprop_layers.HardThreshold, ftprop_layers.Staircase)


def is_threshold(layer):
    """Whether the export computes ``layer`` as a threshold: a HardThreshold or a Staircase (or a subclass)."""
    return isinstance(layer, THRESHOLD_TYPES)


def thresholds_of(layer):
    """[t_0, ..., t_{n-1}] of a threshold layer (None for any other layer)."""
    if isinstance(layer, ftprop_layers.HardThreshold):
        return [0.0]
    if isinstance(layer, ftprop_layers.Staircase):
        if layer.steps == 1:
            return [layer.low]
        return [layer.low + (layer.high - layer.low) * k / (layer.steps - 1) for k in range(layer.steps)]
    return None


def levels_of(layer):
    """(levels [l_0, ..., l_n], steps n) of a threshold layer's output."""
    if isinstance(layer, ftprop_layers.HardThreshold):
        return ([0.0, 1.0] if layer.zero_one else [-1.0, 1.0]), 1
    return [layer.low + (layer.high - layer.low) * k / layer.steps for k in range(layer.steps + 1)], layer.steps
