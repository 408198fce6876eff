"""The export report: flash size, TFLite Micro arena, ops by type and dtype, what each threshold became,
and its tensors."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from keras_ftprop import layers as ftprop_layers
from keras_ftprop import micro
from keras_ftprop.deploy.flatbuffer import activation_tensors, kernel_scales
from keras_ftprop.deploy.fusion import FusedThreshold
from keras_ftprop.deploy.grids import output_range_of
from keras_ftprop.deploy.logits import bias_error, logit_weights
from keras_ftprop.deploy.rewrite import compared_staircase_names, fused_output_name, requantized_name
from keras_ftprop.deploy.thresholds import levels_of


@dataclasses.dataclass
class ExportReport:
    """What ``to_tflite`` produced: flash (flatbuffer) bytes, TFLite Micro arena bytes, ops by (type, output
    dtype), rewritten and folded layers."""

    quantize: str
    size_bytes: int  # the flatbuffer: the flash a microcontroller stores it in
    ops: dict  # {(op name, output dtype): count}
    rewritten: dict  # {layer name: description}
    folded: dict  # {batch-norm layer name: layer it folds into}
    activation_tensors: dict = dataclasses.field(default_factory=dict)  # {layer: (input, output) tensor names}
    fused: dict = dataclasses.field(default_factory=dict)  # {threshold: producer whose requantization computes it}
    unfused: dict = dataclasses.field(default_factory=dict)  # {threshold: why it is not fused}
    arena_bytes: int | None = None  # TFLite Micro's recording allocator, one inference (micro.arena_bytes)
    arena_note: str = ""  # why arena_bytes is None
    logits: str = ""  # whether the output layer's codes are the same in every arithmetic, and why

    @property
    def op_counts(self):
        """{op name: count}, over every output dtype."""
        counts = collections.Counter()
        for (name, _), count in self.ops.items():
            counts[name] += count
        return dict(counts)

    def __str__(self):
        arena = f"{self.arena_bytes:,} bytes" if self.arena_bytes is not None else self.arena_note
        lines = [f"TFLite {self.quantize} model: {self.size_bytes:,} bytes of flash, TFLite Micro arena {arena}"]
        lines.append("ops: " + ", ".join(f"{name} {dtype.lower()} x{count}"
                                         for (name, dtype), count in sorted(self.ops.items())))
        for name, what in self.rewritten.items():
            lines.append(f"rewritten {name}: {what}")
        for name, into in self.folded.items():
            lines.append(f"folded {name} into {into}")
        for name, why in self.unfused.items():
            lines.append(f"not fused {name}: {why}")
        if self.logits:
            lines.append(f"logits: {self.logits}")
        return "\n".join(lines)


class TFLiteExport(bytes):
    """The TFLite flatbuffer (``bytes``), with its ``report``
    (an [`ExportReport`][keras_ftprop.deploy.ExportReport])."""

    report: ExportReport


def report(graph, flatbuffer, quantize, model, plan, rewritten, split):
    """The ExportReport of ``flatbuffer`` (read as ``graph``, ``inspect_tflite``'s), exported from ``model``
    by ``plan``; ``rewritten``: {threshold: its ExportThreshold or FusedThreshold}, ``split``: {layer: how
    the export split it}."""
    ops = collections.Counter()
    for op in graph["ops"]:
        ops[(op["op"], op["outputs"][0]["dtype"] if op["outputs"] else "-")] += 1
    tensors = {}
    for name in rewritten:
        site = plan.fused.get(name)
        # A fused threshold's output: that of the last op from the producer to the threshold.
        fused_layers = None if site is None else [site.producer, fused_output_name(name), requantized_name(name),
                                                  *site.between]
        if name in plan.compared and isinstance(model.get_layer(name), ftprop_layers.Staircase):
            site = plan.compared[name]
            fused_layers = [*compared_staircase_names(site, model.get_layer(name).steps), *site.between]
        tensors[name] = activation_tensors(graph, name, fused_layers)
    described = {name: (_describe_fused(site, model.get_layer(name)) if name in plan.fused
                        else _describe_compared(site, model.get_layer(name)) if isinstance(site, FusedThreshold)
                        else _describe(site))
                 for name, site in rewritten.items()}
    arena, arena_note = measured_arena(flatbuffer)
    return ExportReport(quantize=quantize, size_bytes=len(flatbuffer), ops=dict(ops), rewritten={**split, **described},
                        folded=plan.folded, activation_tensors=tensors,
                        fused={name: site.producer for name, site in plan.fused.items()},
                        unfused=dict(plan.unfused), arena_bytes=arena, arena_note=arena_note,
                        logits=_describe_logits(graph, model, plan) if quantize == "int8" else "")


def _describe_logits(graph, model, plan):
    """Whether the converter kept the exact logits' per-channel kernel scales s_c (``logits``)."""
    site = plan.logits
    if site is None:
        return f"a plain requantization ({plan.logit_note})"
    layer = model.get_layer(site.producer)
    _, _, _, want, bias_codes, steps = logit_weights(layer.kernel, layer.bias, site.input_scale, site.input_step,
                                                     plan.logit_scale)
    error = bias_error(bias_codes, site.input_step)
    if error:
        return f"a plain requantization: {site.producer!r} has {error}"
    got = kernel_scales(graph, site.producer)
    if got is None or len(got) not in (1, len(want)) or not np.allclose(got, want, rtol=1e-5, atol=0):
        return f"a plain requantization: the converter quantized {site.producer!r}'s kernel on other scales"
    steps = np.asarray(steps)
    return (f"the same codes in every arithmetic: {site.producer!r} requantized by M_c = 1 / (m n_c), "
            f"kernel {'per channel' if len(got) > 1 else 'per tensor'}, "
            f"m = {site.input_step}, n_c in [{int(steps.min())}, {int(steps.max())}], bias codes = "
            f"floor((m n_c + m) / 2) mod m")


def measured_arena(flatbuffer):
    """(``micro.arena_bytes(flatbuffer)``, "") or (None, why it was not measured)."""
    try:
        return micro.arena_bytes(flatbuffer), ""
    except ImportError:
        return None, "not measured: the tflite-micro package is not installed (pip install 'keras-ftprop[deploy]')"
    except RuntimeError as error:
        return None, f"not measured: {error}"


def _describe_fused(site, threshold):
    levels, _ = levels_of(threshold)
    low, high = output_range_of(threshold)
    clamp = "RELU_N1_TO_1" if levels[0] == -1.0 else "RELU"
    grid = f"[{low:.6g}, {high:.6g}]"
    output = (f", one code per level, requantized onto {grid}" if isinstance(threshold, ftprop_layers.Staircase)
              else f"; output range pinned to {grid}")
    return (f"fused into the requantization of {site.producer!r}"
            + (f" (batch norm {site.batch_norm!r} folded)" if site.batch_norm else "")
            + f", levels {_fmt(levels)}, clamped by {clamp}{output}")


def _describe_compared(site, threshold):
    low, high = output_range_of(threshold)
    return (f"decided on the exact accumulator of {site.producer!r}"
            + (f" (batch norm {site.batch_norm!r} folded)" if site.batch_norm else "")
            + f": one copy per threshold, 2 1[acc > t_k] each, summed by ADD onto [{low:.6g}, {high:.6g}], "
            f"levels {_fmt(levels_of(threshold)[0])}")


def _describe(layer):
    how = "GREATER + SELECT_V2"
    if layer.requantized is not None and len(layer.output.shape) == 4:  # other ranks keep the selects
        how = "a 1x1 depthwise requantization" + (" + LEAKY_RELU" if layer.requantized[3] else "")
    what = f"{len(layer.thresholds)} threshold(s) as {how}, levels {_fmt(layer.levels)}"
    if layer.output_range is not None:
        low, high = layer.output_range
        what += f"; output range pinned to [{low:.6g}, {high:.6g}] (scale {(high - low) / 255:.6g})"
    if layer.input_range is not None:
        low, high = layer.input_range
        what += f"; input range pinned to [{low:.4g}, {high:.4g}]"
    return what


def _fmt(values):
    if len(values) > 4:
        return f"{{{values[0]:.4g}, {values[1]:.4g}, ..., {values[-1]:.4g}}}"
    return "{" + ", ".join(f"{v:.4g}" for v in values) + "}"
