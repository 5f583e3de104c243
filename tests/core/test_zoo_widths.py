import json

import pytest

from core import zoo
from core.architectures import from_config, get_architecture


def test_default_widths_are_the_builtins_unchanged() -> None:
    assert zoo.lenet_300_100() == get_architecture("lenet-300-100")
    assert zoo.lenet_5() == get_architecture("lenet-5")
    assert zoo.LENET_300_100.config == {"flatten_input": True}
    assert zoo.LENET_5.config == {}


def test_resized_tables_names_and_configs() -> None:
    a = zoo.lenet_300_100(120, 45, input_indices=[3, 10, 400])
    assert a.name.startswith("lenet-300-100-3px") and a.name.endswith("-120-45")
    # the same widths reading other pixels are another architecture, with another name
    assert zoo.lenet_300_100(120, 45, input_indices=[3, 10, 401]).name != a.name
    assert [t.shape for t in a.tensors] == [(120, 3), (120,), (45, 120), (45,), (10, 45), (10,)]
    assert a.config == {"flatten_input": True, "input_indices": [3, 10, 400],
                        "widths": {"fc1": 120, "fc2": 45}, "base": "lenet-300-100"}
    b = zoo.lenet_5(conv1=7, conv2=9, fc1=33)
    assert b.name == "lenet-5-7-9-33"
    assert b.tensor("conv2.weight").shape == (9, 7, 5, 5)
    assert b.tensor("fc1.weight").shape == (33, 9 * 16)
    for arch in (a, b):
        config = json.loads(json.dumps(arch.config))
        assert from_config(arch.name, config) == arch
    assert from_config("lenet-5", {}) == zoo.LENET_5
    # a config that names no width the family has is a ValueError, never a TypeError
    for bad in ({"base": "lenet-5", "widths": {"fc3": 5}},
                {"base": "lenet-5", "widths": {"conv1": "7"}},
                {"base": "lenet-300-100", "input_indices": "0123"}):
        with pytest.raises(ValueError, match="config"):
            from_config("x", bad)


def test_bad_widths_and_configs_are_rejected() -> None:
    with pytest.raises(ValueError, match="positive integer"):
        zoo.lenet_5(conv1=0)
    with pytest.raises(ValueError, match="input_indices"):
        zoo.lenet_300_100(input_indices=[5, 3])
    with pytest.raises(ValueError, match="input_indices"):
        zoo.lenet_300_100(input_indices=[784])
    with pytest.raises(ValueError, match="not a built-in family"):
        from_config("resnet", {})
    with pytest.raises(ValueError, match="describes lenet-5-7-9-33"):
        from_config("lenet-5", {"base": "lenet-5", "widths": {"conv1": 7, "conv2": 9, "fc1": 33}})
