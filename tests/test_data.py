"""swag.data and swag.prepare_data on tiny datasets written in the real formats (see conftest).

The fast-path augmentation is checked against torchvision: for one image, every output must be
one of the (2p+1)²·2 images that torchvision's flip + padded crop can produce, the outputs must
be uniform over them (chi-square), and the per-pixel mean and variance must match the exact
moments of that uniform distribution within 5 standard errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_idx
from PIL import Image
from scipy import stats
from torchvision.transforms import functional as TF

from swag import data, models, prepare_data
from swag.errors import UserError
from swag.transforms import input_preset, torchvision_transform

CIFAR = input_preset(models.get_model("PreResNet20").preset)
CIFAR_NO_AUG = input_preset(models.get_model("PreResNet20NoAug").preset)
MNIST = input_preset(models.get_model("LeNet5").preset)


def normalise(images_nhwc: np.ndarray, preset) -> np.ndarray:
    """(x/255 − mean)/std in float64, [N, C, H, W]: ToTensor + Normalize by hand."""
    x = images_nhwc.astype(np.float64) / 255.0
    x = (x - np.array(preset.mean)) / np.array(preset.std)
    return x.transpose(0, 3, 1, 2)


def concat(loader) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = zip(*loader, strict=True)
    return torch.cat(inputs), torch.cat(targets)


def test_cifar_validation_split_is_the_last_training_images(tmp_path, tiny_cifar10):
    tiny = tiny_cifar10(tmp_path, n_train=250, n_test=50)
    loaders, num_classes = data.loaders("CIFAR10", tmp_path, 32, 0, CIFAR, val_size=50)
    assert num_classes == 10
    train, test = loaders["train"], loaders["test"]
    assert (train.num_examples, test.num_examples) == (200, 50)
    assert len(train) == 7  # ceil(200 / 32)
    x, y = next(iter(train))
    assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    inputs, targets = concat(test)
    np.testing.assert_allclose(inputs.numpy(), normalise(tiny.train_images[-50:], CIFAR), atol=1e-5)
    np.testing.assert_array_equal(targets.numpy(), tiny.train_labels[-50:])


def test_validation_split_larger_than_the_training_set_is_a_user_error(tmp_path, tiny_mnist):
    """The default 5,000 validation images of a 96-image set would leave nothing to train on."""
    tiny_mnist(tmp_path, n_train=96, n_test=16)
    with pytest.raises(UserError, match="96 training images, too few .* pass use_validation=False"):
        data.loaders("MNIST", tmp_path, 32, 0, MNIST)


def test_cifar_shuffled_training_pairs_images_with_their_labels(tmp_path, tiny_cifar10):
    tiny = tiny_cifar10(tmp_path, n_train=250, n_test=50)
    loaders, _ = data.loaders("CIFAR10", tmp_path, 32, 0, CIFAR_NO_AUG, val_size=50, seed=3)
    inputs, targets = concat(loaders["train"])
    position = {image.transpose(2, 0, 1).tobytes(): i for i, image in enumerate(tiny.train_images)}
    index = np.array([position[p.tobytes()] for p in to_pixels(inputs, CIFAR_NO_AUG)])
    # Each served image is one of the first 200, with its own label, each exactly once.
    assert sorted(index) == list(range(200))
    assert index.tolist() != list(range(200))  # shuffled
    np.testing.assert_array_equal(targets.numpy(), tiny.train_labels[index])


def test_cifar_use_test_serves_the_test_batch(tmp_path, tiny_cifar10):
    tiny = tiny_cifar10(tmp_path, n_train=250, n_test=50)
    loaders, _ = data.loaders("CIFAR10", tmp_path, 16, 0, CIFAR, use_validation=False)
    assert loaders["train"].num_examples == 250
    inputs, targets = concat(loaders["test"])
    np.testing.assert_allclose(inputs.numpy(), normalise(tiny.test_images, CIFAR), atol=1e-5)
    np.testing.assert_array_equal(targets.numpy(), tiny.test_labels)


@pytest.mark.parametrize("dataset", ["MNIST", "FashionMNIST"])
def test_mnist_idx_loaders(tmp_path, tiny_mnist, tiny_fashion_mnist, dataset):
    factory = tiny_mnist if dataset == "MNIST" else tiny_fashion_mnist
    tiny = factory(tmp_path, n_train=96, n_test=40)
    loaders, num_classes = data.loaders(dataset, tmp_path, 32, 0, MNIST, use_validation=False)
    assert num_classes == 10
    x, y = next(iter(loaders["train"]))
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    inputs, targets = concat(loaders["test"])
    assert inputs.shape == (40, 1, 28, 28)
    np.testing.assert_allclose(inputs.numpy(), normalise(tiny.test_images[..., None], MNIST),
                               atol=1e-5)  # fmt: skip
    np.testing.assert_array_equal(targets.numpy(), tiny.test_labels)


def test_cifar100_and_svhn_loaders(tmp_path, tiny_cifar100, tiny_svhn):
    c100 = tiny_cifar100(tmp_path, n_train=200, n_test=100)
    loaders, num_classes = data.loaders("CIFAR100", tmp_path, 50, 0, CIFAR, use_validation=False)
    assert num_classes == 100 and loaders["train"].num_examples == 200
    inputs, targets = concat(loaders["test"])
    np.testing.assert_allclose(inputs.numpy(), normalise(c100.test_images, CIFAR), atol=1e-5)
    np.testing.assert_array_equal(targets.numpy(), c100.test_labels)
    svhn = tiny_svhn(tmp_path, n_train=60, n_test=20)
    loaders, num_classes = data.loaders("SVHN", tmp_path, 16, 0, CIFAR, use_validation=False)
    assert num_classes == 10 and loaders["train"].num_examples == 60
    inputs, targets = concat(loaders["test"])
    np.testing.assert_allclose(inputs.numpy(), normalise(svhn.test_images, CIFAR), atol=1e-5)
    np.testing.assert_array_equal(targets.numpy(), svhn.test_labels)  # the digit 0 is 0, not 10


def test_torchvision_loader_serves_the_same_test_images(tmp_path, tiny_cifar10):
    tiny_cifar10(tmp_path, n_train=250, n_test=50)
    fast, _ = data.loaders("CIFAR10", tmp_path, 20, 0, CIFAR, val_size=50)
    slow, _ = data.loaders("CIFAR10", tmp_path, 20, 0, CIFAR, val_size=50, loader="torchvision")
    fast_inputs, fast_targets = concat(fast["test"])
    slow_inputs, slow_targets = concat(slow["test"])
    torch.testing.assert_close(fast_inputs, slow_inputs, rtol=0, atol=1e-5)
    assert torch.equal(fast_targets, slow_targets.long())
    x, y = next(iter(slow["train"]))
    assert x.shape == (20, 3, 32, 32) and len(slow["train"]) == 10


def write_labels(path, labels) -> str:
    np.save(path, labels)
    return str(path)


def test_label_arr_replaces_the_full_training_labels(tmp_path, tiny_fashion_mnist):
    tiny = tiny_fashion_mnist(tmp_path, n_train=256, n_test=32)
    labels = (tiny.train_labels * 7 + 3) % 10
    path = write_labels(tmp_path / "labels.npy", labels)
    loaders, _ = data.loaders("FashionMNIST", tmp_path, 64, 0, MNIST, val_size=56,
                              shuffle_train=False, label_arr=path)  # fmt: skip
    np.testing.assert_array_equal(concat(loaders["train"])[1].numpy(), labels[:200])
    np.testing.assert_array_equal(concat(loaders["test"])[1].numpy(), labels[200:])


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.zeros(200, dtype=np.int64), "full training set"),
        (np.zeros(256, dtype=np.float32), "1-D integer array"),
        (np.zeros((256, 1), dtype=np.int64), "1-D integer array"),
        (np.full(256, 10, dtype=np.int64), r"labels must lie in 0\.\.9"),
        (np.full(256, -1, dtype=np.int64), r"labels must lie in 0\.\.9"),
    ],
)
def test_bad_label_arr_is_a_user_error(tmp_path, tiny_fashion_mnist, labels, message):
    tiny_fashion_mnist(tmp_path, n_train=256, n_test=32)
    path = write_labels(tmp_path / "labels.npy", labels)
    with pytest.raises(UserError, match=message):
        data.loaders("FashionMNIST", tmp_path, 64, 0, MNIST, val_size=56, label_arr=path)


def test_label_arr_wrong_length_names_both_lengths(tmp_path, tiny_fashion_mnist):
    tiny_fashion_mnist(tmp_path, n_train=256, n_test=32)
    path = write_labels(tmp_path / "labels.npy", np.zeros(200, dtype=np.int64))
    with pytest.raises(UserError, match="has 200 labels but the training set has 256 images"):
        data.loaders("FashionMNIST", tmp_path, 64, 0, MNIST, label_arr=path, val_size=56)
    with pytest.raises(UserError, match="does not exist"):
        data.loaders("FashionMNIST", tmp_path, 64, 0, MNIST, label_arr=tmp_path / "no.npy")


@pytest.mark.parametrize("half", [0, 1])
def test_split_classes_keeps_and_relabels_one_half(tmp_path, tiny_cifar10, half):
    tiny = tiny_cifar10(tmp_path, n_train=250, n_test=50)
    classes = [[0, 1, 2, 8, 9], [3, 4, 5, 6, 7]][half]
    loaders, num_classes = data.loaders("CIFAR10", tmp_path, 32, 0, CIFAR_NO_AUG,
                                        use_validation=False, split_classes=half,
                                        shuffle_train=False)  # fmt: skip
    assert num_classes == 5
    for split, images, labels in [
        ("train", tiny.train_images, tiny.train_labels),
        ("test", tiny.test_images, tiny.test_labels),
    ]:
        keep = np.isin(labels, classes)
        expected_labels = np.array([classes.index(label) for label in labels[keep]])
        inputs, targets = concat(loaders[split])
        np.testing.assert_array_equal(targets.numpy(), expected_labels)
        np.testing.assert_allclose(inputs.numpy(), normalise(images[keep], CIFAR_NO_AUG),
                                   atol=1e-5)  # fmt: skip


def test_split_classes_outside_cifar10_is_a_user_error(tmp_path, tiny_fashion_mnist, tiny_cifar10):
    tiny_fashion_mnist(tmp_path, n_train=64, n_test=16)
    with pytest.raises(UserError, match="CIFAR10 dataset only"):
        data.loaders("FashionMNIST", tmp_path, 16, 0, MNIST, val_size=16, split_classes=0)
    tiny_cifar10(tmp_path, n_train=50, n_test=10)
    with pytest.raises(UserError, match="takes 0 or 1"):
        data.loaders("CIFAR10", tmp_path, 16, 0, CIFAR, val_size=10, split_classes=2)


def test_unknown_dataset_lists_the_choices(tmp_path):
    with pytest.raises(UserError, match="CIFAR10, CIFAR100, MNIST, FashionMNIST, SVHN"):
        data.loaders("ImageNet", tmp_path, 16, 0, CIFAR)


@pytest.mark.parametrize("dataset", ["CIFAR10", "FashionMNIST"])
def test_missing_data_says_where_and_how(tmp_path, dataset):
    with pytest.raises(UserError) as error:
        data.loaders(dataset, tmp_path, 16, 0, CIFAR)
    message = str(error.value)
    assert str(tmp_path / dataset.lower()) in message and "--download" in message


def torchvision_outputs(image: np.ndarray, padding: int) -> list[np.ndarray]:
    """All (2p+1)²·2 outputs of flip → pad(p) → crop, via torchvision, as uint8 [C, H, W]."""
    pil = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
    height, width = image.shape[:2]
    outputs = []
    for flipped in (TF.hflip(pil), pil):
        padded = TF.pad(flipped, padding, fill=0)
        for top in range(2 * padding + 1):
            for left in range(2 * padding + 1):
                crop = np.asarray(TF.crop(padded, top, left, height, width))
                outputs.append(crop.reshape(height, width, -1).transpose(2, 0, 1).copy())
    return outputs


def to_pixels(normalised: torch.Tensor, preset) -> np.ndarray:
    """Undo Normalize and ToTensor: uint8 [N, C, H, W], checking outputs lie on the pixel grid."""
    mean = torch.tensor(preset.mean).view(1, -1, 1, 1)
    std = torch.tensor(preset.std).view(1, -1, 1, 1)
    pixels = (normalised * std).add_(mean).mul_(255)  # float32: off the grid by < 1e-4
    rounded = pixels.round()
    assert (pixels - rounded).abs().max() < 1e-2
    return rounded.clamp_(0, 255).to(torch.uint8).numpy()


def check_against_enumeration(outputs: torch.Tensor, image: np.ndarray, preset) -> None:
    """Support, uniformity (chi-square, p > 1e-4) and per-pixel moments (5 s.e.)."""
    candidates = torchvision_outputs(image, preset.crop_padding)
    index = {c.tobytes(): i for i, c in enumerate(candidates)}
    assert len(index) == len(candidates) == (2 * preset.crop_padding + 1) ** 2 * 2
    drawn = [index.get(p.tobytes(), -1) for p in to_pixels(outputs, preset)]
    assert min(drawn) >= 0, "an output that torchvision's transforms cannot produce"
    counts = np.bincount(drawn, minlength=len(candidates))
    assert stats.chisquare(counts).pvalue > 1e-4
    # Exact moments of the uniform distribution over the candidates, normalised.
    exact = normalise(np.stack(candidates).transpose(0, 2, 3, 1), preset)
    mean, var = exact.mean(0), exact.var(0)
    fourth = ((exact - mean) ** 4).mean(0)
    num = outputs.shape[0]
    sample = outputs.numpy()
    sample_mean, sample_var = sample.mean(0, dtype=np.float64), sample.var(0, dtype=np.float64)
    assert np.all(np.abs(sample_mean - mean) <= 5 * np.sqrt(var / num) + 1e-6)
    se_var = np.sqrt(np.maximum(fourth - var**2, 0) / num)
    assert np.all(np.abs(sample_var - var) <= 5 * se_var + 1e-6)


def one_image(preset, seed: int = 0) -> np.ndarray:
    channels, size = len(preset.mean), 32 if len(preset.mean) == 3 else 28
    return np.random.default_rng(seed).integers(0, 256, (size, size, channels), dtype=np.uint8)


@pytest.mark.parametrize("name", ["PreResNet20", "LeNet5"])
def test_fast_augmentation_matches_torchvision_in_distribution(name):
    """162 outputs × 50 expected draws each = 8,100 augmented copies of one image."""
    preset = input_preset(models.get_model(name).preset)
    image = one_image(preset)
    num = 162 * 50
    copies = torch.as_tensor(image).permute(2, 0, 1).expand(num, -1, -1, -1).contiguous()
    loader = data.TensorLoader(copies, torch.zeros(num, dtype=torch.long), preset, 2048,
                               train=True, shuffle=True, seed=5)  # fmt: skip
    outputs, _ = concat(loader)
    check_against_enumeration(outputs, image, preset)


@pytest.mark.parametrize("name", ["PreResNet20", "LeNet5"])
def test_torchvision_path_matches_the_same_distribution(name):
    """The `--loader torchvision` transforms, 1,620 draws (10 expected per output)."""
    preset = input_preset(models.get_model(name).preset)
    image = one_image(preset, seed=1)
    transform = torchvision_transform(preset, train=True)
    pil = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
    torch.manual_seed(0)
    outputs = torch.stack([transform(pil) for _ in range(1620)])
    check_against_enumeration(outputs, image, preset)


def test_no_augmentation_preset_and_test_mode_are_the_identity():
    image = one_image(CIFAR)
    copies = torch.as_tensor(image).permute(2, 0, 1).expand(64, -1, -1, -1).contiguous()
    expected = normalise(image[None], CIFAR)
    for preset, train in [(CIFAR_NO_AUG, True), (CIFAR, False)]:
        loader = data.TensorLoader(copies, torch.zeros(64, dtype=torch.long), preset, 64,
                                   train=train, shuffle=True)  # fmt: skip
        outputs, _ = concat(loader)
        np.testing.assert_allclose(outputs.numpy(), np.repeat(expected, 64, 0), atol=1e-5)


def epoch_batches(loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def same(a, b) -> bool:
    return all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b, strict=True))


@pytest.mark.parametrize("kind", ["fast", "torchvision"])
def test_batches_are_deterministic_per_seed_and_epoch(tmp_path, tiny_cifar10, kind):
    tiny_cifar10(tmp_path, n_train=100, n_test=10)
    make = lambda seed: data.loaders("CIFAR10", tmp_path, 25, 0, CIFAR, val_size=20,  # noqa: E731
                                     loader=kind, seed=seed)[0]["train"]  # fmt: skip
    first, twin, other_seed = make(1), make(1), make(2)
    epoch_3 = epoch_batches(first, 3)
    assert same(epoch_3, epoch_batches(twin, 3))  # a fresh loader, as after --resume
    assert same(epoch_3, epoch_batches(first, 3))  # the same loader, again
    assert not same(epoch_3, epoch_batches(first, 4))
    assert not same(epoch_3, epoch_batches(other_seed, 3))


def test_prepare_data_decompresses_gz_idx_files(tmp_path, capsys):
    source = tmp_path / "debian"
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(30) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(10) % 10).astype(np.uint8),
    }
    for name, array in arrays.items():
        write_idx(source / f"{name}.gz", array, compress=True)
    argv = ["--source", str(source), "--data_path", str(tmp_path / "data")]
    assert prepare_data.main(argv) == 0
    raw = tmp_path / "data" / "fashionmnist" / "FashionMNIST" / "raw"
    for name in arrays:
        write_idx(tmp_path / "plain" / name, arrays[name])
        assert (raw / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()
    images, labels = data.load_split("FashionMNIST", tmp_path / "data", train=True)
    np.testing.assert_array_equal(images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(labels.numpy(), arrays["train-labels-idx1-ubyte"])
    assert prepare_data.main(argv) == 0  # idempotent
    assert sorted(p.name for p in raw.iterdir()) == sorted(arrays)  # no temporaries left


def test_prepare_data_missing_source_exits_2(tmp_path, capsys):
    argv = ["--source", str(tmp_path / "nothing"), "--data_path", str(tmp_path / "data")]
    assert prepare_data.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "dataset-fashion-mnist" in err and err.count("\n") == 1


@pytest.mark.parametrize("dataset", ["MNIST", "FashionMNIST"])
@pytest.mark.parametrize("train", [True, False])
def test_idx_reader_equals_torchvision(tmp_path, tiny_mnist, tiny_fashion_mnist, dataset, train):
    import torchvision.datasets as tv

    (tiny_mnist if dataset == "MNIST" else tiny_fashion_mnist)(tmp_path, n_train=40, n_test=12)
    images, labels = data.load_split(dataset, tmp_path, train=train)
    reference = getattr(tv, dataset)(str(tmp_path / dataset.lower()), train=train)
    assert images.dtype == torch.uint8 and labels.dtype == torch.long
    assert torch.equal(images, reference.data.unsqueeze(1))
    assert torch.equal(labels, reference.targets.long())


DAMAGES = {
    "truncate": lambda payload: payload[:-5],
    "magic": lambda payload: b"\x01" + payload[1:],
    "header": lambda payload: payload[:6],  # cut inside the dimension sizes
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_corrupt_idx_file_is_a_user_error(tmp_path, tiny_fashion_mnist, damage):
    tiny_fashion_mnist(tmp_path, n_train=40, n_test=12)
    path = tmp_path / "fashionmnist" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    payload = path.read_bytes()
    path.write_bytes(DAMAGES[damage](payload))
    with pytest.raises(UserError, match="run `make data` again"):
        data.load_split("FashionMNIST", tmp_path, train=True)


def test_mnist_format_training_data_loads_without_torchvision(tmp_path, tiny_fashion_mnist):
    """torchvision costs ~0.2 GiB of resident memory; the LeNet5 memory budget has no room."""
    import subprocess
    import sys

    tiny_fashion_mnist(tmp_path, n_train=40, n_test=12)
    code = (
        "import sys; from swag import data, training, models, speed, posteriors; "
        f"data.load_split('FashionMNIST', {str(tmp_path)!r}, train=True); "
        "print('torchvision' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
