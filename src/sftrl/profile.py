"""`sftrl profile install`: the project's SLURM profile where Snakemake looks for named profiles.

Snakemake finds ``--profile NAME`` in the working directory, then in the user's configuration
directory (``$XDG_CONFIG_HOME/snakemake/NAME``, ``~/.config/snakemake/NAME`` by default), then in
``/etc/xdg/snakemake/NAME``. Copying ``profiles/slurm`` to the user's one makes the command that
users of Snakemake clusters type, ``snakemake --profile slurm``, work from this repository.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sftrl.atomic import atomic_path

NAME = "slurm"
PROFILE_FILE = "profile.yaml"


def source_profile() -> Path:
    """profiles/slurm of this repository (the package is installed from it, editable)."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        candidate = root / "profiles" / NAME / PROFILE_FILE
        if candidate.is_file():
            return candidate.parent
    raise ValueError(f"profiles/{NAME}/{PROFILE_FILE} not found: run this from the sftrl repository")


def default_destination() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config) / "snakemake" / NAME


def install_profile(dest: str | os.PathLike | None = None, force: bool = False) -> str:
    """Copy the SLURM profile to ``dest`` (default: :func:`default_destination`); a line saying
    what was done. A different profile already at ``dest`` is kept unless ``force``."""
    source = source_profile()
    dest = Path(dest) if dest else default_destination()
    text = (source / PROFILE_FILE).read_text()
    target = dest / PROFILE_FILE
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise ValueError(f"--dest {dest}: exists and is not a directory")
    if target.is_file() and target.read_text() == text:
        return f"{dest}: already installed (the same as {source})"
    others = sorted(p.name for p in dest.iterdir()) if dest.is_dir() else []
    if others and not force:
        raise ValueError(
            f"--dest {dest}: holds another profile ({', '.join(others[:5])}); keep it, or replace it with --force"
        )
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    for name in others:  # --force: the old profile's other files go, so only this one is read
        if name != PROFILE_FILE:
            old = dest / name
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    return f"{dest}: installed from {source}; `snakemake --profile {NAME}` uses it"
