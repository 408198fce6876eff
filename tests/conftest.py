"""Test-session setup shared by every test module.

The CPU is split into two logical devices before TensorFlow initialises its
runtime, so that ``tf.distribute.MirroredStrategy`` can be tested on a machine
without accelerators. Single-device code is unaffected: ops are placed on the
first device by default.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
)
