"""The one way this project writes files: to a temporary name beside the target, then rename.

A reader never sees a half-written file: a process killed mid-write leaves the previous file
(or none) at the target path and a hidden temporary `.<name>.<random>.partial`, which
`remove_partial_files` deletes on the next start. A full disk (ENOSPC, EDQUOT) or a read-only
folder becomes one `UserError` sentence naming the path, with the temporary removed.

Every writer takes the final path; the object to write comes first, as in `torch.save`.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from swag.errors import UserError

PARTIAL_SUFFIX = ".partial"
_SPACE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def disk_error(path: str | Path, error: OSError, needed: int | None = None) -> UserError:
    """The sentence for an `OSError` met while writing `path` (full disk, permissions, ...)."""
    if error.errno in _SPACE_ERRORS:
        size = f" (about {needed / 2**20:.1f} MiB needed)" if needed else ""
        return UserError(
            f"no space left to write {path}{size}; free space on that disk or choose another "
            "output folder (files written before are intact)"
        )
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"cannot write {path}: permission denied; choose a writable folder")
    return UserError(f"cannot write {path}: {error.strerror or error}; check the output folder")


@contextlib.contextmanager
def atomic_output(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path`; on success flush, fsync and rename it to `path`.

    On any exception the temporary is removed and `path` keeps its previous content; an
    `OSError` (full disk, permissions) is raised as a `UserError` naming `path`.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; pass a file path to write to")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{path.parent} exists and is not a folder; choose another path") from None
    except OSError as error:
        raise disk_error(path, error) from None
    try:
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX
        )
    except OSError as error:
        raise disk_error(path, error) from None
    try:
        with os.fdopen(handle, mode) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as error:
        _remove(temporary)
        raise disk_error(path, error) from None
    except BaseException:
        _remove(temporary)
        raise


def _remove(temporary: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_output(path, "wb") as stream:
        stream.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj, path: str | Path) -> None:
    """`torch.save(obj)` to `path` atomically."""
    import torch

    with atomic_output(path, "wb") as stream:
        torch.save(obj, stream)


def atomic_savez(path: str | Path, **arrays) -> None:
    """`numpy.savez(**arrays)` to `path` atomically (the name is kept as given)."""
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_save_npy(path: str | Path, array) -> None:
    """`numpy.save(array)` to `path` atomically."""
    import numpy as np

    with atomic_output(path, "wb") as stream:
        np.save(stream, array, allow_pickle=False)


def atomic_savefig(figure, path: str | Path, **savefig_kwargs) -> Path:
    """`figure.savefig` to `path` atomically (format from the suffix); returns the path."""
    path = Path(path)
    file_format = path.suffix.lstrip(".") or "png"
    with atomic_output(path, "wb") as stream:
        figure.savefig(stream, format=file_format, **savefig_kwargs)
    return path


def remove_partial_files(directory: str | Path) -> list[Path]:
    """Delete the temporaries that killed writers left in `directory`; returns them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for leftover in directory.glob(f".*{PARTIAL_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
            removed.append(leftover)
    return removed
