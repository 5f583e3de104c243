"""What a downloaded checkpoint is: safetensors whose metadata key `thresher` holds the manifest
as JSON. `format` names the container (`thresher-checkpoint/1`), `artifact` the kind of model the
tensors describe: "pruned" (the uploaded architecture with exact zeros), "compact" (smaller dense
shapes of the same family), and the formats later methods add. Readers: `thresher.load` and the
bench's own loaders."""

from __future__ import annotations

from typing import Any

MANIFEST_KEY = "thresher"
FORMAT = "thresher-checkpoint/1"
# the formats of the tensors' model that the architecture's own module runs as it is
DENSE_ARTIFACTS = ("pruned", "compact")


def artifact_of(manifest: dict[str, Any]) -> str | None:
    """The artifact a manifest describes; None when the manifest is not a Thresher checkpoint's.
    Files written before manifests named their artifact said `format` "compact" for compact ones."""
    if manifest.get("format") == "compact":
        return "compact"
    if manifest.get("format") != FORMAT:
        return None
    artifact = manifest.get("artifact", "pruned")
    return artifact if isinstance(artifact, str) else None
