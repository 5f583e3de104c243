"""Reading a torch.export archive (.pt2) without torch, pickle or exec: only the graph JSON, the
weights config and the raw weight bytes are read; `sample_inputs` (a pickle) and everything else
in the archive is never opened. What comes out is the graph's architecture (a normalised program
checked against the op allowlist, core.graph_program) and its weights as canonical safetensors
under the module's own state-dict names."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np
import safetensors.numpy

from core.architectures import Architecture
from core.errors import InvalidInput
from core.graph_program import GraphLimits, graph_architecture, program_from_export
from core.settings import Settings
from core.zip_members import checked_members, read_member

# an archive may hold this many members besides one per tensor (graph, configs, version files)
EXTRA_MEMBERS = 64
MAX_EXPANSION = 4  # inflated size at most this many times the upload limit
MAX_JSON_DEPTH = 64
# a node of torch.export's JSON, stack trace included, is well under this: the graph's size is
# bounded before it is parsed (a 10⁶-node graph is refused unread)
BYTES_PER_NODE = 4096
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {"F32": np.dtype("<f4"), "I64": np.dtype("<i8")}


@dataclass(frozen=True)
class ParsedGraph:
    architecture: Architecture
    weights: bytes  # safetensors, state-dict names


def is_zip(data: bytes) -> bool:
    return data[:4] == b"PK\x03\x04"


def _json(data: bytes, member: str) -> dict[str, object]:
    # json's parser recurses per level of nesting: refuse deep documents before it does
    depth = best = 0
    for ch in data:
        if ch in b"[{":
            depth += 1
            best = max(best, depth)
            if best > MAX_JSON_DEPTH:
                raise InvalidInput(f"file: {member} nests deeper than {MAX_JSON_DEPTH} levels",
                                   field="file")
        elif ch in b"]}":
            depth -= 1
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"file: {member} is not valid JSON ({exc})", field="file") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"file: {member} is not a JSON object", field="file")
    return value


def _strided(raw: bytes, dtype: np.dtype[Any], shape: list[int], strides: list[int], offset: int,
             name: str) -> np.ndarray:
    """The tensor the bytes hold under torch's (sizes, strides, storage offset), copied out
    contiguous; refused when any element it addresses lies outside the bytes."""
    itemsize = dtype.itemsize
    if len(raw) % itemsize:
        raise InvalidInput(f"file: tensor {name!r} has {len(raw)} bytes, not a whole number of "
                           f"{dtype} elements", field="file")
    storage = np.frombuffer(raw, dtype=dtype)
    if len(strides) != len(shape) or any(s < 0 for s in strides) or offset < 0:
        raise InvalidInput(f"file: tensor {name!r} has malformed strides or storage offset",
                           field="file")
    if prod(shape) == 0:
        return np.zeros(shape, dtype=dtype)
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
    if last >= storage.size:
        raise InvalidInput(f"file: tensor {name!r} addresses element {last} of a storage of "
                           f"{storage.size}: its strides or offset point past its bytes", field="file")
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=shape,
                                           strides=[s * itemsize for s in strides], writeable=False)
    return view.copy(order="C")  # not ascontiguousarray: it turns a 0-d step counter into 1-d


def parse_pt2(data: bytes, cfg: Settings) -> ParsedGraph:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise InvalidInput("file is not a valid zip archive (.pt2)", field="file") from None
    with zf:
        # the graph's size first: a graph of 10⁶ nodes is refused by the limit it breaks
        for info in zf.infolist():
            if info.filename.endswith("/models/model.json") and \
                    info.file_size > BYTES_PER_NODE * cfg.max_graph_nodes:
                raise InvalidInput(f"file: {info.filename} is {info.file_size} bytes, more than a "
                                   f"graph of {cfg.max_graph_nodes} nodes (THRESHER_MAX_GRAPH_NODES) "
                                   "can take", field="file")
        infos = checked_members(zf, ".pt2", "file", max_members=cfg.max_tensors + EXTRA_MEMBERS,
                                max_expanded=MAX_EXPANSION * cfg.max_upload_bytes)
        by_name = {i.filename: i for i in infos}
        roots = sorted({n.split("/", 1)[0] for n in by_name if "/" in n})
        graphs = [r for r in roots if f"{r}/models/model.json" in by_name]
        if len(graphs) != 1:
            raise InvalidInput("file is not a torch.export archive: it needs exactly one "
                               "<name>/models/model.json (save with torch.export.save)", field="file")
        root = graphs[0]

        def member(path: str) -> bytes:
            info = by_name.get(f"{root}/{path}")
            if info is None:
                raise InvalidInput(f"file: the archive lacks {path}", field="file")
            return read_member(zf, info, ".pt2", "file")

        if member("byteorder").strip() != b"little":
            raise InvalidInput("file: only little-endian archives are supported", field="file")
        extra_models = [n for n in by_name if n.startswith(f"{root}/models/") and n != f"{root}/models/model.json"]
        if extra_models:
            raise InvalidInput(f"file: the archive holds more than one program ({extra_models[0]!r}); "
                               "save one exported program", field="file")
        model = _json(member("models/model.json"), "models/model.json")
        weights_config = _json(member("data/weights/model_weights_config.json"),
                               "data/weights/model_weights_config.json")
        constants = by_name.get(f"{root}/data/constants/model_constants_config.json")
        if constants is not None:
            consts = _json(read_member(zf, constants, ".pt2", "file"), "model_constants_config.json")
            if consts.get("config"):
                raise InvalidInput("file: the archive holds lifted constants; they are not "
                                   "supported (make them parameters or buffers)", field="file")
        try:
            program = program_from_export(model, weights_config,
                                          GraphLimits(max_nodes=cfg.max_graph_nodes,
                                                      max_tensors=cfg.max_tensors))
        except (TypeError, AttributeError, KeyError, IndexError, ValueError) as exc:
            # a field of an unexpected JSON type that the checks above did not name
            raise InvalidInput(f"file: models/model.json is not a torch.export graph this reader "
                               f"understands ({type(exc).__name__}: {exc})", field="file") from None
        config = weights_config["config"]
        assert isinstance(config, dict)
        tensors: dict[str, np.ndarray] = {}
        for t in program["tensors"]:
            entry = config[t["name"]]
            if entry.get("use_pickle") is not False:
                raise InvalidInput(f"file: tensor {t['name']!r} is stored as a pickle (use_pickle); "
                                   "pickles are never read", field="file")
            path = entry.get("path_name")
            if not isinstance(path, str) or "/" in path or path in ("", ".", ".."):
                raise InvalidInput(f"file: tensor {t['name']!r} has a malformed path_name", field="file")
            meta = entry["tensor_meta"]
            dtype = NUMPY_DTYPES["I64" if t["kind"] == "num_batches_tracked" else "F32"]
            try:
                strides = [int(s["as_int"]) for s in meta["strides"]]
                offset = int(meta["storage_offset"]["as_int"])
            except (KeyError, TypeError, ValueError):
                raise InvalidInput(f"file: tensor {t['name']!r} has malformed strides or storage "
                                   "offset", field="file") from None
            if prod(t["shape"]) > cfg.max_tensor_elements or len(t["shape"]) > cfg.max_tensor_rank:
                raise InvalidInput(f"file: tensor {t['name']!r} of shape {t['shape']} is over the "
                                   "size limits", field="file")
            array = _strided(member(f"data/weights/{path}"), dtype, t["shape"], strides, offset, t["name"])
            if dtype.kind == "f" and not np.isfinite(array).all():
                raise InvalidInput(f"file: tensor {t['name']!r} holds NaN or infinite values", field="file")
            if t["kind"] == "running_var" and bool((array < 0).any()):
                raise InvalidInput(f"file: tensor {t['name']!r} (a running variance) holds negative "
                                   "values", field="file")
            tensors[t["name"]] = array
    arch = graph_architecture({"base": "graph", "program": program})
    return ParsedGraph(architecture=arch, weights=safetensors.numpy.save(tensors))
