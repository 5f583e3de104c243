"""Validating uploaded weights and datasets with numpy (no torch, never pickle)."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np
import safetensors.numpy

from core import builtin_datasets, tensor_table
from core.architectures import Architecture
from core.errors import InvalidInput
from core.safetensors_header import HeaderLimits, read_header
from core.settings import Settings
from core.splits import DEFAULT_SPLIT_SEED, DEFAULT_VALIDATION_FRACTION, validation_size
from core.zip_members import checked_members

REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL_KEYS = ("x_val", "y_val")
MAX_NPZ_EXPANSION = 4  # an npz may expand to this many times the upload limit, no more
BUILTIN_DATASETS = builtin_datasets.NAMES


NUMERIC_KINDS = "biufc"  # numpy dtype kinds; parse_dataset narrows x and y further


def header_limits(cfg: Settings) -> HeaderLimits:
    return HeaderLimits(max_tensors=cfg.max_tensors, max_rank=cfg.max_tensor_rank,
                        max_elements=cfg.max_tensor_elements)


def validate_weights(data: bytes, arch: Architecture, cfg: Settings) -> None:
    """Weights must hold exactly the architecture's tensors, each in its kind's dtype (parameters
    and running statistics float32 and finite, BatchNorm step counters int64)."""
    header, _ = read_header(data, "weights", header_limits(cfg))
    problem = tensor_table.mismatch(arch, {n: (i.shape, i.dtype) for n, i in header.items()}, "weights")
    if problem is not None:
        raise InvalidInput(problem, field="weights")
    expected = {t.name: t for t in arch.tensors}
    try:
        tensors = safetensors.numpy.load(data)
    except Exception as exc:  # the library checks offsets and sizes against the header
        raise InvalidInput(f"weights: corrupt safetensors data ({exc})", field="weights") from None
    for name, t in expected.items():
        if t.dtype == "F32" and not np.isfinite(tensors[name]).all():
            raise InvalidInput(f"weights tensor {name!r} holds NaN or infinite values", field="weights")
        if t.kind == "running_var" and bool((tensors[name] < 0).any()):
            raise InvalidInput(f"weights tensor {name!r} (a running variance) holds negative values",
                               field="weights")
        if t.kind == "num_batches_tracked" and bool((tensors[name] < 0).any()):
            raise InvalidInput(f"weights tensor {name!r} (a step counter) is negative", field="weights")


@dataclass(frozen=True)
class ParsedDataset:
    canonical: bytes  # safetensors: x_* float32, y_* int64
    summary: dict[str, Any]


def _load_arrays(data: bytes, cfg: Settings) -> dict[str, np.ndarray]:
    max_bytes = cfg.max_upload_bytes
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                infos = zf.infolist()
        except zipfile.BadZipFile:
            raise InvalidInput("file is not a valid .npz archive", field="file") from None
        if len(infos) > cfg.max_tensors:
            raise InvalidInput(f"file holds {len(infos)} arrays, more than the limit of "
                               f"{cfg.max_tensors}", field="file")
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            checked_members(zf, ".npz", "file", max_members=cfg.max_tensors,
                            max_expanded=MAX_NPZ_EXPANSION * max_bytes)
        strangers = [i.filename for i in infos if not i.filename.endswith(".npy")]
        if strangers:
            raise InvalidInput(f"file is a zip archive but not an .npz: member {strangers[0]!r} is "
                               "not a .npy array (PyTorch archives hold pickles and are refused)",
                               field="file")
        try:
            npz = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as exc:
            raise InvalidInput(f"file is not a readable .npz archive ({exc})", field="file") from None
        arrays: dict[str, np.ndarray] = {}
        with npz:
            for key in npz.files:
                member = f"{key}.npy"
                try:
                    value = npz[key]
                except ValueError as exc:
                    # numpy raises this for object arrays, which would need pickle
                    raise InvalidInput(f"file: .npz member {member!r} must be a numeric array, not "
                                       f"pickled objects ({exc})", field="file") from None
                except Exception as exc:
                    raise InvalidInput(f"file: .npz member {member!r} is not readable ({exc})",
                                       field="file") from None
                # np.load hands back a member without the .npy magic as raw bytes
                if not isinstance(value, np.ndarray):
                    raise InvalidInput(f"file: .npz member {member!r} is not a .npy array (it has "
                                       "no .npy header)", field="file")
                if value.dtype.kind not in NUMERIC_KINDS:
                    raise InvalidInput(f"file: .npz member {member!r} has dtype {value.dtype}; a "
                                       "numeric dtype is required", field="file")
                arrays[key] = value
        return arrays
    header, _ = read_header(data, "file", header_limits(cfg))
    for name, info in header.items():
        if info.dtype in ("BF16", "F8_E4M3", "F8_E5M2"):
            raise InvalidInput(f"file: array {name!r} has dtype {info.dtype}; use float32",
                               field="file")
    try:
        return dict(safetensors.numpy.load(data))
    except Exception as exc:
        raise InvalidInput(f"file: corrupt safetensors data ({exc})", field="file") from None


def parse_dataset(data: bytes, cfg: Settings, *,
                  validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
                  split_seed: int = DEFAULT_SPLIT_SEED) -> ParsedDataset:
    max_classes = cfg.max_classes
    arrays = _load_arrays(data, cfg)
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise InvalidInput(f"file lacks array {missing[0]!r} (needs {list(REQUIRED_KEYS)}, "
                           f"optional {list(OPTIONAL_KEYS)})", field="file")
    unknown = sorted(set(arrays) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise InvalidInput(f"file holds unknown array {unknown[0]!r}", field="file")
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise InvalidInput("file must hold both x_val and y_val, or neither", field="file")
    splits = ["train", "test"] + (["val"] if "x_val" in arrays else [])

    out: dict[str, np.ndarray] = {}
    sample_shape: tuple[int, ...] | None = None
    top_label = -1
    for split in splits:
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype.kind not in "fiu":
            raise InvalidInput(f"x_{split} has dtype {x.dtype}; a real numeric dtype is required",
                               field="file")
        if y.dtype.kind not in "iu":
            raise InvalidInput(f"y_{split} has dtype {y.dtype}; integer class labels are required",
                               field="file")
        if x.ndim > cfg.max_tensor_rank:
            raise InvalidInput(f"x_{split} has rank {x.ndim}, more than the limit of "
                               f"{cfg.max_tensor_rank}", field="file")
        if x.ndim < 2:
            raise InvalidInput(f"x_{split} must be (N, ...) with one sample per row, got shape "
                               f"{list(x.shape)}", field="file")
        if y.ndim != 1:
            raise InvalidInput(f"y_{split} must be one-dimensional, got shape {list(y.shape)}",
                               field="file")
        if x.shape[0] == 0:
            raise InvalidInput(f"x_{split} is empty", field="file")
        if x.shape[0] != y.shape[0]:
            raise InvalidInput(f"x_{split} has {x.shape[0]} samples but y_{split} has {y.shape[0]} "
                               "labels", field="file")
        if sample_shape is None:
            sample_shape = tuple(x.shape[1:])
        elif tuple(x.shape[1:]) != sample_shape:
            raise InvalidInput(f"x_{split} samples have shape {list(x.shape[1:])}, x_train's have "
                               f"{list(sample_shape)}", field="file")
        xf = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(xf).all():
            raise InvalidInput(f"x_{split} holds NaN or infinite values", field="file")
        if int(y.min()) < 0:
            raise InvalidInput(f"y_{split} holds a negative label ({int(y.min())})", field="file")
        top_label = max(top_label, int(y.max()))
        out[f"x_{split}"], out[f"y_{split}"] = xf, np.ascontiguousarray(y, dtype=np.int64)

    classes = top_label + 1
    if classes > max_classes:
        raise InvalidInput(f"labels go up to {top_label}; at most {max_classes} classes are allowed",
                           field="file")
    if classes < 2:
        raise InvalidInput("labels hold a single class; at least 2 are needed", field="file")
    assert sample_shape is not None
    n_train = int(out["y_train"].shape[0])
    if "y_val" in out:
        split_sizes = {"train": n_train, "validation": int(out["y_val"].shape[0])}
        validation: dict[str, Any] = {"source": "given"}
    else:
        n_val = validation_size(n_train, validation_fraction)
        if n_val < 1 or n_val >= n_train:
            raise InvalidInput(f"validation_fraction {validation_fraction} of {n_train} training "
                               "samples leaves no validation or no training sample", field="file")
        split_sizes = {"train": n_train - n_val, "validation": n_val}
        validation = {"source": "seeded split of the training set",
                      "fraction": validation_fraction, "seed": split_seed}
    summary = {
        "source": "upload",
        "sample_shape": list(sample_shape),
        "classes": classes,
        "splits": {**split_sizes, "test": int(out["y_test"].shape[0])},
        "validation": validation,
        "dtype": "float32",
        "preprocessing": "as uploaded, cast to float32",
    }
    return ParsedDataset(canonical=safetensors.numpy.save(out), summary=summary)


def builtin_summary(name: str, datasets_dir: Any, validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
                    split_seed: int = DEFAULT_SPLIT_SEED) -> dict[str, Any]:
    if name not in BUILTIN_DATASETS:
        raise InvalidInput(f"unknown built-in dataset {name!r}; choose one of {list(BUILTIN_DATASETS)}",
                           field="builtin")
    ds = builtin_datasets.get(name)
    builtin_datasets.verify(name, datasets_dir)  # raises DatasetUnavailable
    n_val = validation_size(ds.train_size, validation_fraction)
    return {
        "source": f"builtin:{name}",
        "sample_shape": list(ds.sample_shape),
        "classes": ds.num_classes,
        "splits": {"train": ds.train_size - n_val, "validation": n_val, "test": ds.test_size},
        "validation": {"source": "seeded split of the training set", "fraction": validation_fraction,
                       "seed": split_seed},
        "dtype": "float32",
        "preprocessing": ds.preprocessing,
    }


def check_compatible(arch: Architecture, dataset_summary: dict[str, Any]) -> None:
    """A job's model must accept the dataset's samples and cover its classes."""
    sample = tuple(dataset_summary["sample_shape"])
    flat_ok = bool(arch.config.get("flatten_input")) and prod(sample) == prod(arch.input_shape)
    if sample != arch.input_shape and not flat_ok:
        raise InvalidInput(f"dataset samples have shape {list(sample)}, {arch.name} expects "
                           f"{list(arch.input_shape)}", field="dataset_id")
    if dataset_summary["classes"] > arch.num_classes:
        raise InvalidInput(f"dataset has {dataset_summary['classes']} classes, {arch.name} outputs "
                           f"{arch.num_classes}", field="dataset_id")
