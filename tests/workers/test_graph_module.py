"""Uploaded graphs in the worker: the interpreter computes what the user's eager module computes
(forward and backward, eval and train mode, any batch size of a dynamic export), and the tensor
table read from the graph says what is prunable."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from torch import nn

from core.methods.mpd import MpdOptions, choices, fixed_layers
from core.methods.tucker import TuckerOptions, decomposable
from core.settings import Settings
from service.pt2_upload import parse_pt2
from tests.graph_models import NETS, export_bytes
from workers.models import zoo
from workers.models.flops import macs
from workers.runtime.batchnorm import normalized_outputs, recalibrate
from workers.runtime.evaluation import activation_elements


def _pair(name: str) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    eager = NETS[name]()
    with torch.no_grad():  # running statistics that are not the defaults
        for m in eager.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    parsed = parse_pt2(export_bytes(eager), Settings())
    graph = zoo.build(parsed.architecture)
    graph.load_state_dict(safetensors.torch.load(parsed.weights))
    return eager, graph


@pytest.mark.parametrize("name", sorted(NETS))
def test_the_graph_computes_what_the_eager_module_computes(name: str) -> None:
    eager, graph = _pair(name)
    assert set(graph.state_dict()) == set(eager.state_dict())  # the user's own names
    eager.eval(), graph.eval()
    with torch.no_grad():
        for batch in (1, 7):
            x = torch.randn(batch, 1, 28, 28)
            assert torch.equal(graph(x), eager(x)), (name, batch)
    # train mode: dropout with the same generator state, BatchNorm on batch statistics, the
    # running statistics updated alike, the same gradients
    eager.train(), graph.train()
    x = torch.randn(16, 1, 28, 28)
    torch.manual_seed(1)
    want = eager(x)
    torch.manual_seed(1)
    got = graph(x)
    assert torch.equal(got, want)
    want.square().sum().backward()
    got.square().sum().backward()
    grads = dict(graph.named_parameters())
    for k, p in eager.named_parameters():
        assert p.grad is not None and torch.allclose(grads[k].grad, p.grad, rtol=1e-5, atol=1e-6), k  # type: ignore[arg-type]
    state = graph.state_dict()
    for k, v in eager.state_dict().items():
        assert torch.equal(state[k], v), k  # running statistics and step counters moved alike


def test_the_tensor_table_comes_from_the_graph() -> None:
    arch = parse_pt2(export_bytes(NETS["resnet"]()), Settings()).architecture
    kinds = {t.name: t.kind for t in arch.tensors}
    assert kinds["stem.weight"] == "conv2d" and kinds["layer2.shortcut.0.weight"] == "conv2d"
    assert kinds["fc.weight"] == "linear" and kinds["fc.bias"] == "bias"
    assert kinds["layer2.shortcut.1.weight"] == "batchnorm"
    assert kinds["bn.running_var"] == "running_var" and kinds["bn.num_batches_tracked"] == "num_batches_tracked"
    eager = NETS["resnet"]()
    assert arch.total_parameters == sum(p.numel() for p in eager.parameters())
    assert {t.name for t in arch.prunable} == {k for k, p in eager.named_parameters() if p.dim() > 1}
    assert arch.input_shape == (1, 28, 28) and arch.num_classes == 10


def test_recalibration_finds_the_graph_s_batchnorms() -> None:
    eager, graph = _pair("vgg")
    x = torch.randn(64, 1, 28, 28)
    buffers = {k: v for k, v in graph.named_buffers()}
    recalibrate(graph, buffers, graph, x, 32)
    # the running mean of the first BatchNorm is now the mean of its input over x
    with torch.no_grad():
        first = eager.features[0](x)
    assert torch.allclose(buffers["features.1.running_mean"], first.mean(dim=(0, 2, 3)), atol=1e-5)


def test_batched_evaluation_sizes_a_graph_by_all_its_activations() -> None:
    """The batched evaluator (GPU) sizes its chunks by the activations of one sample; a graph has
    no Conv or ReLU modules for hooks to see, so it shows its nodes' outputs instead."""
    eager, graph = _pair("resnet")
    x = torch.randn(4, 1, 28, 28)
    params = dict(graph.named_parameters()) | dict(graph.named_buffers())
    counted = activation_elements(graph, params, x)
    eager_params = dict(eager.named_parameters()) | dict(eager.named_buffers())
    # eager's hooks see the convolutions, BatchNorms and shortcuts; the graph every node
    assert counted >= activation_elements(eager, eager_params, x) > 0
    assert graph.visit_outputs is None


@pytest.mark.parametrize("name", sorted(NETS))
def test_a_graph_counts_the_multiply_accumulates_of_its_eager_module(name: str) -> None:
    """flops.macs counts a graph's convolutions and linear ops as it counts a built-in's Conv and
    Linear modules (mpd's and tucker's FLOPs objective, the downloads' figures), pruned or not."""
    eager, graph = _pair(name)
    shape = (1, 28, 28)
    assert macs(graph, shape) == macs(eager, shape) > 0
    with torch.no_grad():
        for module in (eager, graph):
            for p in module.parameters():
                if p.dim() > 1:
                    p.mul_((torch.arange(p.numel()) % 3 != 0).reshape(p.shape))
    assert macs(graph, shape, nonzero=True) == macs(eager, shape, nonzero=True) < macs(graph, shape)
    assert graph.visit_weighted is None


def test_tucker_and_mpd_leave_a_graph_s_grouped_convolutions_as_they_are() -> None:
    """In a MobileNetV2-style graph the depthwise convolutions (groups = channels) run as grouped
    nn.Conv2d modules and are not offered to tucker, and mpd keeps them dense; the pointwise and
    full ones are offered to both."""
    _, graph = _pair("mobilenet")
    parsed = parse_pt2(export_bytes(NETS["mobilenet"]()), Settings())
    offered = set(decomposable(parsed.architecture, TuckerOptions(min_layer_share=0.0)))
    convs = {f"{n}.weight": m for n, m in graph.named_modules() if isinstance(m, nn.Conv2d)}
    depthwise = {n for n, m in convs.items() if m.groups > 1}
    assert depthwise and not depthwise & offered
    assert {n for n, m in convs.items() if m.groups == 1 and m.out_channels > 1} <= offered
    fixed = fixed_layers(parsed.architecture)
    assert depthwise <= fixed
    pointwise = next(n for n, m in convs.items() if m.groups == 1 and m.out_channels % 4 == 0
                     and m.in_channels % 4 == 0)
    table = {t.name: t for t in parsed.architecture.prunable}
    options = MpdOptions(blocks=(1, 2, 4))
    assert choices(table[pointwise], options, fixed) == (1, 2, 4)
    assert all(choices(table[n], options, fixed) == (1,) for n in depthwise)


def test_an_uploaded_graph_pairs_its_convolutions_with_their_batchnorms() -> None:
    """l0's channel gates find the BatchNorm after each convolution of an uploaded graph as of
    the same module in eager form: its layers and BatchNorms are modules at the user's paths."""
    eager, graph = _pair("vgg")
    found = normalized_outputs(graph, (1, 28, 28))
    assert found == {"features.0.weight": "features.1", "features.4.weight": "features.5"}
    assert found == normalized_outputs(eager, (1, 28, 28))
