"""The torch module of an uploaded graph: the normalised program of core.graph_program run node
by node with the allowlisted aten ops, its tensors held under the user's own state-dict names.

Each BatchNorm whose tensors share a prefix (`bn1.weight`, `bn1.running_mean`, …) becomes a real
BatchNorm module at that path, so train mode updates its statistics and step counter as the
user's module would, and the shared BatchNorm recalibration finds it. The graph's training flags
(an archive exported in eval mode says `training=False`) follow the module's mode instead. In-place
ops run out of place and rebind their input, which is what a later reader of that input saw."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from core.graph_program import ALLOWED_OPS, ROLES, TRAINING_ARGUMENT


def _resolve(op: str) -> Callable[..., Any]:
    _, name, overload = op.split(".")
    return getattr(getattr(torch.ops.aten, name.removesuffix("_")), overload)  # type: ignore[no-any-return]


# in-place ops (relu_, add_, …) resolve to their out-of-place twins
OPS: dict[str, Callable[..., Any]] = {op: _resolve(op) for op in sorted(ALLOWED_OPS)}
IN_PLACE = frozenset(op for op in ALLOWED_OPS if op.split(".")[1].endswith("_"))


class GraphBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over dimension 1 of an input of any rank, as aten.batch_norm computes it."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"BatchNorm needs an input of rank 2 or more, got {input.dim()}")


def _container(root: nn.Module, path: list[str]) -> nn.Module:
    module = root
    for part in path:
        child = module._modules.get(part)
        if child is None:
            child = nn.Module()
            module.add_module(part, child)
        module = child
    return module


class GraphModel(nn.Module):
    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        program = config["program"]
        self.nodes: list[dict[str, Any]] = list(program["nodes"])
        for node in self.nodes:
            if node["op"] not in OPS:  # the API checked; a stored program is checked again here
                raise ValueError(f"graph: op {node['op']!r} is not on the allowlist")
        self.input_name: str = program["input"]["name"]
        self.output_name: str = program["output"]
        specs = {t["graph"]: t for t in program["tensors"]}
        by_name = {t["name"]: t for t in program["tensors"]}
        # BatchNorm nodes whose tensors share a prefix become modules at that prefix
        self.norms: dict[int, str] = {}
        taken: set[str] = set()
        for i, node in enumerate(self.nodes):
            if node["op"] != "aten.batch_norm.default":
                continue
            refs = [a["t"] if isinstance(a, dict) and "t" in a else None for a in node["args"][1:5]]
            names = [specs[r]["name"] if r in specs else None for r in refs]
            prefix = next((n.rsplit(".", 1)[0] for n in names if n), None)
            want = [f"{prefix}.{leaf}" for leaf in ("weight", "bias", "running_mean", "running_var")]
            if prefix is None or names[2:] != want[2:] or names[0] not in (None, want[0]) \
                    or names[1] not in (None, want[1]) or any(n in taken for n in names if n):
                continue
            channels = by_name[want[2]]["shape"][0]
            momentum, eps = float(node["args"][6]), float(node["args"][7])
            norm = GraphBatchNorm(channels, eps=eps, momentum=momentum, affine=names[0] is not None)
            if f"{prefix}.num_batches_tracked" not in by_name:
                norm.register_buffer("num_batches_tracked", None)  # the user's BatchNorm kept none
            *path, leaf = prefix.split(".")
            _container(self, path).add_module(leaf, norm)
            taken.update(n for n in names if n)
            taken.add(f"{prefix}.num_batches_tracked")
            self.norms[i] = prefix
        for t in program["tensors"]:
            if t["name"] in taken:
                continue
            *path, leaf = t["name"].split(".")
            holder = _container(self, path)
            if t["kind"] in ("running_mean", "running_var", "num_batches_tracked"):
                dtype = torch.int64 if t["kind"] == "num_batches_tracked" else torch.float32
                holder.register_buffer(leaf, torch.zeros(t["shape"], dtype=dtype))
            else:
                holder.register_parameter(leaf, nn.Parameter(torch.zeros(t["shape"])))
        # where each graph tensor lives: read at every call, so torch.func.functional_call's
        # substitutes are what the graph computes with
        self.homes: list[tuple[str, nn.Module, str]] = []
        for gname, t in specs.items():
            *path, leaf = t["name"].split(".")
            self.homes.append((gname, _container(self, path), leaf))
        self.roles = ROLES
        # the values each node reads for the last time: dropped after it, so a large batch's
        # activations are freed as they would be in eager code (not held to the end of forward)
        last: dict[str, int] = {}

        def reads(a: Any) -> list[str]:
            if isinstance(a, dict):
                return [a["t"]] if "t" in a else list(a.get("ts", []))
            if isinstance(a, list):
                return [n for v in a for n in reads(v)]
            return []

        for i, node in enumerate(self.nodes):
            for a in [*node["args"], *node["kwargs"].values()]:
                for name in reads(a):
                    last[name] = i
        self.dying: list[list[str]] = [[] for _ in self.nodes]
        for name, i in last.items():
            if name != self.output_name:
                self.dying[i].append(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, Any] = {g: getattr(module, leaf) for g, module, leaf in self.homes}
        env[self.input_name] = x

        def value(a: Any) -> Any:
            if isinstance(a, dict):
                if "t" in a:
                    return env[a["t"]]
                if "ts" in a:
                    return [env[n] for n in a["ts"]]
                if "s" in a:
                    return env[a["s"]]
            if isinstance(a, list):
                return [value(v) for v in a]
            return a

        for i, node in enumerate(self.nodes):
            op = node["op"]
            if i in self.norms:
                norm = self.get_submodule(self.norms[i])
                env[node["out"]] = norm(env[node["args"][0]["t"]])
                for name in self.dying[i]:
                    env.pop(name, None)
                continue
            args = [value(a) for a in node["args"]]
            kwargs = {k: value(v) for k, v in node["kwargs"].items()}
            flag = TRAINING_ARGUMENT.get(op)
            # a BatchNorm without running statistics normalises by the batch in either mode
            if flag is not None and not (op == "aten.batch_norm.default" and args[3] is None):
                name, position = flag
                if name in kwargs:
                    kwargs[name] = self.training
                elif len(args) > position:
                    args[position] = self.training
            env[node["out"]] = OPS[op](*args, **kwargs)
            if op in IN_PLACE and node["args"] and isinstance(node["args"][0], dict) \
                    and "t" in node["args"][0]:
                env[node["args"][0]["t"]] = env[node["out"]]
            for name in self.dying[i]:
                env.pop(name, None)
        out: torch.Tensor = env[self.output_name]
        return out
