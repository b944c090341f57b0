import pickle
import tarfile
import urllib.error

import numpy as np
import pytest
import torch
from tiny_cifar import write_tiny_cifar

from int8lab import DatasetUnavailableError, load_data
from int8lab import data as data_module


def test_digits_batches_have_the_lab_shapes_and_range(digits_loaders):
    train_loader, test_loader = digits_loaders
    images, labels = next(iter(train_loader))
    assert images.shape[1:] == (1, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    all_train = train_loader.dataset.tensors[0]
    assert all_train.min() >= -1.0 and all_train.max() <= 1.0
    # Both ends of the range are used: a [0, 1] scaling or a missing offset would fail here.
    assert all_train.min() == -1.0 and all_train.max() > 0.9
    assert len(train_loader.dataset) + len(test_loader.dataset) == 1797
    assert len(test_loader.dataset) == 360


def test_digits_split_is_fixed_across_calls():
    first_train, first_test = load_data("digits", batch_size=16)
    second_train, second_test = load_data("digits", batch_size=16)
    assert torch.equal(first_test.dataset.tensors[0], second_test.dataset.tensors[0])
    assert torch.equal(next(iter(first_train))[1], next(iter(second_train))[1])


def test_unknown_dataset_is_named_in_the_error():
    with pytest.raises(ValueError, match="mnist"):
        load_data("mnist")


def test_cifar_reader_decodes_the_tiny_archive(tmp_path):
    batches = write_tiny_cifar(tmp_path)
    train_loader, test_loader = load_data("cifar10", batch_size=4, root=tmp_path)
    assert len(train_loader.dataset) == 15 and len(test_loader.dataset) == 3
    images, labels = test_loader.dataset.tensors
    assert images.shape == (3, 3, 32, 32)
    # Channel-major order: the first 1024 bytes of a row are the red plane.
    expected_red = batches["test_batch"][b"data"][0, :1024].reshape(32, 32) / 255.0 * 2 - 1
    np.testing.assert_allclose(images[0, 0].numpy(), expected_red, atol=1e-6)
    assert labels.tolist() == batches["test_batch"][b"labels"]


def test_cifar_reader_accepts_the_extracted_folder(tmp_path):
    write_tiny_cifar(tmp_path)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz") as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    train_loader, _ = load_data("cifar10", root=tmp_path / "extracted")
    assert len(train_loader.dataset) == 15


def test_cifar_offline_error_names_the_folder_and_the_digits_fallback(tmp_path):
    with pytest.raises(DatasetUnavailableError) as error:
        load_data("cifar10", root=tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message and "cifar-10-python.tar.gz" in message
    assert 'name="digits"' in message


def test_cifar_failed_download_keeps_nothing_and_explains(tmp_path, monkeypatch):
    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(data_module.urllib.request, "urlopen", offline)
    with pytest.raises(DatasetUnavailableError, match='name="digits"'):
        load_data("cifar10", root=tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []


def test_cifar_reader_refuses_pickled_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(pickle.dumps(print))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_data("cifar10", root=tmp_path)


def test_prepared_digits_are_cached_and_read_back_identically(tmp_path, monkeypatch):
    monkeypatch.setenv("INT8LAB_CACHE", str(tmp_path))
    data_module._digits_tensors.cache_clear()
    try:
        first = data_module._digits_tensors()
        assert list((tmp_path / "data").glob("digits-*.npz"))
        data_module._digits_tensors.cache_clear()
        monkeypatch.setattr(data_module, "_prepare_digits", lambda: pytest.fail("prepared again despite the cache"))
        second = data_module._digits_tensors()
        for a, b in zip(first, second, strict=True):
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    finally:
        data_module._digits_tensors.cache_clear()


def test_one_setting_chooses_the_dataset(monkeypatch, tmp_path):
    monkeypatch.delenv(data_module.DATASET_ENV, raising=False)
    assert data_module.dataset_name() == "digits"
    monkeypatch.setenv(data_module.DATASET_ENV, "cifar10")
    monkeypatch.setenv("INT8LAB_CACHE", str(tmp_path))
    write_tiny_cifar(tmp_path / "cifar10")
    train_loader, _ = load_data()  # no name: the setting decides
    assert train_loader.dataset.tensors[0].shape[1] == 3
    monkeypatch.setenv(data_module.DATASET_ENV, "mnist")
    with pytest.raises(ValueError, match="INT8LAB_DATASET='mnist'.*digits, cifar10"):
        load_data()
