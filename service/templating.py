"""The dashboard's Jinja2 environment and the number formats every page shares (one place, so the
jobs list, the job page and its live updates print a figure the same way)."""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

from fastapi.templating import Jinja2Templates

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
TEMPLATES = Jinja2Templates(directory=str(HERE / "templates"))


def ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:,.2f}×"


def accuracy(v: float | None) -> str:
    """Accuracies and drops are fractions, as the API and the job spec (δ) give them."""
    return "—" if v is None else f"{v:.4f}"


def count(v: int | None) -> str:
    return "—" if v is None else f"{v:,}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def age(when: datetime | str | None, now: datetime) -> str:
    if when is None:
        return "—"
    if isinstance(when, str):
        when = datetime.fromisoformat(when)
    s = max(int((now - when).total_seconds()), 0)
    if s < 60:
        return f"{s} s ago"
    if s < 3600:
        return f"{s // 60} min ago"
    if s < 86400:
        return f"{s // 3600} h ago"
    return f"{s // 86400} d ago"


def utc(when: datetime | str | None) -> str:
    if when is None:
        return "—"
    if isinstance(when, str):
        when = datetime.fromisoformat(when)
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def _asset_version() -> str:
    """Changes with the files, so browsers may cache them for long."""
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.glob("*")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


ASSET_VERSION = _asset_version()

for _name, _fn in (("ratio", ratio), ("accuracy", accuracy), ("count", count),
                   ("duration", duration), ("utc", utc)):
    TEMPLATES.env.filters[_name] = _fn
TEMPLATES.env.globals["asset_version"] = ASSET_VERSION
TEMPLATES.env.globals["age"] = age
