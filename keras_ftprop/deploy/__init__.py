"""TFLite export of hard-threshold networks: full-integer (int8) with exact activation codes, or float.

    flatbuffer = to_tflite(model, images[:500], quantize="int8", path="model_int8.tflite")
    print(flatbuffer.report)            # flash and arena bytes, ops by type and dtype, rewritten and folded layers

The export converts a functional clone of ``model`` in which each threshold layer (a ``HardThreshold``
or ``Staircase``, subclasses included; ``REWRITES``) is replaced by a forward-only graph of TFLite
builtins (the training-time ``tf.custom_gradient`` is not needed to predict):

    HardThreshold   h = select(x > 0, 1, -1)            (zero_one: select(x > 0, 1, 0))
    Staircase       y = select(x > t_{n-1}, l_n, select(... select(x > t_0, l_1, l_0)))
                    t_k = a + (b - a) k / (n - 1),  l_k = a + (b - a) k / n   (n = 1: t_0 = a)

which is ``ops.hard_threshold`` / ``ops.staircase`` exactly (step(0) = -1; x > t is the only way up).
A ``BatchNormThreshold`` is first split into its ``BatchNormalization`` and
threshold (same weights, same ops), so that the converter folds the batch
norm and the threshold is rewritten like any other.

``quantize="int8"``: post-training full-integer quantization (int8 weights per
channel, int8 activations, int32 biases) calibrated on ``representative_data``,
except at the thresholds, whose ranges are pinned with fake-quant nodes:

* output: scale s = (b - a) / (n m), m the largest integer with n m <= 255 and
  a / s an integer (0 must be a code), so every level l_k is the code
  z + l_k / s: {-1, +1} -> s = 1/127, z = 0 (codes -127, 127); {0, 1/3, 2/3, 1}
  -> s = 1/255, z = -128; 7 steps on [0, 1] -> s = 1/252, z = -126.
* input (``threshold_input="pinned"``, the default): the int8 pre-activation
  is rounded, so x within half a step of a threshold can land on its other side
  and flip the unit. Only the side matters, so instead of the calibrated range:
  a step's input is multiplied by k = ``2**STEP_INPUT_BITS / max|x|`` through the
  weights that produce it (batch-norm gamma and beta, or a linear convolution's
  or dense layer's kernel and bias, across max pooling, padding, flatten and
  dropout) and pinned to [-128/127, 1]: the comparison of the (batch-norm
  folded) accumulator with a per-channel integer threshold, at ``2**7`` times the
  calibrated resolution, everything far from 0 saturated. Without such a
  producer (a residual sum) the input is pinned at that resolution but no
  finer than MIN_COMPARE_SCALE (int8 GREATER's resolution); a quantization-aware
  copy pins it to the sum's exact grid instead (``keras_ftprop.deploy.sums``:
  power-of-two scale ratios, on which the int8 ADD does not round). A staircase's
  input is pinned to a grid on which every threshold is a code, one code
  beyond each end. The thresholds are codes of their input's grid, so every
  GREATER compares integers exactly. ``threshold_input="calibrated"`` keeps
  the converter's ranges (for comparison).

Fused thresholds (``fuse_thresholds=True``, the default for int8): a step or a staircase on [0, b] whose
input is a Conv2D or Dense (with its batch norm; max pooling, flatten and dropout may lie between, as they
commute with a monotone threshold) fed by another threshold's output becomes that layer's own
requantization. Its input codes (minus the zero point) are then multiples of m (127 for a {-1, +1} input,
floor(255/n) for an n-step staircase on [0, 1]), so its int32 accumulator is acc = m j for an integer j.

Step, with the exact threshold t = -b / (s_in s_w) per channel:

      h = 1[acc > t] = 1[acc + B > 0],  B = m//2 - m (floor(t / m) + 1),

  where acc + B is never within m//2 of 0. The export sets the bias to B and scales each output channel so
  that the requantization multiplier is M = 256 / (m//2 - m//4) (codes unchanged): every unit lands beyond
  the output range and the clamp (a fused RELU_N1_TO_1 for {-1, +1}, RELU and the int8 range for {0, 1})
  puts it exactly on the code of a level (the bias may round by up to m//4).

Staircase (n steps), level k + 1 iff x > t_k, i.e. iff j >= G_k = floor((t_k - b) / (s_in s_w m)) + 1:
  the producer writes one code per level (scale b / n, RELU at level 0, the int8 maximum at level n),

      level = clip(round(M (acc + B)), 0, n)  >= k + 1  iff  j >= (k + 1/2) / (M m) - B / m,

  and per channel an integer B and a multiplier M put each of these between G_k - 1 and G_k (a relative
  1e-6 from either), so the level is exact at every reachable accumulator; a channel without such a pair
  leaves the site unfused. An int8 LEAKY_RELU (identity on the levels) then requantizes the levels onto
  the threshold's own grid.

Every decision keeps at least one accumulator unit (and a relative 1e-6) between each reachable accumulator
value and the requantization boundary that decides it, so XNNPACK's float32 requantization and TFLite's
fixed-point one (reference kernels, TFLite Micro: a 31-bit multiplier whose high multiply rounds first, moving
the result by at most one accumulator unit) decide alike; the staircase's (B, M) keep that room too.

A step that cannot be fused but whose producer is a Conv2D or Dense (the first layer, which reads the image:
m = 1; every accumulator below 2^23) is decided on the producer's accumulator all the same: the producer
writes q = round(2 (acc + B)) with B = -floor(t) on the step's pinned input grid (scale 1/127), so q <= 0
iff acc <= t and q >= 2 otherwise, and the step compares q > 0 (``fusion.accumulator_compares``). A
staircase there (on [0, b], n steps of size d) is fused all the same, one requantization of the image's
convolution (``keras_ftprop.deploy.input_staircases``): with accumulators one unit apart, each boundary
R_k = (k + 1/2) P (P = 1 / M, per channel) must leave no integer between float32's boundary and fixed
point's, which the high multiply moves down by 1 / (2 f) units (M = f 2^-s, f in [1/2, 1)). P = 2N - eps
puts every R_k just below an integer, so the two agree when 1 / (2 f) + (n - 1/2) eps and the margins fit in
one unit: the export takes the nearest such P to the float staircase's spacing (within 25%: a channel whose
f is near 1/2 moves past the next power of two) and the integer B that centres the boundaries on the
thresholds in reach, and the quantization-aware copy takes the same levels from its integer accumulator
(``ExactStaircaseConv2D``), so it is fine-tuned for them. A channel that no such P places (10^5 accumulator
units per level or more) leaves one copy of the producer per threshold t_k instead, each onto a grid of scale
d / 2:

    q_k = clip(round(M_k (acc + B_k)), 0, 2) = 2 1[acc > t_k],   B_k = -floor(t_k),  M_k = 2 (1 + k / 16)

(acc + B_k an integer, so any rounding gives the same q_k; the M_k differ so that the converter keeps n
convolutions), and ADDs them on grids of the same scale, the last on the threshold's grid: the level is
d sum_k 1[acc > t_k], exact in every arithmetic (the sum's codes are integers).

The logits: a linear Dense layer that computes the model's output from a threshold's codes (multiples of m
above the zero point) gets kernel and bias grids on which its requantization rounds alike in every arithmetic
(``keras_ftprop.deploy.logits``): channel c's kernel on s_c = s_out / (n_c s_in m), so that M_c = 1 / (m n_c),
and its bias on the residue mod m that keeps every accumulator at least (m - 1) / 2 units from a rounding
boundary (one grid for every channel on a converter that quantizes a dense kernel per tensor, as TensorFlow's
before 2.17 do); the quantization-aware copy computes the same code from integers. ``report.logits`` says
whether the converter kept those grids.

No GREATER or SELECT_V2 is left at a fused site. Sites that cannot be fused are listed, with the reason,
in ``report.unfused``: the first layer (its input is the image), a residual sum, a batch norm with a
negative scale behind a max pool, a staircase whose lowest level is not 0. They compare their pinned int8
input code q (thresholds at codes c_k): on a 4-D input with one 1x1 depthwise convolution whose
requantization rounds between c_k and c_k + 1 (``export_layers.requantized_compare``; one code per level and a
LEAKY_RELU onto the grid for a staircase), elsewhere with GREATER + SELECT_V2; both are the same function
of q.
"""

from keras_ftprop.deploy.export import to_tflite
from keras_ftprop.deploy.export_layers import REWRITES
from keras_ftprop.deploy.flatbuffer import inspect_tflite
from keras_ftprop.deploy.fusion import FusedThreshold, fused_thresholds
from keras_ftprop.deploy.grids import MIN_COMPARE_SCALE, STEP_INPUT_BITS, exact_output_range
from keras_ftprop.deploy.qat import quantization_aware
from keras_ftprop.deploy.report import ExportReport, TFLiteExport

__all__ = ["to_tflite", "quantization_aware", "inspect_tflite", "exact_output_range", "fused_thresholds",
           "FusedThreshold", "ExportReport", "TFLiteExport", "REWRITES", "STEP_INPUT_BITS", "MIN_COMPARE_SCALE"]
