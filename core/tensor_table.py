"""Whether a file's tensors are exactly an architecture's table: the one check the upload route
(on the safetensors header, without torch) and `thresher.load` (on the loaded tensors) share, so
both refuse the same files with the same words."""

from __future__ import annotations

from collections.abc import Mapping

from core.architectures import Architecture

DTYPE_NAMES = {"F32": "float32", "I64": "int64"}


def mismatch(arch: Architecture, found: Mapping[str, tuple[tuple[int, ...], str]],
             what: str) -> str | None:
    """The first way `found` (tensor name → (shape, safetensors dtype)) differs from `arch`'s
    table, as a message that starts with `what` and names the tensor; None when it does not."""
    expected = {t.name: t for t in arch.tensors}
    # in the architecture's own order, so the first named is the first a reader expects
    missing = [n for n in expected if n not in found]
    extra = [n for n in found if n not in expected]
    if missing:
        return f"{what} lack tensor {missing[0]!r} of {arch.name} (missing: {missing})"
    if extra:
        return (f"{what} hold tensor {extra[0]!r}, which {arch.name} does not have "
                f"(unexpected: {extra})")
    for name, t in expected.items():
        shape, dtype = found[name]
        if tuple(shape) != t.shape:
            return f"{what} tensor {name!r} has shape {list(shape)}, {arch.name} needs {list(t.shape)}"
        if dtype != t.dtype:
            return (f"{what} tensor {name!r} has dtype {dtype}, {DTYPE_NAMES[t.dtype]} ({t.dtype}) "
                    f"is required for a {t.kind} tensor")
    return None
