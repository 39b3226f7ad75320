"""Dataset loaders: tiny files in the real on-disk formats, written by `fakedata`, never a download."""

from __future__ import annotations

import builtins
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from fakedata import write_cifar10, write_cifar100, write_imagefolder, write_mnist
from prunecli.data import Augment, DatasetSpec, TensorSplit, dataset_description, get_dataset, list_datasets
from prunecli.errors import PruneCliError

CIFAR = {
    # name: (writer, folder, train files, label key, classes, mean, std)
    "cifar10": (write_cifar10, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "labels", 10,
                (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": (write_cifar100, "cifar-100-python", ["train"], "fine_labels", 100,
                 (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
MNIST = {
    # name: (torchvision folder, mean, std)
    "mnist": ("MNIST", (0.1307,), (0.3081,)),
    "fashion-mnist": ("FashionMNIST", (0.2860,), (0.3530,)),
}


def _trusted_batch(path) -> dict:
    """A batch we wrote ourselves, read with plain pickle to get the expected values."""
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}


def test_registry_lists_every_family_with_a_description():
    names = list_datasets()
    for name in ("digits", "synthetic", "cifar10", "cifar100", "mnist", "fashion-mnist", "imagefolder", "imagenet"):
        assert name in names
        assert dataset_description(name)


# --------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_loads_fake_files_with_exact_pixels_and_spec(tmp_path, name):
    writer, folder, train_files, label_key, classes, mean, std = CIFAR[name]
    root = writer(tmp_path, n_train=50, n_test=20)
    bundle = get_dataset(name, root=root)

    train, test = bundle.train, bundle.test
    assert isinstance(train, TensorSplit) and isinstance(test, TensorSplit)
    assert train.images.shape == (50, 3, 32, 32) and test.images.shape == (20, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert 0 <= int(train.labels.min()) and int(train.labels.max()) < classes
    assert bundle.spec == DatasetSpec(name, classes, 3, 32, mean, std, root=str(tmp_path.resolve()))
    assert bundle.augment == Augment(crop_padding=4, hflip=True)

    # exact round trip, in CIFAR's row layout: 1024 R, then 1024 G, then 1024 B values
    first = _trusted_batch(tmp_path / folder / train_files[0])
    row = first["data"][0]
    for c in range(3):
        assert np.array_equal(train.images[0, c].numpy(), row[c * 1024 : (c + 1) * 1024].reshape(32, 32))
    assert train.images[0, 2, 5, 7] == row[2 * 1024 + 5 * 32 + 7]
    # batches are concatenated in order, labels follow their images
    expected = np.concatenate([_trusted_batch(tmp_path / folder / f)["data"] for f in train_files])
    labels = np.concatenate([_trusted_batch(tmp_path / folder / f)[label_key] for f in train_files])
    assert np.array_equal(train.images.reshape(50, -1).numpy(), expected)
    assert np.array_equal(train.labels.numpy(), labels)
    test_batch = _trusted_batch(tmp_path / folder / ("test_batch" if name == "cifar10" else "test"))
    assert np.array_equal(test.images.reshape(20, -1).numpy(), test_batch["data"])


def test_cifar10_agrees_with_torchvision_reader(tmp_path, monkeypatch):
    """torchvision's own CIFAR10 class (md5 check disabled) reads the same images and labels."""
    import torchvision.datasets as tvd
    import torchvision.datasets.cifar as tv_cifar

    root = write_cifar10(tmp_path)
    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    reference = tvd.CIFAR10(str(root), train=True, download=False)
    ours = get_dataset("cifar10", root=root).train
    assert np.array_equal(ours.images.permute(0, 2, 3, 1).numpy(), reference.data)  # torchvision keeps HWC
    assert ours.labels.tolist() == reference.targets


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_python3_pickles_load_the_same(tmp_path, protocol):
    """The official archive holds Python 2 pickles; batches re-saved by Python 3 load too."""
    py2 = get_dataset("cifar10", root=write_cifar10(tmp_path / "py2"))
    py3 = get_dataset("cifar10", root=write_cifar10(tmp_path / "py3", pickle_protocol=protocol))
    assert torch.equal(py2.train.images, py3.train.images) and torch.equal(py2.test.labels, py3.test.labels)


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_data_may_point_at_the_batch_folder(tmp_path, name):
    writer, folder = CIFAR[name][0], CIFAR[name][1]
    writer(tmp_path)
    inner = get_dataset(name, root=tmp_path / folder)
    outer = get_dataset(name, root=tmp_path)
    assert torch.equal(inner.train.images, outer.train.images)
    assert inner.spec.root == str((tmp_path / folder).resolve())


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_missing_data_names_where_it_looked(tmp_path, name):
    folder, train_files = CIFAR[name][1], CIFAR[name][2]
    with pytest.raises(PruneCliError) as err:
        get_dataset(name, root=tmp_path / "nowhere")
    message = str(err.value)
    assert str(tmp_path / "nowhere" / folder / train_files[0]) in message
    assert "--data" in message and "\n" not in message


def test_cifar_missing_batch_is_named(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(PruneCliError, match="data_batch_3"):
        get_dataset("cifar10", root=tmp_path)


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _OpensFile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


@pytest.mark.parametrize("payload", [_RunsShell, _OpensFile])
@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_crafted_batch_cannot_run_code(tmp_path, payload, protocol):
    write_cifar10(tmp_path)
    marker = tmp_path / "MARKER"
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(pickle.dumps({b"data": payload(marker), b"labels": [0]}, protocol=protocol))
    with pytest.raises(PruneCliError) as err:
        get_dataset("cifar10", root=tmp_path)
    assert str(batch) in str(err.value) and "refusing" in str(err.value)
    assert not marker.exists()


def _batch(data, labels) -> bytes:
    return pickle.dumps({b"data": data, b"labels": labels})


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(_truncated, id="truncated"),
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(lambda data: bytes(range(256)) * 4, id="garbage"),
        pytest.param(lambda data: pickle.dumps([1, 2, 3]), id="not-a-dict"),
        pytest.param(lambda data: _batch(np.zeros((2, 100), np.uint8), [0, 1]), id="bad-shape"),
        pytest.param(lambda data: _batch(np.zeros((2, 3072), np.uint8), [0]), id="few-labels"),
        pytest.param(lambda data: _batch(np.zeros((1, 3072), np.uint8), [10]), id="bad-label"),
        pytest.param(lambda data: _batch(np.zeros((1, 3072), np.float32), [0]), id="bad-dtype"),
        pytest.param(lambda data: pickle.dumps({b"labels": [0]}), id="no-data"),
    ],
)
def test_cifar_damaged_batch_names_the_file(tmp_path, damage):
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(damage(batch.read_bytes()))
    with pytest.raises(PruneCliError) as err:
        get_dataset("cifar10", root=tmp_path)
    assert str(batch) in str(err.value) and "\n" not in str(err.value)


def test_cifar_image_size_resizes_once_at_load(tmp_path):
    root = write_cifar10(tmp_path)
    native = get_dataset("cifar10", root=root)
    small = get_dataset("cifar10", root=root, image_size=16)
    assert small.train.images.shape == (50, 3, 16, 16) and small.train.images.dtype == torch.uint8
    assert small.test.images.shape == (20, 3, 16, 16)
    assert small.spec.image_size == 16
    assert torch.equal(small.train.labels, native.train.labels)
    # antialiased downscaling keeps each image's colour (the class signal)
    diff = (small.train.images.float().mean((2, 3)) - native.train.images.float().mean((2, 3))).abs()
    assert diff.max() < 2.0
    big = get_dataset("cifar10", root=root, image_size=40)
    assert big.train.images.shape == (50, 3, 40, 40) and big.spec.image_size == 40


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_rejects_another_class_count(tmp_path, name):
    CIFAR[name][0](tmp_path)
    with pytest.raises(PruneCliError, match="classes"):
        get_dataset(name, root=tmp_path, num_classes=7)
    assert get_dataset(name, root=tmp_path, num_classes=CIFAR[name][4]).spec.num_classes == CIFAR[name][4]


@pytest.mark.parametrize(
    "name, tv_class, writer",
    [("cifar10", "CIFAR10", write_cifar10), ("cifar100", "CIFAR100", write_cifar100), ("mnist", "MNIST", write_mnist)],
)
def test_download_goes_through_torchvision_then_our_reader(tmp_path, monkeypatch, name, tv_class, writer):
    """--download hands the fetch to torchvision (replaced here: no network) and reads the result itself."""
    import torchvision.datasets as tvd

    calls = []

    def fake_torchvision(root, train, download):
        calls.append((root, train, download))
        writer(root)

    monkeypatch.setattr(tvd, tv_class, fake_torchvision)
    bundle = get_dataset(name, root=tmp_path / "new", download=True)
    assert calls and all(c == (str((tmp_path / "new").resolve()), c[1], True) for c in calls)
    assert len(bundle.train) == (60 if name == "mnist" else 50)
    calls.clear()
    get_dataset(name, root=tmp_path / "new", download=True)  # already there: no second download
    assert calls == []


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets as tvd

    def offline(root, train, download):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tvd, "CIFAR10", offline)
    with pytest.raises(PruneCliError, match="could not download cifar10 into .*name resolution") as err:
        get_dataset("cifar10", root=tmp_path, download=True)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- MNIST


@pytest.mark.parametrize("name", MNIST)
def test_mnist_loads_fake_files_with_exact_pixels_and_spec(tmp_path, name):
    kind, mean, std = MNIST[name]
    root = write_mnist(tmp_path, kind=kind, n_train=60, n_test=20)
    bundle = get_dataset(name, root=root)

    assert bundle.train.images.shape == (60, 1, 28, 28) and bundle.test.images.shape == (20, 1, 28, 28)
    assert bundle.train.images.dtype == torch.uint8 and bundle.train.labels.dtype == torch.int64
    assert sorted(bundle.train.labels.unique().tolist()) == list(range(10))
    assert bundle.spec == DatasetSpec(name, 10, 1, 28, mean, std, root=str(tmp_path.resolve()))
    assert bundle.augment == Augment()

    raw = tmp_path / kind / "raw"
    images = (raw / "train-images-idx3-ubyte").read_bytes()
    labels = (raw / "train-labels-idx1-ubyte").read_bytes()
    assert int.from_bytes(images[:4], "big") == 2051 and int.from_bytes(labels[:4], "big") == 2049
    first = np.frombuffer(images[16 : 16 + 784], np.uint8).reshape(28, 28)  # after the 16-byte header
    assert np.array_equal(bundle.train.images[0, 0].numpy(), first)
    assert bundle.train.labels.tolist() == list(labels[8:])
    test_images = (raw / "t10k-images-idx3-ubyte").read_bytes()
    assert bundle.test.images.flatten().tolist() == list(test_images[16:])


@pytest.mark.parametrize("name", MNIST)
def test_mnist_agrees_with_torchvision_reader(tmp_path, name):
    import torchvision.datasets as tvd

    kind = MNIST[name][0]
    write_mnist(tmp_path, kind=kind)
    reference = getattr(tvd, kind)(str(tmp_path), train=False, download=False)
    ours = get_dataset(name, root=tmp_path).test
    assert torch.equal(ours.images[:, 0], reference.data) and torch.equal(ours.labels, reference.targets)


@pytest.mark.parametrize("subdir", ["MNIST", "MNIST/raw"])
def test_mnist_data_may_point_at_inner_folders(tmp_path, subdir):
    write_mnist(tmp_path)
    outer = get_dataset("mnist", root=tmp_path)
    inner = get_dataset("mnist", root=tmp_path / subdir)
    assert torch.equal(outer.train.images, inner.train.images)


def test_mnist_reads_gzipped_idx_files(tmp_path):
    write_mnist(tmp_path / "plain", seed=3)
    write_mnist(tmp_path / "gz", seed=3, gzipped=True)
    assert not (tmp_path / "gz" / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()
    plain, gz = get_dataset("mnist", root=tmp_path / "plain"), get_dataset("mnist", root=tmp_path / "gz")
    assert torch.equal(plain.train.images, gz.train.images) and torch.equal(plain.test.labels, gz.test.labels)


@pytest.mark.parametrize("name", MNIST)
def test_mnist_missing_data_names_where_it_looked(tmp_path, name):
    write_mnist(tmp_path, kind="FashionMNIST" if name == "mnist" else "MNIST")  # the other one is there
    kind = MNIST[name][0]
    with pytest.raises(PruneCliError) as err:
        get_dataset(name, root=tmp_path)
    assert str(tmp_path / kind / "raw" / "train-images-idx3-ubyte") in str(err.value)
    assert "--data" in str(err.value)


def test_mnist_missing_test_file_is_named(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(PruneCliError, match="t10k-labels-idx1-ubyte"):
        get_dataset("mnist", root=tmp_path)


@pytest.mark.parametrize(
    "fname, damage, match",
    [
        ("train-images-idx3-ubyte", lambda b: b[:-100], "truncated"),
        ("train-images-idx3-ubyte", lambda b: b[:10], "truncated"),
        ("train-images-idx3-ubyte", lambda b: b + b"\0", "longer"),
        ("train-labels-idx1-ubyte", lambda b: (2051).to_bytes(4, "big") + b[4:], "magic"),
        ("train-labels-idx1-ubyte", lambda b: b[:8 - 4] + (59).to_bytes(4, "big") + b[8:-1], "labels"),
    ],
)
def test_mnist_damaged_file_names_the_file(tmp_path, fname, damage, match):
    write_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / fname
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(PruneCliError, match=match) as err:
        get_dataset("mnist", root=tmp_path)
    assert "raw" in str(err.value) and "\n" not in str(err.value)


def test_mnist_image_size_and_class_count(tmp_path):
    write_mnist(tmp_path)
    bundle = get_dataset("mnist", root=tmp_path, image_size=32)
    assert bundle.train.images.shape == (60, 1, 32, 32) and bundle.spec.image_size == 32
    with pytest.raises(PruneCliError, match="10 classes"):
        get_dataset("mnist", root=tmp_path, num_classes=5)


# --------------------------------------------------------------------------- image folders


def _sample_index(dataset, suffix: str) -> int:
    return next(i for i, (path, _) in enumerate(dataset.samples) if path.endswith(suffix))


@pytest.mark.parametrize("name", ["imagefolder", "imagenet"])
def test_imagefolder_loads_rgb_tensors_and_spec(tmp_path, name):
    root = write_imagefolder(tmp_path, classes=3, per_class=4, size=40)
    bundle = get_dataset(name, root=root, image_size=32)
    assert bundle.spec == DatasetSpec(
        name, 3, 3, 32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
        root=str(tmp_path.resolve()), options={"classes": ["class0", "class1", "class2"]},
    )
    assert bundle.augment == Augment()  # the augmentation lives in the train transform
    assert len(bundle.train) == 12 and len(bundle.test) == 12
    for split in (bundle.train, bundle.test):
        for i in range(len(split)):
            x, y = split[i]
            assert x.shape == (3, 32, 32) and x.dtype == torch.float32
            assert y == split.samples[i][1] and 0 <= y < 3
    # grayscale files come out as three equal channels once the normalisation is undone
    mean, std = torch.tensor(bundle.spec.mean)[:, None, None], torch.tensor(bundle.spec.std)[:, None, None]
    for suffix in ("class0/001.jpg", "class1/002.png"):
        x, _ = bundle.test[_sample_index(bundle.test, suffix)]
        pixels = x * std + mean
        assert torch.allclose(pixels[0], pixels[1], atol=1e-5) and torch.allclose(pixels[1], pixels[2], atol=1e-5)


def test_imagefolder_default_size_is_224(tmp_path):
    bundle = get_dataset("imagefolder", root=write_imagefolder(tmp_path, classes=2, per_class=1))
    assert bundle.spec.image_size == 224 and bundle.test[0][0].shape == (3, 224, 224)


def test_imagefolder_test_transform_is_exact_resize_and_centre_crop(tmp_path):
    """image_size 35: resize to int(35 * 256 / 224) = 40 (the file's size, so a no-op), centre-crop 35."""
    from PIL import Image

    root = write_imagefolder(tmp_path, classes=2, per_class=2, size=40)
    bundle = get_dataset("imagefolder", root=root, image_size=35)
    x, y = bundle.test[_sample_index(bundle.test, "class1/000.png")]
    pixels = np.asarray(Image.open(root / "val" / "class1" / "000.png").convert("RGB"), np.float32) / 255
    top = int(round((40 - 35) / 2))
    crop = torch.from_numpy(pixels[top : top + 35, top : top + 35]).permute(2, 0, 1)
    mean, std = torch.tensor(bundle.spec.mean)[:, None, None], torch.tensor(bundle.spec.std)[:, None, None]
    assert y == 1 and torch.allclose(x, (crop - mean) / std, atol=1e-5)


def test_imagefolder_datasets_pickle_for_dataloader_workers(tmp_path):
    bundle = get_dataset("imagefolder", root=write_imagefolder(tmp_path), image_size=16)
    for split in (bundle.train, bundle.test):
        clone = pickle.loads(pickle.dumps(split))
        assert clone[0][0].shape == (3, 16, 16) and clone.classes == split.classes


def test_imagefolder_class_mismatch_names_the_difference(tmp_path):
    write_imagefolder(tmp_path, classes=["cat", "dog", "eel"], splits=("train",))
    write_imagefolder(tmp_path, classes=["cat", "dog", "fox"], splits=("val",))
    with pytest.raises(PruneCliError) as err:
        get_dataset("imagefolder", root=tmp_path)
    assert "only in train/: eel" in str(err.value) and "only in val/: fox" in str(err.value)


def test_imagefolder_missing_split_names_both_paths(tmp_path):
    write_imagefolder(tmp_path, splits=("train",))
    with pytest.raises(PruneCliError) as err:
        get_dataset("imagenet", root=tmp_path)
    assert str(tmp_path / "train") in str(err.value) and str(tmp_path / "val") in str(err.value)
    assert "--data" in str(err.value)


def test_imagefolder_class_count_hidden_folders_and_flat_val(tmp_path):
    root = write_imagefolder(tmp_path, classes=3, per_class=2)
    (root / "train" / ".ipynb_checkpoints").mkdir()
    assert get_dataset("imagefolder", root=root).spec.num_classes == 3
    with pytest.raises(PruneCliError, match="3 class folders, not 1000"):
        get_dataset("imagenet", root=root, num_classes=1000)
    # a flat val/ (ImageNet's validation archive before sorting) is explained, not a traceback
    for folder in list((root / "val").iterdir()):
        for f in folder.iterdir():
            f.rename(root / "val" / f"{folder.name}_{f.name}")
        folder.rmdir()
    with pytest.raises(PruneCliError, match="no class folders"):
        get_dataset("imagefolder", root=root)


def test_imagefolder_unreadable_image_names_the_file(tmp_path):
    root = write_imagefolder(tmp_path, classes=2, per_class=1)
    broken = root / "val" / "class0" / "000.png"
    broken.write_bytes(b"not a png")
    bundle = get_dataset("imagefolder", root=root, image_size=16)
    with pytest.raises(PruneCliError, match="000.png"):
        bundle.test[_sample_index(bundle.test, "class0/000.png")]


def test_imagefolder_empty_class_folder_is_an_error(tmp_path):
    root = write_imagefolder(tmp_path, classes=2, per_class=2)
    shutil.rmtree(root / "val" / "class1")
    (root / "val" / "class1").mkdir()
    with pytest.raises(PruneCliError, match="class1"):
        get_dataset("imagefolder", root=root)


# --------------------------------------------------------------------------- built-in datasets


def test_digits_has_fixed_split_of_1437_and_360():
    a = get_dataset("digits")
    b = get_dataset("digits", seed=1)
    assert len(a.train) == 1437 and len(a.test) == 360
    assert a.train.images.shape == (1437, 1, 16, 16) and a.train.images.dtype == torch.uint8
    assert a.test.labels.dtype == torch.int64 and set(a.test.labels.tolist()) == set(range(10))
    assert torch.equal(a.test.labels, b.test.labels) and torch.equal(a.test.images, b.test.images)
    assert (a.spec.num_classes, a.spec.in_channels, a.spec.image_size) == (10, 1, 16)


def test_synthetic_is_deterministic_and_follows_size_and_classes():
    a, b = get_dataset("synthetic"), get_dataset("synthetic", seed=5)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert a.train.images.shape[1:] == (3, 32, 32) and a.spec.num_classes == 10
    c = get_dataset("synthetic", image_size=20, num_classes=4)
    assert c.train.images.shape[1:] == (3, 20, 20) and c.train.images.dtype == torch.uint8
    assert sorted(c.train.labels.unique().tolist()) == [0, 1, 2, 3]
    assert (c.spec.image_size, c.spec.num_classes) == (20, 4)
