"""The built-in datasets: MNIST and Fashion-MNIST as their original idx files, checksummed, read
without pickle. Both have the same layout (60,000 + 10,000 28×28 grey images, 10 classes), and
each lives in its own folder under the datasets directory (`mnist/`, `fashion-mnist/`)."""

from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import DatasetUnavailable

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"
PREPROCESSING = "uint8 pixels / 255 as float32, shape (N, 1, 28, 28), no further normalization"


@dataclass(frozen=True)
class IdxDataset:
    name: str
    description: str
    md5: dict[str, str]  # file name → its published md5
    sample_shape: tuple[int, ...] = (1, 28, 28)
    num_classes: int = 10
    train_size: int = 60_000
    test_size: int = 10_000
    preprocessing: str = PREPROCESSING


MNIST = IdxDataset("mnist", "MNIST handwritten digits (LeCun et al.)", {
    TRAIN_IMAGES: "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    TRAIN_LABELS: "d53e105ee54ea40749a09fcbcd1e9432",
    TEST_IMAGES: "9fb629c4189551a2d022fa330f9573f3",
    TEST_LABELS: "ec29112dd5afa0611ce80d1b7f02629c",
})
# the md5s published with Fashion-MNIST (github.com/zalandoresearch/fashion-mnist, as in its MD5SUMS)
FASHION_MNIST = IdxDataset("fashion-mnist", "Fashion-MNIST clothing images (Xiao et al. 2017)", {
    TRAIN_IMAGES: "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    TRAIN_LABELS: "25c81989df183df01b3e8a0aad5dffbe",
    TEST_IMAGES: "bef4ecab320f06d8554ea6380940ec79",
    TEST_LABELS: "bb300cfdad3c16e7a12a480ee83cd310",
})
BUILTINS: dict[str, IdxDataset] = {d.name: d for d in (MNIST, FASHION_MNIST)}
NAMES = tuple(BUILTINS)


@dataclass(frozen=True)
class Arrays:
    x_train: np.ndarray  # float32 (60000, 1, 28, 28) in [0, 1]
    y_train: np.ndarray  # int64
    x_test: np.ndarray
    y_test: np.ndarray


def get(name: str) -> IdxDataset:
    if name not in BUILTINS:
        raise KeyError(name)
    return BUILTINS[name]


def verify(name: str, directory: Path) -> Path:
    """Check the dataset's four files exist under `directory`/<name> with their published md5;
    return that folder."""
    ds = get(name)
    folder = Path(directory) / ds.name
    for file, md5 in ds.md5.items():
        path = folder / file
        if not path.is_file():
            raise DatasetUnavailable(f"built-in {ds.name}: {path} is missing")
        digest = hashlib.md5(path.read_bytes()).hexdigest()
        if digest != md5:
            raise DatasetUnavailable(f"built-in {ds.name}: {path} has md5 {digest}, expected {md5}")
    return folder


def _read_idx(path: Path, magic: int) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    found, count = struct.unpack(">II", raw[:8])
    if found != magic:
        raise DatasetUnavailable(f"{path}: idx magic {found}, expected {magic}")
    if magic == 2051:
        rows, cols = struct.unpack(">II", raw[8:16])
        return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, 1, rows, cols)
    return np.frombuffer(raw, dtype=np.uint8, offset=8).reshape(count)


def load(name: str, directory: Path) -> Arrays:
    folder = verify(name, directory)

    def images(file: str) -> np.ndarray:
        return _read_idx(folder / file, 2051).astype(np.float32) / np.float32(255.0)

    def labels(file: str) -> np.ndarray:
        return _read_idx(folder / file, 2049).astype(np.int64)

    return Arrays(x_train=images(TRAIN_IMAGES), y_train=labels(TRAIN_LABELS),
                  x_test=images(TEST_IMAGES), y_test=labels(TEST_LABELS))
