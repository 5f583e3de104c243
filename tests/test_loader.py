"""`thresher.load`: downloaded checkpoints as torch modules, and the files it refuses.

Every artifact of every method is loaded and scored against the job's reported test accuracy in
tests/golden/test_golden.py; here: BatchNorm models, compact shapes, and bad files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import safetensors.torch
import torch

import thresher
from core.zoo import VGG_FASHION, vgg_fashion
from workers.jobs import checkpoint
from workers.models import zoo


def _state(arch_seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(arch_seed)
    model = zoo.build(VGG_FASHION)
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 1, 28, 28))  # running statistics and step counters move
    return {k: v.detach().clone() for k, v in model.eval().state_dict().items()}


def _manifest(name: str, config: dict[str, object]) -> dict[str, object]:
    return {"architecture": name, "architecture_config": config, "compression_ratio": 1.0,
            "spec": {"method": "magnitude"}}


def test_a_batchnorm_checkpoint_loads_in_eval_mode(tmp_path: Path) -> None:
    state = _state()
    path = tmp_path / "vgg.safetensors"
    path.write_bytes(checkpoint.build(state, _manifest("vgg-fashion", {})))
    model = thresher.load(path)
    assert not model.training and model.thresher_manifest["artifact"] == "pruned"
    assert int(model.state_dict()["bn1.num_batches_tracked"]) == 1
    reference = zoo.build(VGG_FASHION).eval()
    reference.load_state_dict(state)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_a_compact_checkpoint_is_rebuilt_from_its_manifest(tmp_path: Path) -> None:
    small = vgg_fashion(conv2=20, conv6=100)
    torch.manual_seed(1)
    state = {k: v.detach().clone() for k, v in zoo.build(small).state_dict().items()}
    path = tmp_path / "compact.safetensors"
    path.write_bytes(checkpoint.build(state, _manifest(small.name, dict(small.config)), "compact"))
    model = thresher.load(str(path))
    assert model.thresher_manifest["artifact"] == "compact"
    assert model.state_dict()["conv2.weight"].shape == (20, 32, 3, 3)


def _refused(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(thresher.LoadError, match=message):
        thresher.load(path)


def test_files_that_are_not_thresher_checkpoints_are_refused(tmp_path: Path) -> None:
    state = _state()
    _refused(tmp_path, pickle.dumps(state), "not a safetensors file")
    _refused(tmp_path, safetensors.torch.save(state), "without a Thresher manifest")
    other = safetensors.torch.save(state, metadata={"thresher": json.dumps({"format": "other/1"})})
    _refused(tmp_path, other, "not a Thresher checkpoint's")
    _refused(tmp_path, safetensors.torch.save(state, metadata={"thresher": "{"}), "not JSON")


def test_tensors_must_be_the_manifest_s_table(tmp_path: Path) -> None:
    state = _state()
    manifest = _manifest("vgg-fashion", {})
    wrong_shape = {**state, "conv3.weight": torch.zeros(64, 31, 3, 3)}
    _refused(tmp_path, checkpoint.build(wrong_shape, manifest), r"'conv3.weight' has shape \[64, 31")
    missing = {k: v for k, v in state.items() if k != "bn2.running_var"}
    _refused(tmp_path, checkpoint.build(missing, manifest), r"lack tensor 'bn2.running_var' of vgg-fashion")
    nan = {**state, "fc.bias": torch.full((10,), float("nan"))}
    _refused(tmp_path, checkpoint.build(nan, manifest), "'fc.bias' holds NaN")
    step = {**state, "bn1.num_batches_tracked": torch.tensor(1.0)}
    _refused(tmp_path, checkpoint.build(step, manifest), "'bn1.num_batches_tracked' has dtype")
    _refused(tmp_path, checkpoint.build(state, _manifest("lenet-5", {})), "lack tensor 'conv1.bias' of lenet-5")
    _refused(tmp_path, checkpoint.build(state, _manifest("vgg-99", {})), "'vgg-99' is not installed")
    unknown = checkpoint.build(state, manifest, "hologram")
    _refused(tmp_path, unknown, "artifact format 'hologram' is not one this installation can load")
