"""training.data.idx: IDX files made here, plain and gzipped."""

import os

import numpy as np
import pytest

from tests.training.data.helpers import (
    batches,
    denormalize,
    find_window,
    idx_bytes,
    make_idx,
    write_idx,
)
from training import data


def test_idx_train_images_are_padded_crops_without_flip(tmp_path):
    arrays = make_idx(str(tmp_path), train=12, side=8)
    train, _, info = data.load(f"idx:{tmp_path}", batch_size=12, seed=0)
    recipe_pad = 1  # p = max(1, round(8 / 8))
    mean, std = data.channel_stats(arrays["train"][0])
    x, y = batches(train)
    sources = np.pad(arrays["train"][0][..., None].repeat(3, -1).astype(np.float64),
                     [(0, 0), (recipe_pad,) * 2, (recipe_pad,) * 2, (0, 0)])
    for image, label in zip(denormalize(x, mean, std), y):
        found = find_window(image, sources, 8, atol=1e-3)
        assert found is not None
        index, (_, _, mirrored) = found
        assert not mirrored or np.allclose(image, image[:, ::-1], atol=1e-3)
        assert label == arrays["train"][1][index]
    assert info.image_shape == (8, 8, 3)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_idx_load(tmp_path, gz):
    arrays = make_idx(str(tmp_path), gz=gz)
    train, evaluation, info = data.load(f"idx:{tmp_path}", batch_size=8, seed=0)
    assert info.num_classes == 5 and info.image_shape == (10, 10, 3)
    assert (info.train_examples, info.eval_examples) == (30, 12)
    assert sum(1 for _ in train) == 3
    x, y = batches(evaluation)
    images, labels = arrays["t10k"]
    mean, std = data.channel_stats(arrays["train"][0])
    expected = (images[..., None].repeat(3, -1) / 255.0 - mean) / std
    np.testing.assert_allclose(x, expected, atol=1e-5)
    assert np.array_equal(y, labels)


def test_idx_prefixed_names_and_ambiguity(tmp_path):
    make_idx(str(tmp_path), prefix="emnist-balanced-", test_name="test", dot=True, gz=True)
    _, _, info = data.load(f"idx:{tmp_path}", batch_size=8)
    assert info.train_examples == 30
    make_idx(str(tmp_path), prefix="emnist-digits-", test_name="test")
    with pytest.raises(data.DatasetError, match="several IDX sets"):
        data.load(f"idx:{tmp_path}", batch_size=8)


def test_read_idx_types_and_errors(tmp_path):
    ints = np.arange(6, dtype=">i4").reshape(2, 3)
    path = write_idx(str(tmp_path / "ints"), ints)
    assert np.array_equal(data.read_idx(path), ints)
    floats = np.linspace(0, 1, 4).astype(">f4")
    assert np.array_equal(data.read_idx(write_idx(str(tmp_path / "f"), floats, gz=True)), floats)
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(data.DatasetError, match="not an IDX file"):
        data.read_idx(str(bad))
    bad.write_bytes(idx_bytes(np.zeros((2, 3, 3), np.uint8))[:-1])
    with pytest.raises(data.DatasetError, match="truncated"):
        data.read_idx(str(bad))
    bad.write_bytes(b"\x00\x00\x07\x01\x00\x00\x00\x01\x00")
    with pytest.raises(data.DatasetError, match="unknown IDX element type"):
        data.read_idx(str(bad))


def test_idx_malformed_sets(tmp_path):
    with pytest.raises(data.DatasetError, match="directory not found"):
        data.load(f"idx:{tmp_path / 'absent'}", batch_size=4)
    make_idx(str(tmp_path))
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(data.DatasetError, match="missing t10k-labels-idx1-ubyte"):
        data.load(f"idx:{tmp_path}", batch_size=4)
    write_idx(str(tmp_path / "t10k-labels-idx1-ubyte"), np.zeros(11, np.uint8))
    with pytest.raises(data.DatasetError, match="has 12 images but .* has 11 labels"):
        data.load(f"idx:{tmp_path}", batch_size=4)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"garbage!")
    with pytest.raises(data.DatasetError, match="not an IDX file"):
        data.load(f"idx:{tmp_path}", batch_size=4)
