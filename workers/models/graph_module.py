"""The torch module of an uploaded graph: the normalised program of core.graph_program run node
by node with the allowlisted aten ops, its tensors held under the user's own state-dict names.

Each convolution and linear node that is one of the user's layers (core.graph_program.layer_nodes)
becomes a real nn.Conv / nn.Linear at its weight's path, looked up when the node runs, so forward
hooks see it and a method may replace it by other modules (tucker's decompositions, mpd's
block-diagonal layers). Each BatchNorm whose tensors share a prefix (`bn1.weight`,
`bn1.running_mean`, …) becomes a real BatchNorm module at that path, so train mode updates its
statistics and step counter as the user's module would, and the shared BatchNorm recalibration
finds it. The graph's training flags
(an archive exported in eval mode says `training=False`) follow the module's mode instead. In-place
ops run out of place and rebind their input, which is what a later reader of that input saw."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.graph_program import ALLOWED_OPS, ROLES, TRAINING_ARGUMENT, LayerNode, layer_nodes


def _resolve(op: str) -> Callable[..., Any]:
    _, name, overload = op.split(".")
    resolved = getattr(getattr(torch.ops.aten, name.removesuffix("_")), overload)
    # the overload's C++ callable, without OpOverload.__call__'s Python frame (same op)
    return getattr(resolved, "_op", resolved)  # type: ignore[no-any-return]


# in-place ops (relu_, add_, …) resolve to their out-of-place twins
OPS: dict[str, Callable[..., Any]] = {op: _resolve(op) for op in sorted(ALLOWED_OPS)}
IN_PLACE = frozenset(op for op in ALLOWED_OPS if op.split(".")[1].endswith("_"))
# the ops whose second argument is a layer's weight (convolutions, linear)
WEIGHTED_OPS = frozenset(op for op, roles in ROLES.items() if roles.get("weight") != "batchnorm")


@dataclass
class _Step:
    call: Callable[..., Any]  # the aten op (a module node calls the module at `at` instead)
    args: list[Any]  # constants in place, None where a reference goes
    refs: list[tuple[int, str]]  # (position, name) of the tensors and sizes the node reads
    nested: list[tuple[int, Any]]  # (position, argument) of lists that hold references
    kwargs: dict[str, Any]
    flag: tuple[str, int] | None  # the training flag the module's mode replaces
    out: str
    rebind: str | None  # an in-place op's input, which later readers see as its output
    dying: tuple[str, ...]
    module: bool  # the node runs as the module at `at` (BatchNorm, Conv, Linear) on its input
    weighted: bool  # a convolution or linear op: args[1] is its weight
    at: tuple[dict[str, nn.Module | None], str] | None = None  # (the parent's _modules, the child's name)


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


_CONV_MODULES: dict[str, type[nn.Module]] = {"aten.conv1d.default": nn.Conv1d,
                                             "aten.conv2d.default": nn.Conv2d}


def _layer_module(layer: LayerNode) -> nn.Module | None:
    """The nn.Conv / nn.Linear a layer node stands for (None: out channels its groups do not
    divide; the op says so when it runs)."""
    if layer.op == "aten.linear.default":
        return nn.Linear(layer.shape[1], layer.shape[0], bias=layer.bias)
    try:
        return _CONV_MODULES[layer.op](
            layer.shape[1] * layer.groups, layer.shape[0], tuple(layer.shape[2:]),
            stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
            groups=layer.groups, bias=layer.bias)
    except ValueError:
        return None


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
        # convolutions and linear ops as real modules at their weight's path (core.graph_program
        # says which): hooks see them, and a method may replace them (tucker's decompositions)
        self.layers: dict[int, str] = {}
        for i, node_layer in layer_nodes(program).items():
            made = _layer_module(node_layer)
            if made is None or node_layer.path in self.norms.values():
                continue
            *parents, leaf = node_layer.path.split(".")
            holder = _container(self, parents)
            if leaf in holder._modules:
                continue
            holder.add_module(leaf, made)
            taken.update({f"{node_layer.path}.weight", f"{node_layer.path}.bias"})
            self.layers[i] = node_layer.path
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

        self.steps = [self._compile(i, node) for i, node in enumerate(self.nodes)]
        # where each tensor an op reads lives (a BatchNorm module reads its own): looked up in
        # the holder's parameter or buffer dict at every call, which is where
        # torch.func.functional_call puts its substitutes (nn.Module.__getattr__ is slower)
        read = {name for step in self.steps if not step.module for _, name in step.refs}
        read |= {n for step in self.steps if not step.module
                 for a in [*(raw for _, raw in step.nested), *step.kwargs.values()] for n in reads(a)}
        self.homes: list[tuple[str, dict[str, Any], str]] = []
        for gname, t in specs.items():
            if gname not in read:
                continue
            *path, leaf = t["name"].split(".")
            holder = _container(self, path)
            store = holder._parameters if leaf in holder._parameters else holder._buffers
            self.homes.append((gname, store, leaf))
        # shown every node's tensor output while set: what forward hooks on a built-in's modules
        # see (workers.runtime.evaluation sizes its batches by it); a graph has no such modules
        self.visit_outputs: Callable[[torch.Tensor], None] | None = None
        # shown (weight, output) of every convolution and linear op while set (workers.models.flops
        # counts multiply-accumulates by it, as it does by hooks on a built-in's Linear and Conv)
        self.visit_weighted: Callable[[torch.Tensor, torch.Tensor], None] | None = None

    def _compile(self, i: int, node: dict[str, Any]) -> _Step:
        """A node as a call with its constants in place and the positions its references fill:
        resolving each argument at every call cost as much as the ops at batch 1."""
        op = node["op"]
        args: list[Any] = []
        refs: list[tuple[int, str]] = []
        nested: list[tuple[int, Any]] = []
        for pos, a in enumerate(node["args"]):
            if isinstance(a, dict) and ("t" in a or "s" in a):
                refs.append((pos, str(a["t"] if "t" in a else a["s"])))
                args.append(None)
            elif isinstance(a, (dict, list)):
                nested.append((pos, a))
                args.append(None)
            else:
                args.append(a)
        flag = TRAINING_ARGUMENT.get(op)
        # a BatchNorm without running statistics normalises by the batch in either mode
        if op == "aten.batch_norm.default" and len(args) > 3 and args[3] is None and \
                not any(pos == 3 for pos, _ in refs):
            flag = None
        first = node["args"][0] if node["args"] else None
        rebind = first["t"] if op in IN_PLACE and isinstance(first, dict) and "t" in first else None
        path = self.norms.get(i, self.layers.get(i))
        at = None
        if path is not None:
            *parents, leaf = path.split(".")
            at = (self.get_submodule(".".join(parents))._modules, leaf)
        return _Step(call=OPS[op], args=args, refs=refs, nested=nested,
                     kwargs=dict(node["kwargs"]), flag=flag, out=node["out"], rebind=rebind,
                     dying=tuple(self.dying[i]), module=path is not None,
                     weighted=op in WEIGHTED_OPS and path is None, at=at)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, Any] = {g: store[leaf] for g, store, leaf in self.homes}
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

        training = self.training
        # one flag read per node in the common case, where nothing is visiting
        visiting = self.visit_outputs is not None or self.visit_weighted is not None
        for step in self.steps:
            if step.at is not None:
                # the module at the node's path, looked up now: a method may have replaced it
                # (BatchNorm: its mode, momentum and step counter)
                modules, leaf = step.at
                layer: Any = modules[leaf]
                result = layer(env[step.refs[0][1]])
                if visiting:
                    self._visit(step, None, result)
            else:
                args = step.args.copy()
                for pos, name in step.refs:
                    args[pos] = env[name]
                for pos, raw in step.nested:
                    args[pos] = value(raw)
                kwargs = {k: value(v) for k, v in step.kwargs.items()} if step.kwargs else {}
                if step.flag is not None:
                    name, position = step.flag
                    if name in kwargs:
                        kwargs[name] = training
                    elif len(args) > position:
                        args[position] = training
                result = step.call(*args, **kwargs)
                if visiting:
                    self._visit(step, args, result)
                # let go of the inputs now: a value this node read for the last time is freed
                # below, as eager code frees a temporary, not when the next node rebinds `args`
                # (holding them one node longer cost 5-10 % at batch 256: fresh pages to fault in)
                args = kwargs = None  # type: ignore[assignment]
            env[step.out] = result
            if step.rebind is not None:
                env[step.rebind] = result
            for name in step.dying:
                env.pop(name, None)
        out: torch.Tensor = env[self.output_name]
        return out

    def _visit(self, step: _Step, args: list[Any] | None, result: Any) -> None:
        if not isinstance(result, torch.Tensor):
            return
        if self.visit_outputs is not None:
            self.visit_outputs(result)
        if self.visit_weighted is not None and step.weighted and args is not None:
            self.visit_weighted(args[1], result)
