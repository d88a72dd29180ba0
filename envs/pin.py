"""Write envs/<env>.linux-64.pin.txt from the versions installed here (the ones the tests pass with).

    python envs/pin.py        # in the venv that ran the tests (README, Development)

`snakemake --sdm conda` prefers a pin file beside an environment file: it creates the environment
with `conda create --file <env>.linux-64.pin.txt` and falls back to the ranges of <env>.yaml only
if that fails. A pin file holds conda specs, so it pins the conda packages (python, pip, ...)
there; the pip packages (those of <env>.yaml and every package they need, as installed here) are
its `# pip: name==version` lines (comments to conda), which <env>.post-deploy.sh installs when the
environment came from the pin file.
"""

from __future__ import annotations

import importlib.metadata as md
import platform
import re
import sys
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ENVS = Path(__file__).resolve().parent
PLATFORM = "linux-64"


def installed(name: str) -> str | None:
    try:
        return md.version(name).split("+")[0]  # 2.13.0+cpu -> 2.13.0 (PyPI's Linux wheel is the CUDA build)
    except md.PackageNotFoundError:
        return None


def closure(names: list[str]) -> list[str]:
    """``names`` and every distribution they need here (their requirements, markers evaluated,
    extras left out), as installed; those not installed are left out."""
    seen: dict[str, str] = {}
    todo = list(names)
    while todo:
        name = Requirement(todo.pop()).name
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen or installed(name) is None:
            continue
        seen[key] = md.metadata(name)["Name"]
        for line in md.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return sorted(seen.values(), key=str.lower)


def pin_lines(env_file: Path) -> list[str]:
    env = yaml.safe_load(env_file.read_text())
    lines = [
        f"# Pinned {env_file.name}: written by envs/pin.py from the versions the tests passed with",
        f"# (Python {platform.python_version()}). `snakemake --sdm conda` prefers this file; {env_file.name}",
        "# keeps the ranges. Conda packages below; pip packages are the `# pip:` lines, installed by",
        f"# {env_file.stem}.post-deploy.sh, with what they need. One not installed there keeps its range.",
    ]
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            missing = [line for line in dep["pip"] if installed(Requirement(line).name) is None]
            lines += [f"# pip: {name}=={installed(name)}" for name in closure(dep["pip"])]
            lines += [f"# pip: {line}" for line in missing]
            continue
        name = re.split(r"[ <>=]", dep.strip(), maxsplit=1)[0]
        if name == "python":
            lines.append(f"python={sys.version_info.major}.{sys.version_info.minor}")
        else:
            version = installed(name)
            lines.append(f"{name}=={version}" if version else name)
    return lines


def main() -> None:
    for env_file in sorted(ENVS.glob("*.yaml")):
        out = ENVS / f"{env_file.stem}.{PLATFORM}.pin.txt"
        out.write_text("\n".join(pin_lines(env_file)) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
