"""training.data.load (the package's ``__init__``): the spec and argument checks."""


import pytest

from training import data


def test_dataset_names():
    assert data.dataset_names() == ("digits", "<tfds name>", "folder:PATH", "idx:DIR")


def test_bad_arguments():
    with pytest.raises(data.DatasetError, match="batch_size"):
        data.load("digits", batch_size=0)
    with pytest.raises(data.DatasetError, match="image_size"):
        data.load("digits", batch_size=4, image_size=-1)
    with pytest.raises(data.DatasetError, match="missing path"):
        data.load("folder:", batch_size=4)
