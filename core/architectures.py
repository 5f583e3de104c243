"""Architecture descriptions: the tensors a model must have, as pure data.

The API validates uploaded weights against these tables without importing torch; workers build the
torch module through `builder`, an import path resolved only in the worker process. Operators add
architectures as Python entry points in the group ``thresher.architectures`` whose object is an
`Architecture` (its module must not import torch at import time).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import entry_points
from math import prod

ENTRY_POINT_GROUP = "thresher.architectures"
PRUNABLE_KINDS = frozenset({"linear", "conv1d", "conv2d", "conv3d"})
# BatchNorm's running statistics and step counter: state the model computes with but that no
# optimizer trains; they are not parameters (not counted, never pruned) yet every checkpoint holds them
BUFFER_KINDS = frozenset({"running_mean", "running_var", "num_batches_tracked"})
# dtype of each kind as safetensors names it; every other kind is a float32 parameter
KIND_DTYPES = {"num_batches_tracked": "I64"}
KINDS = PRUNABLE_KINDS | BUFFER_KINDS | {"bias", "batchnorm", "other"}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    # linear | conv1d | conv2d | conv3d | bias | batchnorm (its weight and bias) | other, or a
    # buffer: running_mean | running_var | num_batches_tracked
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"tensor {self.name}: unknown kind {self.kind!r} ({', '.join(sorted(KINDS))})")

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def prunable(self) -> bool:
        return self.kind in PRUNABLE_KINDS

    @property
    def buffer(self) -> bool:
        return self.kind in BUFFER_KINDS

    @property
    def dtype(self) -> str:
        """The safetensors dtype a checkpoint must store this tensor in."""
        return KIND_DTYPES.get(self.kind, "F32")


@dataclass(frozen=True)
class Architecture:
    name: str
    description: str
    input_shape: tuple[int, ...]  # one sample, e.g. (1, 28, 28)
    num_classes: int
    tensors: tuple[Tensor, ...]
    builder: str  # "module:callable" returning a torch.nn.Module with exactly these tensors
    config: dict[str, object] = field(default_factory=dict)

    @property
    def parameters(self) -> tuple[Tensor, ...]:
        """The trained tensors: every tensor but the buffers."""
        return tuple(t for t in self.tensors if not t.buffer)

    @property
    def buffers(self) -> tuple[Tensor, ...]:
        return tuple(t for t in self.tensors if t.buffer)

    @property
    def total_parameters(self) -> int:
        """What a compression ratio divides: parameters only, buffers are not counted."""
        return sum(t.numel for t in self.parameters)

    @property
    def prunable(self) -> tuple[Tensor, ...]:
        return tuple(t for t in self.tensors if t.prunable)

    def tensor(self, name: str) -> Tensor:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def summary(self) -> dict[str, object]:
        return {
            "architecture": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "layers": [
                {"name": t.name, "kind": t.kind, "shape": list(t.shape),
                 "parameters": 0 if t.buffer else t.numel, "prunable": t.prunable,
                 "buffer": t.buffer, "dtype": t.dtype}
                for t in self.tensors
            ],
            "total_parameters": self.total_parameters,
            "prunable_parameters": sum(t.numel for t in self.prunable),
        }


@lru_cache(maxsize=1)
@dataclass(frozen=True)
class Family:
    """Architectures described at any size by a config (a compacted or decomposed model's widths,
    ranks, kept inputs): `table` rebuilds the tensor table from the config a manifest records
    (ValueError naming what is wrong when the config is not one of the family's), and the
    family's builder is called with `config=` that config."""

    name: str
    table: Callable[[Mapping[str, object]], Architecture]


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    _FAMILIES[family.name] = family
    return family


def family_of(arch: Architecture) -> Family | None:
    """The family an architecture belongs to (its config's "base", else its own name), if any."""
    registry()  # the built-in families register as their module loads
    base = arch.config.get("base", arch.name)
    return _FAMILIES.get(str(base))


def from_config(name: str, config: Mapping[str, object]) -> Architecture:
    """Rebuild an architecture from its name and config, as a manifest records them."""
    registry()
    base = config.get("base", name)
    family = _FAMILIES.get(str(base))
    if family is None:
        raise ValueError(f"architecture {name}: not a built-in family ({', '.join(sorted(_FAMILIES))})")
    arch = family.table(config)
    if arch.name != name:
        raise ValueError(f"architecture {name}: its config describes {arch.name}")
    return arch


def registry() -> dict[str, Architecture]:
    """Built-ins first, then installed entry points (a name clash keeps the built-in)."""
    from core import graph_program, zoo  # noqa: F401  (their families register as they load)

    found: dict[str, Architecture] = {a.name: a for a in zoo.BUILTINS}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found:
            continue
        try:
            obj = ep.load()
        except Exception:  # an operator's broken plugin must not take the service down
            log.exception("architecture entry point %s failed to load", ep.name)
            continue
        if not isinstance(obj, Architecture) or obj.name != ep.name:
            log.error("entry point %s is not an Architecture named %s; ignored", ep.value, ep.name)
            continue
        found[obj.name] = obj
    return found


def model_architecture(name: str, summary: Mapping[str, object]) -> Architecture:
    """A stored model's architecture: a registered one by name, or (an uploaded graph) the one its
    summary's `architecture_config` describes."""
    config = summary.get("architecture_config")
    if isinstance(config, Mapping):
        return from_config(name, config)
    return get_architecture(name)


def get_architecture(name: str) -> Architecture:
    from core.errors import InvalidInput

    reg = registry()
    if name not in reg:
        raise InvalidInput(
            f"unknown architecture {name!r}; choose one of {sorted(reg)}", field="architecture"
        )
    return reg[name]
