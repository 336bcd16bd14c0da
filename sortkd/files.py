"""Atomic file writes and file checksums.

Every output of the pipeline is written to a temporary file in the destination folder and then
renamed onto its final name with ``os.replace``. A killed job therefore leaves either the old
file or the new one, never a torn one.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union
import json
from typing import Any, Iterable


# --- io_atomic ----------------------------------------------------------------

PathLike = Union[str, "os.PathLike[str]"]

_CHUNK = 1024 * 1024


def _fsync_file(path: Path) -> None:
    # Flush the data to disk before the rename so that a crash cannot publish an empty file.
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    The caller creates and writes the temporary file (it does not exist yet, so it gets the
    normal permissions of a new file). On error the temporary file is removed and ``path`` is
    left untouched. The parent folder is created if needed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(
                f"atomic write of {target}: nothing was written to the temporary file {tmp}"
            )
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path: PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --- io_json ------------------------------------------------------------------

def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:16]


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(Path(path), json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(Path(path), "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)
