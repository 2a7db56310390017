"""The one way this project writes files: to a temporary name beside the target, then rename.

A reader never sees a half-written file: a process killed mid-write leaves the previous file
(or none) at the target path and a hidden temporary `.<name>.<random>.partial`, which
`remove_partial_files` deletes on the next start. A full disk (ENOSPC, EDQUOT) or a read-only
folder becomes one `UserError` sentence naming the path, with the temporary removed.

Every writer takes the final path; the object to write comes first, as in `torch.save`.

Also here: `locked_directory` (one process writes into an output folder at a time),
`output_directory` (a folder path that must not be a file) and `append_line` (the one
non-atomic writer, for line logs whose torn last line readers drop).

Fault injection for the test suite (tests/test_faults.py): the environment variable
SWAG_FAULT = "<fault>@<n>" makes the n-th write of this process fail: `kill` exits the process
right after write n completed (a kill between two writes), `killmid` exits halfway through
write n (its temporary, or half a log line, is left behind), `enospc` raises ENOSPC in write n.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from swag.errors import UserError

PARTIAL_SUFFIX = ".partial"
LOCK_NAME = ".lock"
_SPACE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_writes = 0  # writes of this process, for SWAG_FAULT
_TORCH_WRITE_FAILURES = ("unexpected pos", "file write failed", "PytorchStreamWriter")
_UMASK = os.umask(0)
os.umask(_UMASK)  # read the process umask: files get the mode open() would give them


def _fault_due(fault: str) -> bool:
    """Test-only: whether SWAG_FAULT asks for `fault` in the current write (module docstring)."""
    spec = os.environ.get("SWAG_FAULT", "")
    name, _, count = spec.partition("@")
    return name == fault and count.isdigit() and int(count) == _writes


def _inject(fault: str) -> None:
    if _fault_due(fault):
        if fault == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os._exit(137)


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
    os.fchmod(handle, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide results from other users
    global _writes
    _writes += 1
    try:
        with os.fdopen(handle, mode) as stream:
            yield stream
            stream.flush()
            _inject("enospc")
            _inject("killmid")
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as error:
        _remove(temporary)
        raise disk_error(path, error) from None
    except BaseException:
        _remove(temporary)
        raise
    _inject("kill")


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
        try:
            torch.save(obj, stream)
        except RuntimeError as error:
            # torch's zip writer reports a failed write as a RuntimeError from its C++ stream
            # writer ("unexpected pos", "file write failed"); anything else is not the disk.
            if not any(mark in str(error) for mark in _TORCH_WRITE_FAILURES):
                raise
            free = shutil.disk_usage(Path(path).parent).free
            raise OSError(errno.ENOSPC if free < 2**26 else errno.EIO, str(error)) from None


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


def append_line(path: str | Path, line: str) -> None:
    """Append `line` and a newline to a log, flushed to disk (`read_lines` drops a torn line)."""
    global _writes
    _writes += 1
    data = (line + "\n").encode()
    try:
        with open(path, "ab") as stream:
            _inject("enospc")
            if _fault_due("killmid"):
                stream.write(data[: len(data) // 2])
                stream.flush()
                _inject("killmid")
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    except OSError as error:
        raise disk_error(path, error) from None
    _inject("kill")


def read_lines(path: str | Path) -> list[str]:
    """The complete lines of a log written by `append_line`; a torn last line is dropped."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").split("\n")
    return [line for line in lines[:-1] if line.strip()]  # after the last newline: torn or empty


def output_directory(path: str | Path, flag: str) -> Path:
    """Create the output folder `path` (given as `flag`); a file at that path is a UserError."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder; pass a folder for the outputs")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{flag} {path} lies under a file; pass a folder for the outputs") from None
    except OSError as error:
        raise disk_error(path, error) from None
    remove_partial_files(path)
    return path


@contextlib.contextmanager
def locked_directory(directory: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on `directory` (a `.lock` file) while writing into it.

    A second process that asks for the same folder gets a UserError instead of interleaving
    its files with the first one's. The lock dies with the process, so a killed run leaves
    none behind.
    """
    directory = Path(directory)
    handle = os.open(directory / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"another process is writing to {directory}; wait for it to finish or choose "
                "another output folder"
            ) from None
        yield directory
    finally:
        os.close(handle)


def load_npy(path: str | Path, mmap: bool = False):
    """`numpy.load` of a `.npy` without pickles; a missing, empty, truncated, object-array or
    foreign file is a UserError naming it."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass the path of a .npy file")
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise _unreadable(path, ".npy", error) from None
    if not isinstance(array, np.ndarray):
        raise UserError(f"{path} is an .npz archive, not a .npy array; pass a .npy file")
    return array


def load_npz(path: str | Path) -> dict:
    """Every array of an `.npz` archive, read now (no pickles); a damaged file is a UserError."""
    import zipfile

    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass the path of a .npz file")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("a .npy array, not a zip archive")
        with archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as error:
        raise _unreadable(path, ".npz", error) from None


def _unreadable(path: Path, kind: str, error: Exception) -> UserError:
    reason = "it is empty" if path.stat().st_size == 0 else f"{error}".split("\n")[0]
    return UserError(
        f"{path} is not a readable {kind} file ({reason}); it may be truncated, hold pickled "
        f"objects, or be another format: write it again with numpy.save{'z' * (kind == '.npz')}"
    )
