"""Uploaded graphs as data: a torch.export program's JSON checked against an allowlist of aten ops
and rewritten into a small program the worker interprets (workers.models.graph_module).

Nothing here imports torch or runs anything from the archive: the export's `guards_code` must be
empty and is never executed, custom objects and unknown argument kinds are refused, and every
tensor a node reads must be defined before it (no node reads itself or a later one).

The normalised program (stored as the architecture's config, so downloads rebuild it):

    {"version": 1, "input": {"name": "x", "shape": [null, 1, 28, 28]},
     "tensors": [{"name": "stem.weight", "graph": "p_stem_weight", "kind": "conv2d",
                  "shape": [8, 1, 3, 3]}, ...],
     "nodes": [{"op": "aten.conv2d.default", "args": [...], "kwargs": {...}, "out": "conv2d"}, ...],
     "output": "linear", "num_classes": 10}

An argument is a constant (JSON number, bool, string, null or list of them), {"t": name} (a
tensor), {"ts": [names]} (a list of tensors) or {"s": name} (a symbolic size computed by
`aten.sym_size.int`, the batch dimension of a dynamic export).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.architectures import Architecture, Family, Tensor, family_of, register_family
from core.errors import InvalidInput

PROGRAM_VERSION = 1
# torch.export's serialisation schema majors this reader knows (torch 2.13 writes 8.x)
SCHEMA_MAJORS = frozenset({8})
BUILDER = "workers.models.graph_module:GraphModel"

# The ops an uploaded graph may call (torch.export's training IR of convnets and MLPs). For the
# ops that consume layer weights, which argument is which kind of tensor: that is how the tensor
# table learns what is prunable.
ROLES: dict[str, dict[str, str]] = {
    "aten.conv1d.default": {"weight": "conv1d", "bias": "bias"},
    "aten.conv2d.default": {"weight": "conv2d", "bias": "bias"},
    "aten.linear.default": {"weight": "linear", "bias": "bias"},
    "aten.batch_norm.default": {"weight": "batchnorm", "bias": "batchnorm",
                                "running_mean": "running_mean", "running_var": "running_var"},
}
ALLOWED_OPS: frozenset[str] = frozenset(ROLES) | frozenset({
    "aten.relu.default", "aten.relu_.default", "aten.relu6.default", "aten.hardtanh.default",
    "aten.hardtanh_.default", "aten.silu.default", "aten.silu_.default", "aten.gelu.default",
    "aten.sigmoid.default", "aten.tanh.default", "aten.hardswish.default",
    "aten.hardswish_.default", "aten.hardsigmoid.default", "aten.leaky_relu.default",
    "aten.add.Tensor", "aten.add_.Tensor", "aten.sub.Tensor", "aten.mul.Tensor", "aten.div.Tensor",
    "aten.max_pool2d.default", "aten.avg_pool2d.default", "aten.adaptive_avg_pool2d.default",
    "aten.flatten.using_ints", "aten.view.default", "aten.reshape.default",
    "aten.permute.default", "aten.transpose.int", "aten.contiguous.default",
    "aten.mean.dim", "aten.cat.default", "aten.dropout.default", "aten.dropout_.default",
    "aten.softmax.int", "aten.log_softmax.int", "aten.sym_size.int",
})
# the ops that take a training flag (name, position): the module's mode replaces it as it runs,
# so an archive exported in eval mode still trains its BatchNorms and drops out
TRAINING_ARGUMENT = {"aten.batch_norm.default": ("training", 5), "aten.dropout.default": ("train", 2),
                     "aten.dropout_.default": ("train", 2)}
# schema dtype codes (torch/_export/serde/schema.py ScalarType) → safetensors dtype
DTYPES = {7: "F32", 5: "I64"}
STATE_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
CONSTANT_KINDS = ("as_int", "as_float", "as_bool", "as_string", "as_ints", "as_floats", "as_bools")


@dataclass(frozen=True)
class GraphLimits:
    max_nodes: int
    max_tensors: int


def _fail(problem: str) -> InvalidInput:
    return InvalidInput(f"file: {problem}", field="file")


def _as_int(v: Any, where: str) -> int:
    if isinstance(v, dict) and set(v) == {"as_int"} and isinstance(v["as_int"], int) \
            and not isinstance(v["as_int"], bool):
        return int(v["as_int"])
    raise _fail(f"{where}: a fixed integer size is required, got {str(v)[:80]}")


def _sizes(meta: Any, where: str, allow_symbolic_first: bool = False) -> list[int | None]:
    sizes = meta.get("sizes") if isinstance(meta, Mapping) else None
    if not isinstance(sizes, list):
        raise _fail(f"{where}: no sizes")
    out: list[int | None] = []
    for i, s in enumerate(sizes):
        if allow_symbolic_first and i == 0 and isinstance(s, dict) and "as_expr" in s:
            out.append(None)  # a dynamic batch dimension
        else:
            n = _as_int(s, where)
            if n < 0:
                raise _fail(f"{where}: negative size {n}")
            out.append(n)
    return out


def _argument(arg: Any, where: str, defined: set[str], symbols: set[str]) -> Any:
    """One serialised argument → the program's encoding, refusing anything that is not plain data
    or a reference to a value already defined."""
    if not isinstance(arg, dict) or len(arg) != 1:
        raise _fail(f"{where}: malformed argument {str(arg)[:80]}")
    (kind, value), = arg.items()
    if kind == "as_none":
        return None
    if kind in CONSTANT_KINDS:
        ok = (isinstance(value, (int, float, str, bool)) or
              (isinstance(value, list) and all(isinstance(v, (int, float, bool)) for v in value)))
        if not ok:
            raise _fail(f"{where}: malformed {kind}")
        return value
    if kind == "as_tensor":
        return {"t": _reference(value, where, defined)}
    if kind == "as_tensors":
        if not isinstance(value, list):
            raise _fail(f"{where}: malformed as_tensors")
        return {"ts": [_reference(v, where, defined) for v in value]}
    if kind == "as_sym_int":
        return _sym_int(value, where, symbols)
    if kind == "as_sym_ints":
        if not isinstance(value, list):
            raise _fail(f"{where}: malformed as_sym_ints")
        return [_sym_int(v, where, symbols) for v in value]
    raise _fail(f"{where}: argument kind {kind!r} is not supported (custom objects, graphs, "
                "operators and devices are refused)")


def _reference(value: Any, where: str, defined: set[str]) -> str:
    name = value.get("name") if isinstance(value, dict) else None
    if not isinstance(name, str):
        raise _fail(f"{where}: malformed tensor reference")
    if name not in defined:
        raise _fail(f"{where}: reads tensor {name!r} before it is defined")
    return name


def _sym_int(value: Any, where: str, symbols: set[str]) -> Any:
    if isinstance(value, dict) and set(value) == {"as_int"} and isinstance(value["as_int"], int):
        return value["as_int"]
    if isinstance(value, dict) and set(value) == {"as_name"} and isinstance(value["as_name"], str):
        if value["as_name"] not in symbols:
            raise _fail(f"{where}: reads size {value['as_name']!r} before it is defined")
        return {"s": value["as_name"]}
    raise _fail(f"{where}: malformed symbolic integer")


def program_from_export(model: Mapping[str, Any], weights_config: Mapping[str, Any],
                        limits: GraphLimits) -> dict[str, Any]:
    """torch.export's `models/model.json` and `model_weights_config.json` (parsed JSON) → the
    normalised program; InvalidInput names the first thing that is refused."""
    version = model.get("schema_version")
    major = version.get("major") if isinstance(version, dict) else None
    if major not in SCHEMA_MAJORS:
        raise _fail(f"torch.export schema version {version} is not supported (supported majors: "
                    f"{sorted(SCHEMA_MAJORS)}; export with torch 2.13)")
    guards = model.get("guards_code")
    if guards not in (None, [], ""):
        raise _fail("the archive carries guards_code; it would be executed by torch.export.load and "
                    "is refused here unread (a plain torch.export.export leaves it empty)")
    module = model.get("graph_module")
    graph = module.get("graph") if isinstance(module, dict) else None
    if not isinstance(graph, dict) or not isinstance(module, dict):
        raise _fail("models/model.json holds no graph_module.graph")
    if graph.get("custom_obj_values"):
        raise _fail("the graph holds custom objects (script objects); they are refused")
    nodes = graph.get("nodes")
    if not isinstance(nodes, list):
        raise _fail("the graph has no node list")
    if len(nodes) > limits.max_nodes:
        raise _fail(f"the graph has {len(nodes)} nodes, more than the limit of {limits.max_nodes} "
                    "(THRESHER_MAX_GRAPH_NODES)")
    specs = module.get("signature", {}).get("input_specs") if isinstance(module.get("signature"), dict) else None
    if not isinstance(specs, list):
        raise _fail("the graph has no input signature")
    tensor_values = graph.get("tensor_values")
    if not isinstance(tensor_values, dict):
        raise _fail("the graph has no tensor_values")
    config = weights_config.get("config") if isinstance(weights_config, dict) else None
    if not isinstance(config, dict):
        raise _fail("data/weights/model_weights_config.json holds no config")

    # the signature: which graph inputs are parameters, buffers, the one user input
    owned: dict[str, tuple[str, bool]] = {}  # graph name → (state-dict name, is a buffer)
    user_inputs: list[str] = []
    for spec in specs:
        if not isinstance(spec, dict) or len(spec) != 1:
            raise _fail("malformed input spec")
        (kind, body), = spec.items()
        arg = body.get("arg", {}) if isinstance(body, dict) else {}
        if isinstance(arg, dict) and "as_tensor" in arg:  # user inputs wrap the name once more
            arg = arg["as_tensor"]
        gname = arg.get("name") if isinstance(arg, dict) else None
        if not isinstance(gname, str):
            raise _fail(f"input spec {kind}: no argument name")
        if kind == "parameter":
            owned[gname] = (str(body.get("parameter_name")), False)
        elif kind == "buffer":
            if body.get("persistent") is False:
                raise _fail(f"buffer {body.get('buffer_name')!r} is not persistent; register it "
                            "with persistent=True or make it a constant of the module's code")
            owned[gname] = (str(body.get("buffer_name")), True)
        elif kind == "user_input":
            user_inputs.append(gname)
        else:
            raise _fail(f"input spec kind {kind!r} (lifted constants, tokens, custom objects) is not "
                        "supported")
    if len(user_inputs) != 1:
        raise _fail(f"the graph takes {len(user_inputs)} inputs; exactly one (the batch of samples) "
                    "is supported")
    # state-dict names become module paths in the worker: plain dotted names, each once, none
    # both a tensor and a module holding others
    names = [sd for sd, _ in owned.values()]
    seen: set[str] = set()
    for sd in names:
        if not STATE_NAME.fullmatch(sd):
            raise _fail(f"tensor name {sd[:80]!r} is not a dotted name of letters, digits and _")
        if sd in seen:
            raise _fail(f"tensor name {sd!r} is given twice")
        seen.add(sd)
    prefixes = {sd.rsplit(".", i)[0] for sd in names for i in range(1, sd.count(".") + 1)}
    if seen & prefixes:
        raise _fail(f"tensor name {sorted(seen & prefixes)[0]!r} is also the path of other tensors")
    if len(owned) > limits.max_tensors:
        raise _fail(f"the graph has {len(owned)} tensors, more than the limit of {limits.max_tensors}")

    # nodes, in order: each reads only what is defined before it
    defined = set(owned) | set(user_inputs)
    symbols: set[str] = set()
    roles: dict[str, str] = {}
    out_nodes: list[dict[str, Any]] = []
    for i, node in enumerate(nodes):
        if not isinstance(node, dict):
            raise _fail(f"node {i} is malformed")
        target = node.get("target")
        op = target.removeprefix("torch.ops.") if isinstance(target, str) else None
        if op not in ALLOWED_OPS:
            raise _fail(f"node {i} calls {str(target)[:120]!r}, which is not on the allowlist of "
                        f"{len(ALLOWED_OPS)} aten ops")
        where = f"node {i} ({op})"
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        inputs = node.get("inputs")
        if not isinstance(inputs, list):
            raise _fail(f"{where}: no inputs")
        for a in inputs:
            if not isinstance(a, dict) or not isinstance(a.get("name"), str):
                raise _fail(f"{where}: malformed input")
            value = _argument(a.get("arg"), f"{where} argument {a['name']}", defined, symbols)
            if a.get("kind", 1) == 2:
                kwargs[a["name"]] = value
            else:
                if kwargs:
                    raise _fail(f"{where}: positional argument after keyword arguments")
                args.append(value)
            role = ROLES.get(op, {}).get(a["name"])
            if role and isinstance(value, dict) and "t" in value and value["t"] in owned:
                previous = roles.setdefault(value["t"], role)
                if previous != role:
                    raise _fail(f"tensor {owned[value['t']][0]!r} is used as {previous} and as {role}")
        outputs = node.get("outputs")
        if not isinstance(outputs, list) or len(outputs) != 1 or not isinstance(outputs[0], dict):
            raise _fail(f"{where}: one output is supported")
        produced = outputs[0]
        if op == "aten.sym_size.int":
            name = produced.get("as_sym_int", {}).get("as_name") if isinstance(produced.get("as_sym_int"), dict) else None
            if not isinstance(name, str) or name in symbols or name in defined:
                raise _fail(f"{where}: malformed or repeated size output")
            symbols.add(name)
        else:
            ref = produced.get("as_tensor")
            name = ref.get("name") if isinstance(ref, dict) else None
            if not isinstance(name, str) or name in defined or name in symbols:
                raise _fail(f"{where}: malformed or repeated output")
            defined.add(name)
        out_nodes.append({"op": op, "args": args, "kwargs": kwargs, "out": name})

    outputs = graph.get("outputs")
    if not isinstance(outputs, list) or len(outputs) != 1:
        raise _fail("the graph must return exactly one tensor (the logits)")
    output = _reference((outputs[0] or {}).get("as_tensor") if isinstance(outputs[0], dict) else None,
                        "the graph's output", defined)
    out_meta = tensor_values.get(output)
    out_sizes = _sizes(out_meta if isinstance(out_meta, dict) else {}, "the output", True)
    if len(out_sizes) != 2 or not out_sizes[1]:
        raise _fail(f"the graph returns a tensor of rank {len(out_sizes)}; logits (batch, classes) "
                    "are required")
    in_meta = tensor_values.get(user_inputs[0])
    in_sizes = _sizes(in_meta if isinstance(in_meta, dict) else {}, "the input", True)
    if len(in_sizes) < 2:
        raise _fail("the input must be a batch (batch, ...) of samples")
    if not isinstance(in_meta, dict) or in_meta.get("dtype") != 7:
        raise _fail("the input must be float32")

    tensors: list[dict[str, Any]] = []
    for gname, (sd_name, is_buffer) in owned.items():
        entry = config.get(sd_name)
        if not isinstance(entry, dict):
            raise _fail(f"tensor {sd_name!r} has no entry in the weights config")
        meta = entry.get("tensor_meta", {})
        shape = [int(s) for s in _sizes(meta, f"tensor {sd_name!r}") if s is not None]
        code = meta.get("dtype") if isinstance(meta, Mapping) else None
        dtype = DTYPES.get(code) if isinstance(code, int) else None
        if is_buffer:
            kind = roles.get(gname) or ("num_batches_tracked" if sd_name.endswith(".num_batches_tracked")
                                        else None)
            if kind is None:
                raise _fail(f"buffer {sd_name!r} is neither a BatchNorm statistic nor its step counter")
        else:
            kind = roles.get(gname, "other")
            if kind in ("running_mean", "running_var"):
                raise _fail(f"tensor {sd_name!r} is a parameter read as a BatchNorm {kind}; "
                            "running statistics must be buffers")
            if (kind in ("conv1d", "conv2d") and len(shape) != int(kind[-2]) + 2) or \
                    (kind == "linear" and len(shape) != 2):
                raise _fail(f"tensor {sd_name!r} is a {kind} weight of shape {shape}")
        want = "I64" if kind == "num_batches_tracked" else "F32"
        if dtype != want:
            raise _fail(f"tensor {sd_name!r} has dtype code {code}; {want} is required "
                        "(parameters and running statistics float32, step counters int64)")
        tensors.append({"name": sd_name, "graph": gname, "kind": kind, "shape": shape})
    return {"version": PROGRAM_VERSION, "input": {"name": user_inputs[0], "shape": in_sizes},
            "tensors": tensors, "nodes": out_nodes, "output": output,
            "num_classes": int(out_sizes[1])}


def graph_architecture(config: Mapping[str, object]) -> Architecture:
    """The tensor table of a stored program (the family's `table`)."""
    program = config.get("program")
    if not isinstance(program, dict) or program.get("version") != PROGRAM_VERSION:
        raise ValueError("architecture graph: its config holds no program of version "
                         f"{PROGRAM_VERSION}")
    shape: Sequence[int | None] = program["input"]["shape"]
    tensors = tuple(Tensor(t["name"], tuple(t["shape"]), t["kind"]) for t in program["tensors"])
    nodes = len(program["nodes"])
    return Architecture(
        name="graph", description=f"an uploaded torch.export graph ({nodes} nodes)",
        input_shape=tuple(int(s) for s in shape[1:] if s is not None),
        num_classes=int(program["num_classes"]), tensors=tensors, builder=BUILDER,
        config={"base": "graph", "program": program})


@dataclass(frozen=True)
class LayerNode:
    """A convolution or linear node that is a layer of the user's module: its weight is `path.weight`
    (and its bias `path.bias`, or none), read by this node alone, every other argument a constant,
    nothing else under `path`. The worker runs it as a real nn.Conv / nn.Linear at `path`."""

    path: str
    op: str
    shape: tuple[int, ...]  # the weight's
    bias: bool
    stride: tuple[int, ...] = (1,)
    padding: tuple[int, ...] = (0,)
    dilation: tuple[int, ...] = (1,)
    groups: int = 1


# a convolution's arguments after input and weight, with the defaults torch.export leaves out
_CONV_ARGUMENTS = (None, [1], [0], [1], 1)  # bias, stride, padding, dilation, groups


def layer_nodes(program: Mapping[str, Any]) -> dict[int, LayerNode]:
    """Node index → LayerNode, for the convolution and linear nodes that are layers."""
    specs = {t["graph"]: t for t in program["tensors"]}
    names = [t["name"] for t in program["tensors"]]
    uses: dict[str, int] = {}
    for node in program["nodes"]:
        for a in [*node["args"], *node["kwargs"].values()]:
            if isinstance(a, dict) and "t" in a:
                uses[a["t"]] = uses.get(a["t"], 0) + 1
    out: dict[int, LayerNode] = {}
    for i, node in enumerate(program["nodes"]):
        op, args = node["op"], node["args"]
        if ROLES.get(op, {}).get("weight") not in ("conv1d", "conv2d", "linear") or node["kwargs"] \
                or len(args) < 2:
            continue
        weight = args[1]
        if not isinstance(weight, dict) or weight.get("t") not in specs:
            continue
        name = specs[weight["t"]]["name"]
        if not name.endswith(".weight") or uses.get(weight["t"]) != 1:
            continue
        path = name.removesuffix(".weight")
        conv = op != "aten.linear.default"
        rest = list(args[2:]) + (list(_CONV_ARGUMENTS[len(args) - 2:]) if conv else [None] * (3 - len(args)))
        bias = rest[0]
        if bias is not None and (not isinstance(bias, dict) or bias.get("t") not in specs
                                 or specs[bias["t"]]["name"] != f"{path}.bias"
                                 or uses.get(bias["t"]) != 1):
            continue
        if any(n.startswith(f"{path}.") and n not in (name, f"{path}.bias") for n in names):
            continue
        shape = tuple(int(v) for v in specs[weight["t"]]["shape"])
        if not conv:
            if len(rest) == 1:
                out[i] = LayerNode(path, op, shape, bias is not None)
            continue
        stride, padding, dilation, groups = rest[1:5]
        ints = [stride, padding, dilation]
        if not all(isinstance(v, list) and v and all(type(x) is int for x in v) for v in ints) \
                or type(groups) is not int or groups < 1 or len(rest) != 5:
            continue
        out[i] = LayerNode(path, op, shape, bias is not None, tuple(stride), tuple(padding),
                           tuple(dilation), groups)
    return out


def plain_layers(arch: Architecture) -> frozenset[str] | None:
    """The weights of an uploaded graph's layer nodes with groups = 1: those a method may
    rewrite into other modules (tucker's decompositions, mpd's block-diagonal ones). None for an
    architecture that is not an uploaded graph (a built-in's layers all qualify)."""
    if family_of(arch) is not GRAPH:
        return None
    program: Mapping[str, Any] = arch.config["program"]  # type: ignore[assignment]
    return frozenset(f"{n.path}.weight" for n in layer_nodes(program).values() if n.groups == 1)


def graph_summary(program: Mapping[str, Any]) -> dict[str, Any]:
    """What the model page shows of the graph besides its layers."""
    ops: dict[str, int] = {}
    for n in program["nodes"]:
        ops[n["op"]] = ops.get(n["op"], 0) + 1
    return {"nodes": len(program["nodes"]), "ops": dict(sorted(ops.items())),
            "dynamic_batch": program["input"]["shape"][0] is None,
            "input_shape": [s for s in program["input"]["shape"][1:]]}


GRAPH = register_family(Family("graph", graph_architecture))
