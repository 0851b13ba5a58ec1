"""Data sets: every reader on a small fixture written here, real CIFAR-10 pixels where the shared tarball is
present, validation splits, normalisation, caching, and augmentation."""
from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bsnet.data import DataSplits, Split, batches, list_datasets, load_dataset, register_dataset
from bsnet.data import registry as data_registry
from bsnet.data import cache as cache_mod
from bsnet.data import image_folder as image_folder_mod
from bsnet.data.augment import RandomCropFlip, RandomFlip
from bsnet.data.cifar import read_pickle
from bsnet.data.images import image_reader, read_all
from bsnet.data.partlabels import load_partlabels
from bsnet.data.shapes import make_shapes

CIFAR_JPEG = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(autouse=True)
def _user_cache(tmp_path, monkeypatch):
    """Never write to the real user cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


# ---- fixtures written in each data set's own format -------------------------------------------------------
class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 strings (SHORT_BINSTRING / BINSTRING), as the official CIFAR release was pickled."""
    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def dump(obj, path: Path, style: str) -> None:
    if style == "py2":
        buf = io.BytesIO()
        Py2Pickler(buf, protocol=2).dump(obj)
        # numpy 2 names its module numpy._core; the release, pickled with numpy 1, names numpy.core
        path.write_bytes(buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))
    else:
        path.write_bytes(pickle.dumps(obj, protocol=4))


def write_cifar_release(root: Path, name: str, per_class_train: int, per_class_test: int, style: str = "py2",
                        seed: int = 0) -> Path:
    """A python release of CIFAR-10 or CIFAR-100 in the official layout, with random pixels."""
    rng = np.random.default_rng(seed)
    k, folder, label = (10, "cifar-10-batches-py", b"labels") if name == "cifar10" else \
        (100, "cifar-100-python", b"fine_labels")
    out = root / folder
    out.mkdir(parents=True)

    def batch(n_per_class: int, title: bytes) -> dict:
        y = rng.permutation(np.repeat(np.arange(k), n_per_class))
        x = rng.integers(0, 256, (len(y), 3072), dtype=np.uint8)
        x[:, :1024] //= 2  # a darker red channel, so that the statistics differ per channel
        return {b"batch_label": title, label: [int(v) for v in y], b"data": x,
                b"filenames": [f"img_{i}.png".encode() for i in range(len(y))]}

    if name == "cifar10":
        parts = np.array_split(np.arange(per_class_train), 5)
        for i, p in enumerate(parts, 1):
            dump(batch(len(p), f"training batch {i} of 5".encode()), out / f"data_batch_{i}", style)
        dump(batch(per_class_test, b"testing batch 1 of 1"), out / "test_batch", style)
        dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072}, out / "batches.meta", style)
    else:
        dump(batch(per_class_train, b"training"), out / "train", style)
        dump(batch(per_class_test, b"testing"), out / "test", style)
        dump({b"fine_label_names": [f"class{i:03d}".encode() for i in range(k)]}, out / "meta", style)
    return out


def write_image_folder(root: Path, classes=("ant", "bee", "cat"), n_train: int = 5, n_test: int = 2,
                       size: tuple[int, int] = (8, 6), mode: str = "RGB", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / split / c / f"{i:03d}.png")
    return root


PARTS = {"train": [("Aaron_Peirsol", 1), ("Aaron_Peirsol", 2), ("Ann_Veneman", 3)],
         "validation": [("Ann_Veneman", 4)], "test": [("Zico", 1)]}


def write_partlabels(root: Path) -> Path:
    """LFW Part Labels layout: 250x250 images, label maps with hair (red) on top, skin (green), background (blue)."""
    rng = np.random.default_rng(0)
    for split, items in PARTS.items():
        lines = []
        for name, num in items:
            ident = f"{name}_{num:04d}"
            (root / "lfw_funneled" / name).mkdir(parents=True, exist_ok=True)
            (root / "parts_lfw_funneled_gt_images").mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (250, 250, 3), dtype=np.uint8)).save(
                root / "lfw_funneled" / name / f"{ident}.jpg")
            label = np.zeros((250, 250, 3), np.uint8)
            label[:80] = (255, 0, 0)
            label[80:170] = (0, 255, 0)
            label[170:] = (0, 0, 255)
            Image.fromarray(label).save(root / "parts_lfw_funneled_gt_images" / f"{ident}.ppm")
            lines.append(f"{name} {num}")  # the image number, as the official files write it
        (root / f"parts_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def cifar_jpeg_slice(tmp_path_factory) -> Path:
    """The first 20 images per class of train/ and test/ of the shared CIFAR-10 JPEG tarball."""
    if not CIFAR_JPEG.is_file():
        pytest.skip(f"real CIFAR-10 pixels absent: {CIFAR_JPEG} not found")
    root = tmp_path_factory.mktemp("cifar") / "cifar10-jpeg"
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(CIFAR_JPEG, "r:gz") as tar:
        for m in tar:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) != 3 or counts.get((parts[0], parts[1]), 0) >= 20:
                continue
            counts[parts[0], parts[1]] = counts.get((parts[0], parts[1]), 0) + 1
            (root / parts[0] / parts[1]).mkdir(parents=True, exist_ok=True)
            (root / m.name).write_bytes(tar.extractfile(m).read())
            if len(counts) == 20 and min(counts.values()) == 20:
                break
    return root


# ---- CIFAR --------------------------------------------------------------------------------------------------
def test_cifar10_real_jpeg_pixels(cifar_jpeg_slice, monkeypatch):
    # the folder itself, or the folder that holds it
    for where in (cifar_jpeg_slice, cifar_jpeg_slice.parent):
        d = load_dataset("cifar10", where, val_size=0.1, seed=0)
        assert d.classes == CIFAR10_CLASSES and d.num_classes == 10 and d.task == "classification"
        assert (len(d.train), len(d.val), len(d.test)) == (180, 20, 200)
        assert d.input_shape == (3, 32, 32) and d.train.x_stored.dtype == torch.uint8
        assert torch.bincount(d.val.y, minlength=10).tolist() == [2] * 10  # stratified
    # real pixels: the training statistics are near CIFAR-10's known per-channel means (125.3, 123.0, 113.9)
    assert torch.allclose(d.train.mean, torch.tensor([125.3, 123.0, 113.9]), atol=15)
    x, y = next(batches(d.train, 180))
    assert x.dtype == torch.float32 and y.dtype == torch.long
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std((0, 2, 3)), torch.ones(3), atol=1e-2)
    # decoded once: the second load reads the cache next to the data and decodes nothing
    assert (cifar_jpeg_slice / "bsnet-cache-image-folder.npz").is_file()
    monkeypatch.setattr(image_folder_mod, "read_all", lambda *a, **k: pytest.fail("decoded again"))
    again = load_dataset("cifar10", cifar_jpeg_slice, val_size=0.1, seed=0)
    assert torch.equal(again.train.x, d.train.x) and torch.equal(again.test.y, d.test.y)


def test_parallel_decode_matches_serial_and_names_corrupt_file(cifar_jpeg_slice, tmp_path):
    paths = sorted((cifar_jpeg_slice / "train").rglob("*.jpg"))[:60]
    serial = read_all(image_reader((32, 32)), paths, workers=1)
    parallel = read_all(image_reader((32, 32)), paths, workers=2, parallel_from=1, chunk=7)
    assert serial.shape == (60, 32, 32, 3) and np.array_equal(serial, parallel)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(paths[0].read_bytes()[:40])  # truncated
    with pytest.raises(ValueError, match=f"cannot read image {bad}"):
        read_all(image_reader((32, 32)), [*paths[:20], bad, *paths[20:]], workers=2, parallel_from=1, chunk=7)


@pytest.mark.parametrize("style", ["py2", "protocol4"])
def test_cifar10_python_release(tmp_path, style):
    write_cifar_release(tmp_path, "cifar10", per_class_train=550, per_class_test=10, style=style)
    d = load_dataset("cifar10", tmp_path)  # the folder that holds cifar-10-batches-py
    assert (len(d.train), len(d.val), len(d.test)) == (500, 5000, 100)  # 5,000 held out, as in the paper
    assert torch.bincount(d.val.y).tolist() == [500] * 10
    assert d.classes == CIFAR10_CLASSES and d.input_shape == (3, 32, 32)
    assert d.train.mean[0] < 0.7 * d.train.mean[1]  # channel planes in the release's R, G, B order
    d2 = load_dataset("cifar10", tmp_path / "cifar-10-batches-py", val_size=0.2, seed=3)  # the release folder itself
    assert (len(d2.train), len(d2.val)) == (4400, 1100)
    assert len(load_dataset("cifar10", tmp_path, val_size=300).val) == 300


def test_cifar_release_rows_are_rgb_planes(tmp_path):
    out = write_cifar_release(tmp_path, "cifar10", per_class_train=5, per_class_test=1)
    raw = read_pickle(out / "data_batch_1")
    d = load_dataset("cifar10", tmp_path, val_size=10)
    first = np.asarray(raw["data"])[0].reshape(3, 32, 32)  # R plane, G plane, B plane; each row-major
    x = torch.cat([d.train.x_stored, d.val.x_stored])
    assert any(torch.equal(torch.from_numpy(first), img) for img in x)


def test_cifar100_python_release(tmp_path):
    write_cifar_release(tmp_path, "cifar100", per_class_train=3, per_class_test=1)
    d = load_dataset("cifar100", tmp_path, val_size=100, seed=1)
    assert d.num_classes == 100 and d.classes[5] == "class005"
    assert (len(d.train), len(d.val), len(d.test)) == (200, 100, 100)


def test_cifar_restricted_unpickler_refuses_other_globals(tmp_path):
    out = write_cifar_release(tmp_path, "cifar10", per_class_train=5, per_class_test=1, style="protocol4")

    class Evil:
        def __reduce__(self):
            return os.system, ("touch " + str(tmp_path / "pwned"),)

    dump({b"data": Evil(), b"labels": []}, out / "data_batch_3", "protocol4")
    with pytest.raises(ValueError, match=r"data_batch_3.*refused to load"):
        load_dataset("cifar10", tmp_path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("protocol", [2, 3, 5])
def test_cifar_batches_pickled_by_python_3_load(protocol, tmp_path, monkeypatch):
    monkeypatch.setattr(pickle, "load", None)  # never the plain unpickler
    monkeypatch.setattr(pickle, "loads", None)
    x = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    batch = {"data": x, "labels": [3, 7], "batch_label": b"training batch 1 of 5", "filenames": [b"a.png", b"b.png"]}
    path = _write(tmp_path / "data_batch_1", pickle.dumps(batch, protocol=protocol))
    d = read_pickle(path)
    assert (d["data"] == x).all() and d["labels"] == [3, 7] and d["batch_label"] == b"training batch 1 of 5"


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_unpickler_still_refuses_code(protocol, tmp_path):
    class Evil:
        def __reduce__(self):
            return os.system, ("touch " + str(tmp_path / "pwned"),)

    path = _write(tmp_path / "data_batch_1", pickle.dumps({"data": Evil(), "labels": []}, protocol=protocol))
    with pytest.raises(ValueError, match="refused to load"):
        read_pickle(path)
    evil_codec = pickle.dumps({"data": b"x"}, protocol=2).replace(b"latin1", b"rot_13")
    with pytest.raises(ValueError, match="refused"):
        read_pickle(_write(tmp_path / "data_batch_2", evil_codec))
    assert not (tmp_path / "pwned").exists()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_cifar_errors(tmp_path):
    with pytest.raises(ValueError, match="needs a data directory"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="no CIFAR-10 data in"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset("cifar10", tmp_path / "nowhere")
    write_image_folder(tmp_path / "three")  # an image folder, but not CIFAR-10
    with pytest.raises(ValueError, match="is not CIFAR-10: expected 10 classes"):
        load_dataset("cifar10", tmp_path / "three", val_size=0.2)
    out = write_cifar_release(tmp_path / "r", "cifar10", per_class_train=5, per_class_test=1)
    (out / "test_batch").write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="cannot read .*test_batch"):
        load_dataset("cifar10", tmp_path / "r", val_size=10)


# ---- image folders ------------------------------------------------------------------------------------------
def test_image_folder_reads_and_caches(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "pets", n_train=10)
    d = load_dataset("image-folder", tmp_path)  # found one level down
    assert d.name == "image-folder" and d.classes == ("ant", "bee", "cat") and d.num_classes == 3
    assert (len(d.train), len(d.val), len(d.test)) == (27, 3, 6)  # 10% held out
    assert d.input_shape == (3, 6, 8) and d.augment is None
    first = np.array(Image.open(root / "test" / "ant" / "000.png"))  # (H, W, C)
    assert torch.equal(d.test.x_stored[0], torch.from_numpy(first).permute(2, 0, 1))
    assert d.test.y.tolist() == [0, 0, 1, 1, 2, 2]
    # cached: no decoding the second time; a changed file is noticed
    calls = []
    real = image_folder_mod.read_all
    monkeypatch.setattr(image_folder_mod, "read_all", lambda *a, **k: calls.append(1) or real(*a, **k))
    load_dataset("image-folder", root)
    assert calls == []
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / "test" / "ant" / "000.png")
    os.utime(root / "test" / "ant" / "000.png", ns=(1, 1))
    d = load_dataset("image-folder", root)
    assert calls == [1] and int(d.test.x_stored[0].sum()) == 0


def test_image_folder_grey_stays_one_channel(tmp_path):
    d = load_dataset("image-folder", write_image_folder(tmp_path / "g", mode="L"), val_size=3)
    assert d.input_shape == (1, 6, 8) and d.train.mean.shape == (1,)
    x, _ = next(batches(d.train, 4))
    assert x.shape == (4, 1, 6, 8)


def test_cache_falls_back_to_user_cache(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "ro")
    real_save = cache_mod._save
    monkeypatch.setattr(cache_mod, "_save", lambda p, k, a: p.parent != root.resolve() and real_save(p, k, a))
    load_dataset("image-folder", root)
    assert not list(root.glob("*.npz"))
    assert len(list((tmp_path / "xdg-cache" / "bsnet" / "data").glob("ro-*-image-folder.npz"))) == 1


def test_image_folder_errors(tmp_path):
    root = write_image_folder(tmp_path / "a")
    (root / "train" / "bee" / "002.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=f"cannot read image {root / 'train' / 'bee' / '002.png'}"):
        load_dataset("image-folder", root)

    root = write_image_folder(tmp_path / "b")
    (root / "train" / "dog").mkdir()
    with pytest.raises(ValueError, match=f"class folder {root / 'train' / 'dog'} holds no images"):
        load_dataset("image-folder", root)

    root = write_image_folder(tmp_path / "c")
    Image.fromarray(np.zeros((7, 8, 3), np.uint8)).save(root / "test" / "cat" / "001.png")
    with pytest.raises(ValueError, match=r"image .*test/cat/001.png is 8x7 but the others are 8x6"):
        load_dataset("image-folder", root)

    root = write_image_folder(tmp_path / "d")
    (root / "test" / "cat").rename(root / "test" / "cow")
    with pytest.raises(ValueError, match="different class folders"):
        load_dataset("image-folder", root)

    (tmp_path / "e" / "stuff").mkdir(parents=True)
    with pytest.raises(ValueError, match="is not an image folder"):
        load_dataset("image-folder", tmp_path / "e")


# ---- LFW Part Labels ----------------------------------------------------------------------------------------
def test_partlabels(tmp_path):
    root = write_partlabels(tmp_path / "lfw")
    d = load_dataset("partlabels", tmp_path)  # found one level down; 128x128 by default
    assert d.task == "segmentation" and d.num_classes == 3 and d.classes == ("background", "skin", "hair")
    assert (len(d.train), len(d.val), len(d.test)) == (3, 1, 1)  # the official splits
    assert d.input_shape == (3, 128, 128) and d.train.y.shape == (3, 128, 128)
    x, y = next(batches(d.train, 3))
    assert x.dtype == torch.float32 and y.dtype == torch.long
    # hair (red) on top, then skin (green), then background (blue), kept by the nearest-neighbour resize
    col = y[0, :, 64]
    assert col[:40].eq(2).all() and col[42:86].eq(1).all() and col[88:].eq(0).all()
    small = load_partlabels(root, image_size=16)
    assert small.input_shape == (3, 16, 16) and set(small.test.y.unique().tolist()) == {0, 1, 2}
    assert (root / "bsnet-cache-partlabels-16.npz").is_file()


def test_partlabels_errors(tmp_path):
    root = write_partlabels(tmp_path / "lfw")
    with pytest.raises(ValueError, match="power of two"):
        load_partlabels(root, image_size=100)
    with pytest.raises(ValueError, match="official validation split"):
        load_dataset("partlabels", root, val_size=0.1)
    (root / "lfw_funneled" / "Zico" / "Zico_0001.jpg").unlink()
    with pytest.raises(ValueError, match=r"lfw_funneled/Zico/Zico_0001.jpg is missing \(listed in .*parts_test.txt\)"):
        load_dataset("partlabels", root)
    (root / "parts_validation.txt").unlink()
    with pytest.raises(ValueError, match=r"split file .*parts_validation.txt is missing"):
        load_dataset("partlabels", root)
    (root / "parts_validation.txt").write_text("Ann_Veneman four\n")
    with pytest.raises(ValueError, match=r"parts_validation.txt:1: expected"):
        load_dataset("partlabels", root)
    with pytest.raises(ValueError, match="no LFW Part Labels data"):
        load_dataset("partlabels", tmp_path / "lfw" / "lfw_funneled")


# ---- shapes -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes():
    return load_dataset("shapes", seed=0)


def test_shapes(shapes):
    d = shapes
    assert d.task == "segmentation" and d.num_classes == 4 and d.input_shape == (3, 32, 32)
    assert (len(d.train), len(d.val), len(d.test)) == (1800, 200, 500)
    assert d.train.y.shape == (1800, 32, 32) and set(d.train.y.unique().tolist()) == {0, 1, 2, 3}
    assert torch.allclose(d.train.x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    other = load_dataset("shapes", seed=1, val_size=100)
    assert torch.equal(other.test.y, d.test.y) and len(other.val) == 100  # the seed only picks the val split
    x, y = make_shapes(4, 16, seed=7)
    x2, y2 = make_shapes(4, 16, seed=7)
    assert x.shape == (4, 3, 16, 16) and y.shape == (4, 16, 16) and np.array_equal(x, x2) and np.array_equal(y, y2)


# ---- every registered data set ------------------------------------------------------------------------------
# A small copy of each registered data set: (a writer of fake files returning the data directory, or None for an
# embedded one; the val_size to ask for). A data set registered without one fails `test_every_dataset_...`.
SMALL_DATA = {
    "digits": (None, 0.1),
    "shapes": (None, 100),
    "cifar10": (lambda root: write_cifar_release(root, "cifar10", 5, 1, style="protocol4").parent, 10),
    "cifar100": (lambda root: write_cifar_release(root, "cifar100", 2, 1, style="protocol4").parent, 100),
    "image-folder": (lambda root: write_image_folder(root / "pets"), 0.2),
    "partlabels": (lambda root: write_partlabels(root / "lfw"), None),  # only its official validation split
}


@pytest.mark.parametrize("name", list_datasets())
def test_every_dataset_returns_consistent_splits(name, tmp_path):
    if name not in SMALL_DATA:
        pytest.fail(f"data set {name!r} has no small test copy: add one to SMALL_DATA in tests/test_data.py")
    writer, val_size = SMALL_DATA[name]
    data_dir = None if writer is None else writer(tmp_path)
    d = load_dataset(name, data_dir, val_size=val_size, seed=3)
    assert isinstance(d, DataSplits) and d.name == name and d.task in ("classification", "segmentation")
    assert d.classes == () or len(d.classes) == d.num_classes
    if isinstance(val_size, int):
        assert len(d.val) == val_size
    for split in (d.train, d.val, d.test):
        assert len(split) > 0 and split.input_shape == d.input_shape
        x, y = next(batches(split, 4))
        assert x.dtype == torch.float32 and x.shape == (len(x), *d.input_shape)
        assert y.dtype == torch.long and 0 <= y.min() and y.max() < d.num_classes
        assert y.shape == ((len(x),) if d.task == "classification" else (len(x), *d.input_shape[1:]))
    if d.augment is not None:
        x, y = next(batches(d.train, 4))
        xa, ya = d.augment(x, y, torch.Generator().manual_seed(0))
        assert xa.shape == x.shape and ya.shape == y.shape
    again = load_dataset(name, data_dir, val_size=val_size, seed=3)  # the seed fixes the validation split
    assert torch.equal(again.val.y, d.val.y) and torch.equal(again.val.x, d.val.x)


def test_a_registered_dataset_loads_by_name(monkeypatch, tmp_path):
    monkeypatch.setattr(data_registry, "_REGISTRY", dict(data_registry._REGISTRY))
    seen = []

    @register_dataset("ones")
    def ones(data_dir, val_size, seed) -> DataSplits:
        seen.append((data_dir, val_size, seed))
        split = Split(torch.ones(4, 1, 2, 2), torch.zeros(4, dtype=torch.long))
        return DataSplits("ones", split, split, split, num_classes=1)

    assert "ones" in list_datasets()
    assert load_dataset("ones", tmp_path, val_size=2, seed=5).name == "ones"
    assert seen == [(tmp_path, 2, 5)]
    with pytest.raises(ValueError, match="val_size"):
        load_dataset("ones", val_size=-1)


# ---- splits, batches, augmentation --------------------------------------------------------------------------
def test_all_datasets_listed_and_unknown_rejected():
    assert set(list_datasets()) >= {"digits", "cifar10", "cifar100", "image-folder", "partlabels", "shapes"}
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist' \(known: cifar10, cifar100, digits"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="val_size"):
        load_dataset("shapes", val_size=0)


def test_uint8_split_yields_normalised_floats():
    x = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    y = torch.arange(10, dtype=torch.uint8)
    mean, std = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 8.0])
    split = Split(x, y, mean, std)
    xb, yb = next(batches(split, 10))
    assert torch.allclose(xb, (x.float() - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    assert yb.dtype == torch.long and yb.tolist() == list(range(10))
    assert torch.equal(split.x, xb) and torch.equal(split.y, yb)  # whole-split views, as code reading .x expects
    assert split.input_shape == (3, 4, 4) and len(split) == 10
    with pytest.raises(ValueError, match="uint8 inputs need"):
        Split(x, y)
    digits = load_dataset("digits")  # float splits pass through unchanged
    xd, _ = next(batches(digits.test, 5))
    assert torch.equal(xd, digits.test.x[:5])


def test_random_crop_flip_matches_per_example_reference():
    x = torch.randn(16, 3, 8, 8)
    y = torch.arange(16)
    aug = RandomCropFlip(2, (-1.0, -2.0, -3.0))
    out, y2 = aug(x, y, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # the same draws, in the same order
    flip = torch.rand(16, generator=g) < 0.5
    offset = torch.randint(0, 5, (16, 2), generator=g)
    for i in range(16):
        padded = torch.tensor([-1.0, -2.0, -3.0]).view(3, 1, 1).expand(3, 12, 12).clone()
        padded[:, 2:10, 2:10] = x[i]
        ref = padded[:, offset[i, 0]:offset[i, 0] + 8, offset[i, 1]:offset[i, 1] + 8]
        assert torch.equal(out[i], ref.flip(-1) if flip[i] else ref)
    assert torch.equal(y2, y)


def test_augment_is_deterministic_and_keeps_shapes(tmp_path):
    write_cifar_release(tmp_path, "cifar10", per_class_train=5, per_class_test=1)
    d = load_dataset("cifar10", tmp_path, val_size=10)
    x, y = next(batches(d.train, 32))
    a1 = d.augment(x, y, torch.Generator().manual_seed(0))
    a2 = d.augment(x, y, torch.Generator().manual_seed(0))
    a3 = d.augment(x, y, torch.Generator().manual_seed(1))
    assert a1[0].shape == x.shape and torch.equal(a1[0], a2[0]) and torch.equal(a1[1], y)
    assert not torch.equal(a1[0], a3[0])
    # the padding is normalised black, as torchvision's crop of the raw image would give
    black = (-d.train.mean / d.train.std).tolist()
    assert d.augment.fill == tuple(black)


def test_segmentation_flip_moves_labels_with_pixels(shapes):
    y = torch.randint(0, 4, (32, 8, 8))
    x = y[:, None].float().expand(32, 3, 8, 8).clone()  # every channel encodes the label
    x2, y2 = RandomFlip()(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(x2[:, 0].long(), y2)
    flipped = [bool(torch.equal(y2[i], y[i].flip(-1))) and not torch.equal(y[i], y[i].flip(-1)) for i in range(32)]
    assert 5 < sum(flipped) < 27
    assert torch.equal(RandomFlip()(x, y, torch.Generator().manual_seed(0))[1], y2)
    xb, yb = next(batches(shapes.train, 16))
    xa, ya = shapes.augment(xb, yb, torch.Generator().manual_seed(0))
    assert xa.shape == xb.shape and ya.shape == yb.shape == (16, 32, 32)
