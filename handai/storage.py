"""Where shared state lives: a local folder, a folder every node mounts, or an object store.

`storage.root` is a path or a URI (`s3://bucket/prefix`, through fsspec: credentials and
`AWS_ENDPOINT_URL` come from the environment as for any AWS client). Everything below it is
addressed with `UPath`, which is `pathlib.Path` for local paths, so the registry reads the same
either way. The two things an object store lacks are done here: a write that readers see
whole, and removing a folder.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from upath import UPath

Place = Path | UPath  # a local path (what tests and tools pass) or any fsspec location


def location(root: str | Path) -> UPath:
    if "://" in str(root) and not str(root).startswith("file://"):
        # Another process (a replica, a job) may have changed the listing since: never cache it.
        return UPath(root, use_listings_cache=False, skip_instance_cache=True)
    return UPath(root)


def local_or(place: Place, fallback: Path) -> Path:
    """`place` when it is a local folder, else `fallback`: for caches, which stay on the node."""
    return place if isinstance(place, Path) else fallback


def write_whole(place: Place, data: bytes) -> None:
    """Readers see the old content or the new, never part: a rename on a filesystem; one PUT,
    which is already all-or-nothing, on an object store."""
    if isinstance(place, Path):
        tmp = place.with_name(f".{place.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        tmp.replace(place)
    else:
        place.write_bytes(data)


def remove_tree(place: Place) -> None:
    if isinstance(place, Path):
        shutil.rmtree(place, ignore_errors=True)
    elif place.exists():
        place.fs.rm(place.path, recursive=True)
