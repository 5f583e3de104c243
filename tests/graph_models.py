"""Models a user would export, written from plain torch.nn (no torchvision), and archives built
from them: real `torch.export.save` output, and edits of it for the hostile cases."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class Residual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetish(nn.Module):
    """A small ResNet for 1×28×28: stem, three residual stages (one with a projection shortcut
    per stage change), global average pooling, linear."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.layer1 = Residual(width, width, 1)
        self.layer2 = Residual(width, 2 * width, 2)
        self.layer3 = Residual(2 * width, 4 * width, 2)
        self.fc = nn.Linear(4 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    def __init__(self, c: int, expand: int) -> None:
        super().__init__()
        hidden = c * expand
        self.block = nn.Sequential(
            nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True), nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class MobileNetish(nn.Module):
    """MobileNetV2-style: depthwise convolutions, ReLU6 (in place), inverted residuals, dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8),
                                      nn.ReLU6(inplace=True), InvertedResidual(8, 3),
                                      InvertedResidual(8, 3))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(8, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


class VggStyle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(16 * 7 * 7, 32), nn.ReLU(), nn.Dropout(0.5),
                                        nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(x.view(x.size(0), -1))  # a symbolic batch size in the graph


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(784, 64), nn.Linear(64, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x.flatten(1))))))


NETS: dict[str, Callable[[], nn.Module]] = {"resnet": ResNetish, "mobilenet": MobileNetish,
                                            "vgg": VggStyle, "mlp": Mlp}


def export_bytes(model: nn.Module, dynamic: bool = True) -> bytes:
    """What a user uploads: `torch.export.export` then `torch.export.save`."""
    model.eval()
    example = (torch.randn(2, 1, 28, 28),)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    buf = io.BytesIO()
    torch.export.save(torch.export.export(model, example, dynamic_shapes=shapes), buf)
    return buf.getvalue()


def rewrite(archive: bytes, *, model_json: Callable[[dict[str, Any]], None] | None = None,
            weights_config: Callable[[dict[str, Any]], None] | None = None,
            members: dict[str, bytes] | None = None,
            extra: list[zipfile.ZipInfo | tuple[zipfile.ZipInfo, bytes]] | None = None) -> bytes:
    """The archive with its graph JSON or weights config edited, members' bytes replaced, or
    members added (a ZipInfo carries a name and a Unix mode of one's choosing)."""
    src = zipfile.ZipFile(io.BytesIO(archive))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("models/model.json") and model_json:
                doc = json.loads(data)
                model_json(doc)
                data = json.dumps(doc).encode()
            if info.filename.endswith("model_weights_config.json") and weights_config:
                doc = json.loads(data)
                weights_config(doc)
                data = json.dumps(doc).encode()
            tail = info.filename.split("/", 1)[1]
            if members and tail in members:
                data = members[tail]
            zf.writestr(info.filename, data)
        for item in extra or []:
            info, payload = item if isinstance(item, tuple) else (item, b"")
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, payload)
    return buf.getvalue()


def root_of(archive: bytes) -> str:
    return zipfile.ZipFile(io.BytesIO(archive)).namelist()[0].split("/", 1)[0]
