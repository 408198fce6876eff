"""Independent numpy restatement of the FTPROP-MB formulas (reference sections 2 and 3).

Written from the formula tables, not from the library, so the tests compare two
implementations of the specification.
"""

import numpy as np

LOSSES = ("soft_hinge", "truncated_hinge", "linear", "sigmoid", "lecun_tanh", "sste", "ste")
LECUN_A, LECUN_B = 1.7519, 2.0 / 3.0


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def dloss_dz(name, z, t):
    """dL/dz of the per-unit loss L(z, t) (section 2, column 2)."""
    zt = z * t
    if name == "soft_hinge":  # tanh(-zt) + 1
        return -t * (1.0 - np.tanh(zt) ** 2)
    if name == "truncated_hinge":  # clip(1 - zt, 0, 2)
        return -t * ((zt > -1.0) & (zt <= 1.0))
    if name == "linear":  # -zt
        return -t * np.ones_like(z)
    if name == "sigmoid":  # sigmoid(-2zt)
        s = _sigmoid(-2.0 * zt)
        return -t * 2.0 * s * (1.0 - s)
    if name == "lecun_tanh":  # 1.7519 tanh(-(2/3) zt) + 1
        return -t * LECUN_A * LECUN_B * (1.0 - np.tanh(LECUN_B * zt) ** 2)
    raise KeyError(name)


def scaled_grad(name, x, g):
    """grad_x with w = |g| (section 2, column 3)."""
    if name in ("sste",):
        return g * (np.abs(x) <= 1.0)
    if name in ("ste", "linear"):
        return g
    if name == "soft_hinge":
        return g * (1.0 - np.tanh(x) ** 2)
    if name == "truncated_hinge":
        t = -np.sign(g)
        return g * ((-1.0 < t * x) & (t * x <= 1.0))
    if name == "sigmoid":
        s = _sigmoid(2.0 * x)
        return g * 2.0 * s * (1.0 - s)
    if name == "lecun_tanh":
        return g * LECUN_A * LECUN_B * (1.0 - np.tanh(2.0 * x / 3.0) ** 2)
    raise KeyError(name)


def step_forward(x, zero_one=False):
    """+1 where x > 0 else -1 (or 0 with zero_one)."""
    return np.where(x > 0, 1.0, 0.0 if zero_one else -1.0)


def step_grad(name, x, g, scale_by_grad):
    """Backward of the step for either output range; batch size = len(x)."""
    if scale_by_grad or name in ("sste", "ste"):
        return scaled_grad(name, x, g)
    t = -np.sign(g)
    return (g != 0) * dloss_dz(name, x, t) / x.shape[0]


def staircase_forward(x, steps, low, high):
    """y = clip(ceil(x' (n-1)), 0, n) / n * (b - a) + a, x' = (x - a)/(b - a); n = 1: 1[x' > 0]."""
    unit = (x - low) / (high - low)
    raw = np.ceil(unit * (steps - 1)) if steps > 1 else np.ceil(unit)
    return np.clip(raw, 0, steps) / steps * (high - low) + low


def staircase_grad(name, x, g, steps, low, high, scale_by_grad):
    """One unit centred on the range, u = 2x' - 1; the (b - a) of the chain rule as in the reference."""
    unit = (x - low) / (high - low)
    u = 2.0 * unit - 1.0
    if name == "sste":
        return g * ((unit >= 0) & (unit <= 1))
    if name == "ste":
        return g
    if scale_by_grad:
        return scaled_grad(name, u, g)
    t = -np.sign(g)
    return (g != 0) * dloss_dz(name, u, t) / (x.shape[0] * (high - low))


def batch_norm_forward(z, gamma, beta, epsilon):
    """x = gamma (z - mean) / sqrt(var + eps) + beta with the biased batch statistics over all axes but the last."""
    axes = tuple(range(z.ndim - 1))
    mean, var = z.mean(axis=axes), z.var(axis=axes)
    return gamma * (z - mean) / np.sqrt(var + epsilon) + beta, mean, var


def batch_norm_grad(z, gamma, epsilon, grad_x):
    """(dz, dgamma, dbeta) of batch norm in training mode, given dLoss/dx:

    xhat = (z - mean) / sqrt(var + eps),  dbeta = sum grad_x,  dgamma = sum grad_x xhat,
    dz = gamma / sqrt(var + eps) (grad_x - dbeta / N - xhat dgamma / N), N = values per channel.
    """
    axes = tuple(range(z.ndim - 1))
    n = z.size // z.shape[-1]
    inv = 1.0 / np.sqrt(z.var(axis=axes) + epsilon)
    xhat = (z - z.mean(axis=axes)) * inv
    dbeta = grad_x.sum(axis=axes)
    dgamma = (grad_x * xhat).sum(axis=axes)
    return gamma * inv * (grad_x - dbeta / n - xhat * dgamma / n), dgamma, dbeta
