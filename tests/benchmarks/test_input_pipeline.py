"""benchmarks/input_pipeline.py: in-graph counting, the interleaved medians and the stage costs."""

import tensorflow as tf

from benchmarks import input_pipeline
from training import data


def test_counter_counts_images_of_batched_and_unbatched_pipelines():
    images = tf.data.Dataset.from_tensor_slices(tf.zeros([10, 4, 4, 3]))
    batched = tf.data.Dataset.zip((images, tf.data.Dataset.range(10))).batch(4)
    assert int(input_pipeline.counter(images, batched=False)()) == 10
    assert int(input_pipeline.counter(batched, batched=True)()) == 10


def test_pipelines_and_stage_costs_on_small_jpegs(tmp_path):
    files = input_pipeline.write_tree(str(tmp_path), count=8, height=40, width=60, classes=2)
    assert len(files) == 8
    train, _, _ = data.load(f"folder:{tmp_path}", batch_size=4, seed=0, image_size=32)
    rates = input_pipeline.interleaved_medians(
        {"bare": (input_pipeline.bare_pipeline(files), False), "train": (train, True)}, repeats=1)
    assert set(rates) == {"bare", "train"}
    assert all(rate > 0 and cpu >= 0 for rate, cpu in rates.values())
    costs = input_pipeline.stage_costs(files[0], data.large_recipe(image_size=32), calls=2, repeats=1)
    assert len(costs) == 5 and all(cost >= 0 for cost in costs.values())
