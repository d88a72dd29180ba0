"""Atomic outputs: write into a temporary sibling, rename into place on success.

A killed job therefore never leaves a file or directory that looks finished: Snakemake (and a
user) only ever see either nothing or the complete output.

Nothing is deleted that this module did not create: a directory output never replaces a
non-empty directory, and a file output replaces only a file that was already there when the
write began (the caller's old version). Whatever appears at the destination while the output is
being written is left alone, and the commit fails with :class:`OutputExistsError` naming it.

Outputs get (at least) the modes the process's umask gives any new file or directory (644 and 755
under the usual 022), not the private 600/700 of the temporary names or of writers that make
their files private, so a group can share the results.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path


class OutputExistsError(FileExistsError):
    """The destination of an atomic output is occupied by something this write did not create."""


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, hence the fallback only)
    os.umask(mask)
    return mask


def _share(path: Path) -> None:
    """Give ``path``, and everything in it, at least the modes the umask gives a new file or
    directory: mkstemp/mkdtemp create 600/700, and so do some writers (safetensors' save_file)."""
    umask = _umask()
    for p in [path, *(path.rglob("*") if path.is_dir() and not path.is_symlink() else [])]:
        if p.is_symlink():
            continue
        mode = stat.S_IMODE(p.stat().st_mode)
        shared = mode | ((0o777 if p.is_dir() else 0o666) & ~umask)
        if shared != mode:
            p.chmod(shared)


def _is_empty_dir(path: Path) -> bool:
    if path.is_symlink() or not path.is_dir():
        return False
    with os.scandir(path) as entries:
        return next(entries, None) is None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``.

    With ``directory=True`` the temporary path is an (empty) directory, and ``path`` must be
    absent or an empty directory. A file output replaces a file already at ``path`` when the
    write began; if ``path`` was absent then and something appeared there meanwhile, nothing is
    replaced. In both cases the occupied destination raises :class:`OutputExistsError` (at the
    start, or at the commit when it appeared meanwhile), and it is left exactly as it is. On any
    exception the temporary path is removed.
    """
    path = Path(path)
    existed = os.path.lexists(path)
    if existed and directory and not _is_empty_dir(path):
        raise OutputExistsError(f"{path}: already exists (and is not an empty directory); remove it first")
    if existed and not directory and path.is_dir():
        raise OutputExistsError(f"{path}: is a directory; expected the path of a file")
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        _share(tmp)
        _commit(tmp, path, directory, replace=existed)
    except BaseException:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _appeared(path: Path) -> OutputExistsError:
    return OutputExistsError(
        f"{path}: appeared while this output was being written; left it untouched and discarded the new output"
    )


def _commit(tmp: Path, path: Path, directory: bool, replace: bool) -> None:
    if directory:
        # rename(2) moves a directory only onto nothing or an empty directory: a destination that
        # filled up meanwhile makes it fail, atomically, instead of being deleted.
        try:
            os.rename(tmp, path)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise _appeared(path) from None
            raise
        return
    if replace:  # the caller's old file: replace it (but never a directory that took its place)
        try:
            os.replace(tmp, path)
        except IsADirectoryError:
            raise _appeared(path) from None
        return
    try:
        os.link(tmp, path)  # fails, atomically, if anything is at `path` by now
    except FileExistsError:
        raise _appeared(path) from None
    except OSError:  # a file system without hard links: check, then rename (a narrow window)
        if os.path.lexists(path):
            raise _appeared(path) from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def write_parquet(df, path: str | os.PathLike) -> None:
    """Write a polars DataFrame to parquet atomically."""
    with atomic_path(path) as tmp:
        df.write_parquet(tmp)


def write_text(text: str, path: str | os.PathLike) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
