"""Independent numpy restatement of the FTPROP-MB formulas (reference sections 2 and 3).

Written from the formula tables, not from the library, so the tests compare two
implementations of the specification.
"""

import numpy as np

LOSSES = (
    "soft_hinge", "truncated_hinge", "linear", "sigmoid", "lecun_tanh", "sste", "ste",
    "hinge", "perceptron", "adaline", "ramp", "log_hinge", "truncated_log_hinge", "log_loss",
    "truncated_log_loss", "square_loss", "truncated_square_loss", "log_sigmoid", "sste_v2",
    "soft_hinge2", "sigmoid2_2", "sigmoid3_2", "approx_sign", "swish_sign", "ede",
)
DIRECT = ("sste", "ste", "sste_v2", "ramp")  # backward given directly, whatever scale_by_grad
LECUN_A, LECUN_B = 1.7519, 2.0 / 3.0
SWISH_BETA = 5.0
# The step and training length the tests bind "ede" to: p = 0.3, T = 0.1 * 100^0.3.
EDE_STEP, EDE_TOTAL = 3, 10


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def ede_scales(step=EDE_STEP, total=EDE_TOTAL, t_min=0.1, t_max=10.0):
    """IR-Net: T = T_min 10^(p log10(T_max / T_min)), p = min(step / total, 1); k = max(1/T, 1)."""
    p = min(step / total, 1.0)
    scale = t_min * 10.0 ** (p * np.log10(t_max / t_min))
    return scale, max(1.0 / scale, 1.0)


def _tanh_losses(name):
    """(xscale, yscale) of the losses yscale tanh(-xscale z t) + 1."""
    return {"soft_hinge": (1.0, 1.0), "soft_hinge2": (2.0, 1.0), "lecun_tanh": (LECUN_B, LECUN_A),
            "ede": ede_scales()}[name]


_SIGMOIDS = {"sigmoid": (2.0, 1.0), "sigmoid2_2": (2.0, 2.0), "sigmoid3_2": (3.0, 2.0)}


def loss(name, z, t):
    """L(z, t) of the README's loss table."""
    zt = z * t
    if name in ("soft_hinge", "soft_hinge2", "lecun_tanh", "ede"):
        a, b = _tanh_losses(name)
        return b * np.tanh(-a * zt) + 1.0
    if name == "truncated_hinge":
        return np.clip(1.0 - zt, 0.0, 2.0)
    if name == "hinge":
        return np.maximum(1.0 - zt, 0.0)
    if name == "perceptron":
        return np.maximum(-zt, 0.0)
    if name == "linear":
        return -zt
    if name == "adaline":
        return t ** 2 * (z - t) ** 2 / 2.0
    if name == "log_hinge":
        return np.log(1.0 + np.maximum(1.0 - zt, 0.0))
    if name == "truncated_log_hinge":
        return np.log(1.0 + np.clip(1.0 - zt, 0.0, 2.0))
    if name == "log_loss":
        return np.log1p(np.exp(-zt))
    if name == "truncated_log_loss":
        return np.minimum(np.log1p(np.exp(-zt)), 2.0)
    if name == "square_loss":
        return np.maximum(1.0 - zt, 0.0) ** 2
    if name == "truncated_square_loss":
        return np.minimum(np.maximum(1.0 - zt, 0.0) ** 2, 4.0)
    if name in _SIGMOIDS:
        a, b = _SIGMOIDS[name]
        return b * _sigmoid(-a * zt)
    if name == "log_sigmoid":
        return np.log(_sigmoid(-2.0 * zt))
    if name == "approx_sign":  # 1 - F(zt), F = 2v + v^2 on [-1, 0), 2v - v^2 on [0, 1], sign(v) beyond
        f = np.where(np.abs(zt) > 1, np.sign(zt), np.where(zt < 0, 2 * zt + zt ** 2, 2 * zt - zt ** 2))
        return 1.0 - f
    if name == "swish_sign":  # 1 - F(zt), F(v) = 2 s(bv) (1 + bv (1 - s(bv))) - 1
        bv = SWISH_BETA * zt
        return 1.0 - (2.0 * _sigmoid(bv) * (1.0 + bv * (1.0 - _sigmoid(bv))) - 1.0)
    raise KeyError(name)


def dloss_dz(name, z, t):
    """dL/dz of the per-unit loss L(z, t) (section 2, column 2)."""
    zt = z * t
    if name in ("soft_hinge", "soft_hinge2", "lecun_tanh", "ede"):  # b tanh(-a zt) + 1
        a, b = _tanh_losses(name)
        return -t * a * b * (1.0 - np.tanh(a * zt) ** 2)
    if name == "truncated_hinge":  # clip(1 - zt, 0, 2)
        return -t * ((zt > -1.0) & (zt <= 1.0))
    if name == "hinge":
        return -t * (zt <= 1.0)
    if name == "perceptron":
        return -t * (zt <= 0.0)
    if name == "linear":  # -zt
        return -t * np.ones_like(z)
    if name == "adaline":
        return t ** 2 * (z - t)
    if name == "log_hinge":
        return np.where(zt <= 1.0, -t / (2.0 - np.minimum(zt, 1.0)), 0.0)
    if name == "truncated_log_hinge":
        return np.where((zt > -1.0) & (zt <= 1.0), -t / (2.0 - np.clip(zt, -1.0, 1.0)), 0.0)
    if name == "log_loss":
        return -t * np.exp(-zt) / (1.0 + np.exp(-zt))
    if name == "truncated_log_loss":
        return np.where(np.log1p(np.exp(-zt)) < 2.0, -t * np.exp(-zt) / (1.0 + np.exp(-zt)), 0.0)
    if name == "square_loss":
        return -2.0 * t * np.maximum(1.0 - zt, 0.0)
    if name == "truncated_square_loss":
        return np.where(zt > -1.0, -2.0 * t * np.maximum(1.0 - zt, 0.0), 0.0)
    if name in _SIGMOIDS:  # b sigmoid(-a zt)
        a, b = _SIGMOIDS[name]
        s = _sigmoid(-a * zt)
        return -t * a * b * s * (1.0 - s)
    if name == "log_sigmoid":  # log sigmoid(-2 zt)
        return -t * 2.0 * _sigmoid(2.0 * zt)
    if name == "approx_sign":
        return -t * np.where(np.abs(zt) <= 1.0, 2.0 - 2.0 * np.abs(zt), 0.0)
    if name == "swish_sign":
        bv = SWISH_BETA * zt
        with np.errstate(over="ignore"):
            return -t * SWISH_BETA * (2.0 - bv * np.tanh(bv / 2.0)) / (1.0 + np.cosh(bv))
    raise KeyError(name)


def scaled_grad(name, x, g, zero_one=False):
    """grad_x with w = |g| (section 2, column 3)."""
    t = -np.sign(g)
    tx = t * x
    if name == "sste":
        return g * (np.abs(x) <= 1.0)
    if name == "sste_v2":
        return g * (np.abs(x) <= np.sqrt(3.0))
    if name == "ramp" and zero_one:  # 1 on [0, 1], x + 1 on (-1, 0), 2 - x on (1, 2)
        return g * np.select([(0 <= x) & (x <= 1), (-1 < x) & (x < 0), (1 < x) & (x < 2)], [1.0, x + 1, 2 - x], 0.0)
    if name == "ramp":  # 1 on [-1, 1], 2 - |x| on 1 < |x| < 2
        return g * np.select([np.abs(x) <= 1, np.abs(x) < 2], [1.0, 2.0 - np.abs(x)], 0.0)
    if name in ("ste", "linear"):
        return g
    if name in ("soft_hinge", "soft_hinge2", "lecun_tanh", "ede"):
        a, b = _tanh_losses(name)
        return g * b * a * (1.0 - np.tanh(a * x) ** 2)
    if name == "truncated_hinge":
        return g * ((-1.0 < tx) & (tx <= 1.0))
    if name == "hinge":
        return g * (tx <= 1.0)
    if name == "perceptron":
        return g * (tx <= 0.0)
    if name == "adaline":
        return g + np.abs(g) * x
    if name == "log_hinge":
        return g * (tx <= 1.0) / (2.0 - np.minimum(tx, 1.0))
    if name == "truncated_log_hinge":
        return g * ((-1.0 < tx) & (tx <= 1.0)) / (2.0 - np.clip(tx, -1.0, 1.0))
    if name == "log_loss":
        return g * _sigmoid(-tx)
    if name == "truncated_log_loss":
        return g * _sigmoid(-tx) * (np.log(1.0 + np.exp(-tx)) < 2.0)
    if name == "square_loss":
        return 2.0 * g * np.maximum(1.0 - tx, 0.0)
    if name == "truncated_square_loss":
        return 2.0 * g * (1.0 - tx) * ((-1.0 < tx) & (tx <= 1.0))
    if name in _SIGMOIDS:
        a, b = _SIGMOIDS[name]
        s = _sigmoid(a * x)
        return g * a * b * s * (1.0 - s)
    if name == "log_sigmoid":
        return g * 2.0 * _sigmoid(2.0 * tx)
    if name == "approx_sign":
        return g * np.where(np.abs(x) <= 1.0, 2.0 - 2.0 * np.abs(x), 0.0)
    if name == "swish_sign":
        b = SWISH_BETA
        with np.errstate(over="ignore"):
            return g * b * (2.0 - b * x * np.tanh(b * x / 2.0)) / (1.0 + np.cosh(b * x))
    raise KeyError(name)


def step_forward(x, zero_one=False):
    """+1 where x > 0 else -1 (or 0 with zero_one)."""
    return np.where(x > 0, 1.0, 0.0 if zero_one else -1.0)


def step_grad(name, x, g, scale_by_grad, zero_one=False):
    """Backward of the step for either output range; batch size = len(x)."""
    if scale_by_grad or name in DIRECT:
        return scaled_grad(name, x, g, zero_one)
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
    if name in DIRECT:
        return scaled_grad(name, u, g)
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
