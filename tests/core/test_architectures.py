import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.architectures import get_architecture, registry
from core.errors import InvalidInput
from core.metrics import compression_ratio, is_feasible, objective


def test_builtin_parameter_counts() -> None:
    assert get_architecture("lenet-300-100").total_parameters == 266_610
    assert get_architecture("lenet-5").total_parameters == 431_080


def test_unknown_architecture_is_named() -> None:
    with pytest.raises(InvalidInput, match="unknown architecture 'resnet-9000'"):
        get_architecture("resnet-9000")


def test_a_drop_of_exactly_delta_in_images_is_within_delta() -> None:
    # 4 of 4,000 steering images at δ = 0.001: float subtraction gives 0.0010000000000000009
    drop = 3940 / 4000 - 3936 / 4000
    assert drop > 0.001 and is_feasible(drop, 0.001)
    assert objective(10, 100, drop, 0.001) == objective(10, 100, 0.0, 0.001) < 0
    assert not is_feasible(5 / 4000, 0.001) and objective(10, 100, 5 / 4000, 0.001) > 1


def test_compression_ratio_and_objective_order() -> None:
    assert compression_ratio(1000, 10) == 100.0
    assert compression_ratio(1000, 0) == 1000.0
    feasible_big = objective(500, 1000, 0.0, 0.01)
    feasible_small = objective(10, 1000, 0.009, 0.01)
    infeasible_tiny = objective(1, 1000, 0.02, 0.01)
    assert feasible_small < feasible_big < infeasible_tiny
    assert objective(1, 1000, 0.5, 0.01) > infeasible_tiny  # the violation stays graded


def test_operator_architecture_from_an_entry_point(tmp_path: Path) -> None:
    """An operator installs an architecture as an entry point; the registry and workers use it."""
    (tmp_path / "tinynet.py").write_text(textwrap.dedent('''
        from core.architectures import Architecture, Tensor
        TINY = Architecture(
            name="tiny-mlp", description="784-16-10", input_shape=(1, 28, 28), num_classes=10,
            tensors=(Tensor("a.weight", (16, 784), "linear"), Tensor("a.bias", (16,), "bias"),
                     Tensor("b.weight", (10, 16), "linear"), Tensor("b.bias", (10,), "bias")),
            builder="tinynet:build", config={"flatten_input": True})
        def build():
            import torch
            class Net(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.a = torch.nn.Linear(784, 16)
                    self.b = torch.nn.Linear(16, 10)
                def forward(self, x):
                    return self.b(torch.relu(self.a(x.flatten(1))))
            return Net()
    '''))
    dist = tmp_path / "tinynet-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tinynet\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[thresher.architectures]\ntiny-mlp = tinynet:TINY\n")
    code = textwrap.dedent('''
        import sys
        from core.architectures import registry
        from workers.models.zoo import build
        arch = registry()["tiny-mlp"]
        model = build(arch)
        print(arch.total_parameters, sorted(registry()))
    ''')
    out = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(tmp_path),
                                                             "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2])
    assert out.stdout.startswith("12730 ")
    assert "'lenet-5'" in out.stdout and "'tiny-mlp'" in out.stdout
    assert "tiny-mlp" not in registry()  # not installed in this interpreter
