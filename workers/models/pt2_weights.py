"""The user's own torch.export archive with its weights replaced by a job's: the `pt2` download
of an uploaded graph. The graph JSON, the signature and every other member stay byte for byte
as uploaded (this code never reads `sample_inputs`, the user's pickle, it copies it); each
tensor of the program gets a fresh member with its new bytes, contiguous, at storage offset 0,
and the weights config says so. `torch.export.load` on the user's side opens the result."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from typing import Any

import torch

PREFIX = "thresher_weight_"


def _contiguous_strides(shape: list[int]) -> list[int]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return list(reversed(strides))


def with_weights(archive: bytes, program: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(archive))
    names = src.namelist()
    config_name = next(n for n in names if n.endswith("/data/weights/model_weights_config.json"))
    root = config_name.split("/", 1)[0]
    config = json.loads(src.read(config_name))
    replaced: dict[str, bytes] = {}
    for i, t in enumerate(program["tensors"]):
        entry = config["config"][t["name"]]
        value = tensors[t["name"]].detach().to("cpu").contiguous()
        path = f"{PREFIX}{i}"
        entry["path_name"] = path
        meta = entry["tensor_meta"]
        meta["strides"] = [{"as_int": s} for s in _contiguous_strides(list(value.shape))]
        meta["storage_offset"] = {"as_int": 0}
        replaced[f"{root}/data/weights/{path}"] = value.view(-1).view(torch.uint8).numpy().tobytes() \
            if value.numel() else b""
    still_used = {f"{root}/data/weights/{e['path_name']}" for e in config["config"].values()}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            if info.filename == config_name:
                out.writestr(info, json.dumps(config))
            elif "/data/weights/" in info.filename and info.filename not in still_used:
                continue  # an uploaded weight every entry now reads from a fresh member
            else:
                out.writestr(info, src.read(info))
        for name, data in replaced.items():
            out.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()
