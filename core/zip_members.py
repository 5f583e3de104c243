"""Reading uploaded zip archives (.npz datasets, torch.export .pt2 models) within bounds: every
member a regular file under a plain relative name, sizes checked from the directory before
anything is inflated and again while inflating (a directory can lie)."""

from __future__ import annotations

import stat
import zipfile

from core.errors import InvalidInput


def member_kind(info: zipfile.ZipInfo) -> str:
    """What a zip member is, from the file-type bits of its Unix mode. No type bits means a plain
    file: numpy's own savez writes only permissions (0o600), other archivers write no mode."""
    if info.is_dir():
        return "directory"
    mode = info.external_attr >> 16
    if stat.S_IFMT(mode) == 0 or stat.S_ISREG(mode):
        return "regular file"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISDIR(mode):
        return "directory"
    return "special file (device, FIFO or socket)"


def checked_members(zf: zipfile.ZipFile, label: str, field: str, *, max_members: int,
                    max_expanded: int) -> list[zipfile.ZipInfo]:
    """The archive's members, refused (InvalidInput naming the member) unless each is a regular
    file with a relative name that stays inside the archive, and their inflated sizes sum to at
    most `max_expanded`."""
    infos = zf.infolist()
    if len(infos) > max_members:
        raise InvalidInput(f"{field}: {label} holds {len(infos)} members, more than the limit of "
                           f"{max_members}", field=field)
    seen: set[str] = set()
    for info in infos:
        kind = member_kind(info)
        if kind != "regular file":
            raise InvalidInput(f"{field}: {label} member {info.filename!r} is a {kind}, not a regular "
                               "file", field=field)
        name = info.filename
        parts = name.split("/")
        if (name.startswith("/") or "\\" in name or "\x00" in name or
                any(p in ("", ".", "..") for p in parts)):
            raise InvalidInput(f"{field}: {label} member name {name!r} is not a plain relative path",
                               field=field)
        if name in seen:
            raise InvalidInput(f"{field}: {label} holds member {name!r} twice", field=field)
        seen.add(name)
    expanded = sum(i.file_size for i in infos)
    if expanded > max_expanded:
        raise InvalidInput(f"{field}: {label} expands to {expanded} bytes, more than the limit "
                           f"{max_expanded}", field=field)
    return infos


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, label: str, field: str) -> bytes:
    """A member's bytes, no more than its directory entry declares (a lying directory is refused
    before the surplus is inflated)."""
    try:
        with zf.open(info) as f:
            data = f.read(info.file_size + 1)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise InvalidInput(f"{field}: {label} member {info.filename!r} is not readable ({exc})",
                           field=field) from None
    if len(data) != info.file_size:
        raise InvalidInput(f"{field}: {label} member {info.filename!r} holds {len(data)} bytes or more, "
                           f"its directory says {info.file_size}", field=field)
    return data
