"""The export plan: what the int8 export changes in the model before converting it.

    fused     thresholds computed by their producer's requantization (``fusion``), the others with the reason
    compared  unfused steps and staircases decided on their producer's exact accumulator
              (``fusion.accumulator_compares``); a staircase there is fused, as one requantization, where
              ``input_staircases`` places every channel and its batch norm reads the convolution directly
              (``fusion.decided_in_producer``, as the quantization-aware copy needs)
    max_abs   each pinned threshold input's calibrated max |x| (a quantization-aware copy's recorded one)
    scaled    producers whose weights scale a step's input to max |x| = 2**STEP_INPUT_BITS
    folded    batch norms folded into their producer
    logits    the output layer whose int8 codes are made the same in every arithmetic (``logits``)
"""

from __future__ import annotations

import dataclasses
import warnings

import keras

from keras_ftprop import layers as ftprop_layers
from keras_ftprop.deploy.calibration import calibrate, max_abs_of
from keras_ftprop.deploy.fused_weights import NotFusable, fused_weights
from keras_ftprop.deploy.fusion import accumulator_compares, decided_in_producer, fused_thresholds
from keras_ftprop.deploy.graph import folded_batch_norms, graph, only_input, scalable_producer, sole_input
from keras_ftprop.deploy.grids import STEP_INPUT_BITS
from keras_ftprop.deploy.logits import LogitSite, coarse_grid, logit_site, on_grid, output_range
from keras_ftprop.deploy.quantized_layers import FakeQuant
from keras_ftprop.deploy.thresholds import is_threshold, thresholds_of


@dataclasses.dataclass
class Plan:
    """What the export changes: threshold input ranges, producers to scale, fused thresholds, folded batch norms."""

    max_abs: dict  # {threshold: max |input| it is pinned by}
    scale_producers: dict  # {producer: factor}
    fused: dict  # {threshold: FusedThreshold}
    unfused: dict  # {threshold: reason}
    folded: dict  # {batch norm: producer}
    requantize: bool = True  # unfused thresholds as a depthwise requantization where they can be
    compared: dict = dataclasses.field(default_factory=dict)  # {threshold: FusedThreshold} on its accumulator
    logits: LogitSite | None = None  # the output layer made exact (``keras_ftprop.deploy.logits``)
    logit_range: tuple | None = None  # its output's int8 [min, max]
    pin_logits: bool = False  # the export adds the fake quant of logit_range (a copy has its own)
    logit_note: str = ""  # why the logits are not made exact

    @property
    def logit_scale(self):
        """s_out of ``logit_range`` (256 codes)."""
        return (self.logit_range[1] - self.logit_range[0]) / 255.0


def plan(model, recorded, batches, int8, pinned, fuse, staircases=True):
    """The Plan of the export of functional ``model`` (each layer called once).

    ``recorded``: {threshold: (max_abs, scaled, fused)} of a quantization-aware copy, which the export follows;
    ``batches``: calibration inputs; ``pinned``: pin the thresholds' inputs; ``fuse``: fuse thresholds;
    ``staircases``: decide unfusable staircases on their producer's accumulator (``to_tflite``'s
    ``exact_input_staircases``).
    """
    producers, consumers = graph(model)
    targets = [layer for layer in model.layers if is_threshold(layer)]
    fused, unfused = _fusion(model, recorded, int8, fuse)
    compared = {}
    if int8 and pinned:  # with or without fusion: only the producer's weights change
        roundings = [layer for layer in model.layers if isinstance(layer, FakeQuant)
                     and isinstance(producers.get(id(only_input(layer))), keras.layers.InputLayer)]
        input_range = ((roundings[0].minimum, roundings[0].maximum) if roundings  # a quantization-aware copy's
                       else calibrate(model, [], batches)[0])
        compared = accumulator_compares(model, fused, input_range, [layer.name for layer in roundings],
                                        staircases=staircases)
        compared = {name: site for name, site in compared.items() if recorded.get(name, (0, 0, True))[2]
                    and (fuse or not isinstance(model.get_layer(name), ftprop_layers.Staircase))}
    if int8:
        _warn_unrounded_staircases(model, recorded, {**fused, **compared}, unfused)
        _check_recorded(recorded, fused, compared, unfused)
    for name, site in list(compared.items()):
        if isinstance(model.get_layer(name), ftprop_layers.Staircase):
            try:  # one requantization where every channel can be placed (``input_staircases``), and where a
                # quantization-aware copy places it too (``ExactStaircaseConv2D``)
                if not decided_in_producer(model, site, producers):
                    raise NotFusable(f"batch norm {site.batch_norm!r} does not read {site.producer!r} directly, "
                                     "as a quantization-aware copy's one layer must")
                fused_weights(model, site)
            except NotFusable as reason:
                unfused[name] += (f"; decided on its exact accumulator ({reason}), one copy of its producer per "
                                  "threshold (q_k = clip(round(2 (acc - floor(t_k))), 0, 2)) summed by ADD")
            else:
                fused[name] = site
                del compared[name], unfused[name]
        else:
            unfused[name] += "; decided on its exact accumulator (q = round(2 (acc - floor(t))) > 0)"
    max_abs = {}
    if int8 and pinned and targets:
        max_abs = _pinned_max_abs(model, targets, consumers, {**fused, **compared}, recorded, batches)
    max_abs, scale_producers = _scaled_inputs(targets, max_abs, recorded, producers, consumers)
    max_abs.update({name: 2.0**STEP_INPUT_BITS for name in compared  # pinned to [-128/127, 1], scale 1/127
                    if not isinstance(model.get_layer(name), ftprop_layers.Staircase)})
    folded = folded_batch_norms(model, producers, consumers)
    for site in (*fused.values(), *compared.values()):  # the export folds these itself
        if site.batch_norm is not None:
            folded[site.batch_norm] = site.producer
    logits, logit_range, pin_logits, logit_note = _logits(model, batches) if int8 else (None, None, False, "")
    return Plan(max_abs, scale_producers, fused, unfused, folded, requantize=fuse, compared=compared,
                logits=logits, logit_range=logit_range, pin_logits=pin_logits, logit_note=logit_note)


def _logits(model, batches):
    """(LogitSite or None, its output range, whether the export pins it, why not exact): a quantization-aware
    copy's output is its fake quant's, whose range the export keeps; otherwise the calibrated one."""
    producers, _ = graph(model)
    last = producers.get(id(model.outputs[0]))
    if isinstance(last, FakeQuant):
        site, why = logit_site(model, only_input(last))
        grid = (last.minimum, last.maximum)
        if site is not None:
            layer = model.get_layer(site.producer)
            if not on_grid(layer.kernel, layer.bias, site, (grid[1] - grid[0]) / 255.0):
                site, why = None, "the quantization-aware copy computes them as a plain requantization"
        return site, grid, False, why or ""
    site, why = logit_site(model)
    if site is None:
        return None, None, False, why
    kernel = model.get_layer(site.producer).kernel.numpy()
    _, ((low, high),) = calibrate(model, [model.outputs[0]], batches)
    grid = output_range(low, high, kernel, site)
    why = coarse_grid(kernel, site, (grid[1] - grid[0]) / 255.0)
    return (None, None, False, why) if why else (site, grid, True, "")


def _fusion(model, recorded, int8, fuse):
    """({threshold: FusedThreshold}, {threshold: why not}) of the export: ``fused_thresholds``, none if not
    ``fuse``, and for a quantization-aware copy the thresholds it was made to fuse."""
    fused, unfused = fused_thresholds(model) if int8 else ({}, {})
    if not fuse:
        unfused.update({name: "fuse_thresholds=False" for name in fused})
        fused = {}
    for name, (_, _, was_fused) in (recorded.items() if int8 else ()):  # the export follows the copy
        if not was_fused and name in fused:
            unfused[name] = "the quantization-aware model compares it with GREATER"
            del fused[name]
    return fused, unfused


def _warn_unrounded_staircases(model, recorded, exact, unfused):
    """Warn of (and note in ``unfused``) each quantization-aware staircase made to be decided unrounded that the
    export decides neither fused nor on its accumulator (``exact``), but with GREATER."""
    for name, (_, _, was_fused) in recorded.items():
        if was_fused and name not in exact and isinstance(model.get_layer(name), ftprop_layers.Staircase):
            unfused[name] = (f"{unfused.get(name)}; the quantization-aware model compares it unrounded, so a unit "
                             "within half an input code of a threshold may differ")
            # stacklevel: this function, plan, to_tflite, its caller
            warnings.warn(f"quantization-aware staircase {name!r} was made to be fused, and the export compares "
                          f"it with GREATER instead ({unfused[name]})", stacklevel=4)


def _check_recorded(recorded, fused, compared, unfused):
    """A ValueError if a quantization-aware step was made to be decided unrounded (fused, or on its
    accumulator) and the export does neither (a staircase only warns, ``_warn_unrounded_staircases``)."""
    for name, (_, _, was_fused) in recorded.items():
        if was_fused and name in unfused and name not in compared and "compares it unrounded" not in unfused[name]:
            raise ValueError(f"quantization-aware threshold {name!r} was made to be fused into its producer's "
                             f"requantization, and the export does not fuse it ({unfused[name]})")


def _pinned_max_abs(model, targets, consumers, fused, recorded, batches):
    """{threshold: calibrated max |input|} of each unfused threshold in ``targets`` whose input no other layer
    reads (pinning saturates the tensor); a quantization-aware copy's recorded value where it has one."""
    pinnable = [layer for layer in targets if layer.name not in fused and sole_input(layer, consumers) is not None]
    _, ranges = calibrate(model, [layer.input for layer in pinnable], batches)
    max_abs = dict(zip((layer.name for layer in pinnable), max_abs_of(ranges)))
    missing = {name for name, (_, _, was_fused) in recorded.items() if not was_fused} - set(max_abs)
    if missing:
        raise ValueError(f"quantization-aware threshold(s) {sorted(missing)} cannot be pinned in the export")
    max_abs.update({name: value for name, (value, _, _) in recorded.items() if name in max_abs})
    return max_abs


def _scaled_inputs(targets, max_abs, recorded, producers, consumers):
    """(``max_abs`` with each scaled step's value scaled, {producer: factor k}).

    A step's sign survives a positive scale of its input: where the producer's weights can carry it, the input
    is scaled by ``k = 2**STEP_INPUT_BITS / max|x|`` and pinned to [-128/127, 1] (scale 1/127, fine enough for
    GREATER's rescaling); elsewhere it is pinned at MIN_COMPARE_SCALE or finer.
    """
    max_abs, scale_producers = dict(max_abs), {}
    for layer in targets:
        if layer.name not in max_abs or thresholds_of(layer) != [0.0]:
            continue
        producer = scalable_producer(layer, producers, consumers)
        scaled = producer is not None and max_abs[layer.name] > 0
        if layer.name in recorded and recorded[layer.name][1] != scaled:
            raise ValueError(f"quantization-aware threshold {layer.name!r} was made for an input "
                             f"{'' if recorded[layer.name][1] else 'not '}scaled through its producer's "
                             "weights, and the export finds otherwise")
        if scaled:
            factor = 2.0**STEP_INPUT_BITS / max_abs[layer.name]
            scale_producers[producer.name] = factor
            max_abs[layer.name] *= factor
    return max_abs, scale_producers
