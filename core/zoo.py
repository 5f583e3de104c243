"""The built-in architectures, as tensor tables (the torch modules live in workers.models.zoo).

The LeNets (MNIST) and vgg-fashion (Fashion-MNIST, with BatchNorm). Every built-in family can be
described at other widths: `lenet_300_100`, `lenet_5` and `vgg_fashion` make the table of a narrower
model, such as `workers.models.compaction` produces from a structurally pruned one.
A resized architecture keeps the family's builder; its config carries what the builder needs:

* ``"widths"``: the builder's keyword arguments (layer name → output units / filters), present only
  when a width differs from the family's default, so the built-ins' configs are unchanged;
* ``"input_indices"`` (LeNet-300-100 only): the flattened pixels fc1 still reads, when some input
  pixels were pruned away; the model still takes whole 28×28 images;
* ``"base"``: the family's built-in name, so `core.architectures.from_config` can rebuild the
  table from a manifest (every built-in registers as a family).

A resized model's name is the family's name followed by its widths, e.g. ``lenet-300-100-412-120-45``
(inputs, fc1, fc2), ``lenet-5-12-31-140`` (conv1, conv2, fc1) or ``vgg-fashion-32-29-54-64-128-122``
(conv1 … conv6): distinct shapes never share a
name, and such names are not in the registry (the service only accepts the built-in shapes).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from core.architectures import Architecture, Family, Tensor, register_family

MNIST_PIXELS = 28 * 28
LENET_300_100_WIDTHS = {"fc1": 300, "fc2": 100}
LENET_5_WIDTHS = {"conv1": 20, "conv2": 50, "fc1": 500}
# conv 5×5 → pool 2 → conv 5×5 → pool 2 leaves 4×4 of each conv2 filter for fc1
LENET_5_POOLED = 4 * 4


def _check_widths(family: str, widths: Mapping[str, int]) -> None:
    for layer, w in widths.items():
        if not isinstance(w, int) or isinstance(w, bool) or w < 1:
            raise ValueError(f"{family}: width of {layer} must be a positive integer, got {w!r}")


def _pixels_tag(config: Mapping[str, object]) -> str:
    idx = config.get("input_indices")
    if idx is None:
        return ""
    return "px" + hashlib.sha256(json.dumps(idx).encode()).hexdigest()[:8]


def lenet_300_100(fc1: int = 300, fc2: int = 100,
                  input_indices: Sequence[int] | None = None) -> Architecture:
    """LeNet-300-100 with `fc1` / `fc2` hidden units, reading only `input_indices` (sorted, distinct
    flattened pixel positions) when given."""
    widths = {"fc1": fc1, "fc2": fc2}
    _check_widths("lenet-300-100", widths)
    inputs = MNIST_PIXELS
    config: dict[str, object] = {"flatten_input": True}
    if input_indices is not None:
        idx = [int(i) for i in input_indices]
        if not idx or idx != sorted(set(idx)) or idx[0] < 0 or idx[-1] >= MNIST_PIXELS:
            raise ValueError("lenet-300-100: input_indices must be distinct sorted pixel positions "
                             f"in [0, {MNIST_PIXELS})")
        inputs = len(idx)
        config["input_indices"] = idx
    resized = widths != LENET_300_100_WIDTHS or input_indices is not None
    if resized:
        config["widths"] = widths
        config["base"] = "lenet-300-100"
    return Architecture(
        # the pixels' digest in the name: two models of the same widths that read other pixels
        # are other architectures
        name=(f"lenet-300-100-{inputs}{_pixels_tag(config)}-{fc1}-{fc2}" if resized
              else "lenet-300-100"),
        description=(f"LeNet-300-100: fc {fc1} → ReLU → fc {fc2} → ReLU → fc 10 on flattened 28×28 "
                     "input" + (f" ({inputs} of its pixels)" if input_indices is not None else "")),
        input_shape=(1, 28, 28),
        num_classes=10,
        tensors=(
            Tensor("fc1.weight", (fc1, inputs), "linear"),
            Tensor("fc1.bias", (fc1,), "bias"),
            Tensor("fc2.weight", (fc2, fc1), "linear"),
            Tensor("fc2.bias", (fc2,), "bias"),
            Tensor("fc3.weight", (10, fc2), "linear"),
            Tensor("fc3.bias", (10,), "bias"),
        ),
        builder="workers.models.zoo:LeNet300100",
        config=config,
    )


def lenet_5(conv1: int = 20, conv2: int = 50, fc1: int = 500) -> Architecture:
    """Caffe's LeNet (as OLMP used it: no ReLU after the convolutions) with the given widths."""
    widths = {"conv1": conv1, "conv2": conv2, "fc1": fc1}
    _check_widths("lenet-5", widths)
    resized = widths != LENET_5_WIDTHS
    config: dict[str, object] = {"widths": widths, "base": "lenet-5"} if resized else {}
    return Architecture(
        name=f"lenet-5-{conv1}-{conv2}-{fc1}" if resized else "lenet-5",
        description=(f"LeNet-5 (Caffe): conv 5×5 {conv1} → maxpool 2 → conv 5×5 {conv2} → maxpool 2 "
                     f"→ fc {fc1} → ReLU → fc 10"),
        input_shape=(1, 28, 28),
        num_classes=10,
        tensors=(
            Tensor("conv1.weight", (conv1, 1, 5, 5), "conv2d"),
            Tensor("conv1.bias", (conv1,), "bias"),
            Tensor("conv2.weight", (conv2, conv1, 5, 5), "conv2d"),
            Tensor("conv2.bias", (conv2,), "bias"),
            Tensor("fc1.weight", (fc1, conv2 * LENET_5_POOLED), "linear"),
            Tensor("fc1.bias", (fc1,), "bias"),
            Tensor("fc2.weight", (10, fc1), "linear"),
            Tensor("fc2.bias", (10,), "bias"),
        ),
        builder="workers.models.zoo:LeNet5",
        config=config,
    )


def _widths(name: str, config: Mapping[str, object], known: set[str]) -> dict[str, int]:
    widths = config.get("widths", {})
    if not isinstance(widths, Mapping):
        raise ValueError(f"architecture {name}: config 'widths' must be an object")
    kwargs = {str(k): v for k, v in widths.items()}
    if set(kwargs) - known or not all(isinstance(v, int) and not isinstance(v, bool)
                                      for v in kwargs.values()):
        raise ValueError(f"architecture {name}: config 'widths' takes integer {sorted(known)}, "
                         f"got {dict(kwargs)}")
    return {k: int(v) for k, v in kwargs.items()}  # type: ignore[call-overload,unused-ignore]


def lenet_300_100_from_config(config: Mapping[str, object]) -> Architecture:
    """The family's table for a config as `lenet_300_100` records it."""
    widths = _widths("lenet-300-100", config, set(LENET_300_100_WIDTHS))
    indices = config.get("input_indices")
    if indices is not None and (isinstance(indices, str | bytes)
                                or not isinstance(indices, Sequence)):
        raise ValueError("architecture lenet-300-100: config 'input_indices' must be a list")
    return lenet_300_100(**widths, input_indices=indices)


def lenet_5_from_config(config: Mapping[str, object]) -> Architecture:
    """The family's table for a config as `lenet_5` records it."""
    return lenet_5(**_widths("lenet-5", config, set(LENET_5_WIDTHS)))


# vgg-fashion, fixed by the models issue so that no method can tune it to itself: six 3×3
# convolutions (padding 1, no bias: a BatchNorm follows each), max-pool after every second, global
# average pooling, one linear layer
VGG_FASHION_WIDTHS = {"conv1": 32, "conv2": 32, "conv3": 64, "conv4": 64, "conv5": 128, "conv6": 128}
VGG_FASHION_CONVS = tuple(VGG_FASHION_WIDTHS)
VGG_FASHION_POOL_AFTER = frozenset({"conv2", "conv4", "conv6"})


def batchnorm_tensors(name: str, channels: int) -> tuple[Tensor, ...]:
    """A BatchNorm2d's state dict entries: its affine weight and bias (parameters) and buffers."""
    return (Tensor(f"{name}.weight", (channels,), "batchnorm"),
            Tensor(f"{name}.bias", (channels,), "batchnorm"),
            Tensor(f"{name}.running_mean", (channels,), "running_mean"),
            Tensor(f"{name}.running_var", (channels,), "running_var"),
            Tensor(f"{name}.num_batches_tracked", (), "num_batches_tracked"))


def vgg_fashion(**widths: int) -> Architecture:
    """vgg-fashion with the given conv widths (output channels; the defaults where not given)."""
    unknown = set(widths) - set(VGG_FASHION_WIDTHS)
    if unknown:
        raise ValueError(f"vgg-fashion: no layer {sorted(unknown)} ({', '.join(VGG_FASHION_CONVS)})")
    w = {**VGG_FASHION_WIDTHS, **widths}
    _check_widths("vgg-fashion", w)
    resized = w != VGG_FASHION_WIDTHS
    tensors: list[Tensor] = []
    channels = 1
    for i, conv in enumerate(VGG_FASHION_CONVS, start=1):
        tensors.append(Tensor(f"{conv}.weight", (w[conv], channels, 3, 3), "conv2d"))
        tensors.extend(batchnorm_tensors(f"bn{i}", w[conv]))
        channels = w[conv]
    tensors += [Tensor("fc.weight", (10, channels), "linear"), Tensor("fc.bias", (10,), "bias")]
    shape = " → ".join(f"{w[c]}" + (" → maxpool" if c in VGG_FASHION_POOL_AFTER else "")
                       for c in VGG_FASHION_CONVS)
    return Architecture(
        name="vgg-fashion-" + "-".join(str(w[c]) for c in VGG_FASHION_CONVS) if resized else "vgg-fashion",
        description=(f"VGG-style CNN for 28×28 images: 3×3 conv + BatchNorm + ReLU {shape} → global "
                     "average pool → fc 10"),
        input_shape=(1, 28, 28),
        num_classes=10,
        tensors=tuple(tensors),
        builder="workers.models.zoo:VggFashion",
        config={"widths": w, "base": "vgg-fashion"} if resized else {},
    )


def vgg_fashion_from_config(config: Mapping[str, object]) -> Architecture:
    return vgg_fashion(**_widths("vgg-fashion", config, set(VGG_FASHION_WIDTHS)))


register_family(Family("lenet-300-100", lenet_300_100_from_config))
register_family(Family("lenet-5", lenet_5_from_config))
register_family(Family("vgg-fashion", vgg_fashion_from_config))

LENET_300_100 = lenet_300_100()
LENET_5 = lenet_5()
VGG_FASHION = vgg_fashion()

BUILTINS = (LENET_300_100, LENET_5, VGG_FASHION)

# Recipes of `thresher zoo train`: ours, and Caffe's LeNet solver as the DNS and OLMP papers used.
TRAINING_RECIPES = ("onecycle", "caffe")
CAFFE_ITERATIONS = 10_000  # lenet_solver.prototxt's max_iter


@dataclass(frozen=True)
class OneCycle:
    """`onecycle`'s settings for one architecture: SGD with Nesterov momentum 0.9 and weight decay
    under a one-cycle learning rate peaking at `lr`; `augment`: each training batch is shifted by up
    to 2 pixels (zero padding) and mirrored left-right at random (clothes are symmetric, digits not)."""

    epochs: int = 12
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 5e-4
    augment: bool = False


ONECYCLE = {
    "lenet-300-100": OneCycle(),
    "lenet-5": OneCycle(),
    # measured: 15 epochs reach ≥ 93 % Fashion-MNIST test accuracy (README)
    "vgg-fashion": OneCycle(epochs=15, batch_size=128, lr=0.1, augment=True),
}
