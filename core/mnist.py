"""The built-in MNIST: the four original idx files, checksummed, read without pickle."""

from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import DatasetUnavailable

FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
SAMPLE_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
TRAIN_SIZE = 60_000
TEST_SIZE = 10_000
PREPROCESSING = "uint8 pixels / 255 as float32, shape (N, 1, 28, 28), no further normalization"


@dataclass(frozen=True)
class Mnist:
    x_train: np.ndarray  # float32 (60000, 1, 28, 28) in [0, 1]
    y_train: np.ndarray  # int64
    x_test: np.ndarray
    y_test: np.ndarray


def verify(directory: Path) -> Path:
    """Check the four files exist with their published md5; return the mnist directory."""
    mnist = directory / "mnist" if (directory / "mnist").is_dir() else directory
    for name, md5 in FILES.items():
        path = mnist / name
        if not path.is_file():
            raise DatasetUnavailable(f"built-in mnist: {path} is missing")
        digest = hashlib.md5(path.read_bytes()).hexdigest()
        if digest != md5:
            raise DatasetUnavailable(f"built-in mnist: {path} has md5 {digest}, expected {md5}")
    return mnist


def _read_idx(path: Path, magic: int) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    found, count = struct.unpack(">II", raw[:8])
    if found != magic:
        raise DatasetUnavailable(f"{path}: idx magic {found}, expected {magic}")
    if magic == 2051:
        rows, cols = struct.unpack(">II", raw[8:16])
        return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, 1, rows, cols)
    return np.frombuffer(raw, dtype=np.uint8, offset=8).reshape(count)


def load(directory: Path) -> Mnist:
    mnist = verify(directory)

    def images(name: str) -> np.ndarray:
        return (_read_idx(mnist / name, 2051).astype(np.float32) / np.float32(255.0))

    def labels(name: str) -> np.ndarray:
        return _read_idx(mnist / name, 2049).astype(np.int64)

    return Mnist(
        x_train=images("train-images-idx3-ubyte.gz"),
        y_train=labels("train-labels-idx1-ubyte.gz"),
        x_test=images("t10k-images-idx3-ubyte.gz"),
        y_test=labels("t10k-labels-idx1-ubyte.gz"),
    )
