"""Reading a safetensors header (names, dtypes, shapes, metadata) from bytes, bounded, without
loading any tensor. The data itself is read by the safetensors library, which checks the offsets."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from math import prod

from core.errors import InvalidInput

MAX_HEADER_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class HeaderLimits:
    max_tensors: int = 1024
    max_rank: int = 8
    max_elements: int = 1 << 31


def read_header(data: bytes, field: str, limits: HeaderLimits | None = None
                ) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    hint = (
        f"{field} is not a safetensors file"
        " (pickled checkpoints from torch.save are refused: they can run code; save with"
        " safetensors.torch.save_file instead)"
    )
    if len(data) < 8:
        raise InvalidInput(hint, field=field)
    (size,) = struct.unpack("<Q", data[:8])
    if size > MAX_HEADER_BYTES or 8 + size > len(data):
        raise InvalidInput(hint, field=field)
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidInput(hint, field=field) from None
    if not isinstance(header, dict):
        raise InvalidInput(hint, field=field)
    limits = limits or HeaderLimits()
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise InvalidInput(f"{field}: malformed __metadata__", field=field)
    if len(header) > limits.max_tensors:
        raise InvalidInput(f"{field} holds {len(header)} tensors, more than the limit of "
                           f"{limits.max_tensors}", field=field)
    tensors: dict[str, TensorInfo] = {}
    for name, info in header.items():
        if not isinstance(info, dict) or "dtype" not in info or "shape" not in info:
            raise InvalidInput(f"{field}: malformed header entry for tensor {name!r}", field=field)
        shape = info["shape"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise InvalidInput(f"{field}: tensor {name!r} has a malformed shape", field=field)
        if len(shape) > limits.max_rank:
            raise InvalidInput(f"{field}: tensor {name!r} has rank {len(shape)}, more than the limit "
                               f"of {limits.max_rank}", field=field)
        if prod(shape) > limits.max_elements:
            raise InvalidInput(f"{field}: tensor {name!r} has {prod(shape)} elements, more than the "
                               f"limit of {limits.max_elements}", field=field)
        tensors[name] = TensorInfo(dtype=str(info["dtype"]), shape=tuple(shape))
    return tensors, {str(k): str(v) for k, v in metadata.items()}
