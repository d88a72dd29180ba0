"""The code a workflow rule runs, as one short hash: its script and the sftrl modules it uses.

Each rule passes ``code_fingerprint(script, ...)`` as a param, so Snakemake's params trigger
reruns a rule's jobs when the code they run changes, and only then: not when a file is merely
touched (a ``git checkout`` sets every mtime), and not when a module that the rule never imports
changes. Snakemake's own ``code`` trigger compares the mtime of ``script:`` files and never looks
into ``sftrl``; the profiles turn it off (``rerun-triggers`` in ``profiles/*/profile.yaml``).

The modules are found by reading the sources (``ast``), not by importing them: the Snakemake
process that builds the DAG never imports torch. Every ``import`` of an ``sftrl`` module counts,
at the top of a module or inside a function, except inside :data:`DISPATCHERS`.
"""

from __future__ import annotations

import ast
import hashlib
import os
from functools import cache
from pathlib import Path

PACKAGE = "sftrl"
PACKAGE_DIR = Path(__file__).resolve().parent
# Modules that start code chosen at run time: ``sftrl.launch`` runs the trainer a job names
# (sft or rl), importing each inside its job function. Their own source counts, their imports do
# not: a rule that goes through them names its trainer module (``code("rl.py", "sftrl.ppo")``).
DISPATCHERS = {"sftrl.launch"}


def module_file(name: str) -> Path | None:
    """The source file of module ``name`` of this package (None if it is not one)."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _statements(body: list[ast.stmt]):
    """Every statement in ``body`` and in the blocks nested in it (functions, classes, if, try,
    with, loops, match): where an ``import`` can stand. Faster than ``ast.walk``, which also visits
    every expression."""
    for node in body:
        yield node
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            inner = getattr(node, field, None)
            if isinstance(inner, list):
                yield from _statements(inner)


@cache
def imported_modules(path: Path, module: str | None = None) -> frozenset[str]:
    """The ``sftrl`` modules that the source at ``path`` imports (``module``: its own name)."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    nodes = tree.body if module in DISPATCHERS else _statements(tree.body)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package this module is in
                package = (module or PACKAGE).split(".")
                package = package[: len(package) - node.level + (path.name == "__init__.py")]
                base = ".".join([*package, *([base] if base else [])])
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            # `import sftrl.a.b` imports sftrl and sftrl.a too
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if module_file(prefix) is not None:
                    found.add(prefix)
    return frozenset(found)


def used_modules(script: str | os.PathLike, *modules: str) -> list[str]:
    """Every ``sftrl`` module that ``script`` and ``modules`` import, directly or not (sorted)."""
    todo = set(imported_modules(Path(script))) | set(modules)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_file(name)
        if path is None:
            raise ValueError(f"{name}: not a module of {PACKAGE} ({PACKAGE_DIR})")
        seen.add(name)
        todo |= imported_modules(path, name) - seen
    return sorted(seen)


def code_fingerprint(script: str | os.PathLike, *modules: str) -> str:
    """A hash of the contents of ``script`` and of every module :func:`used_modules` finds.

    Names enter as module names and the script's file name, so copies of the repository (another
    clone, another directory) give the same fingerprint for the same code."""
    digest = hashlib.sha256()
    files = [(Path(script).name, Path(script))]
    files += [(name, module_file(name)) for name in used_modules(script, *modules)]
    for name, path in files:
        digest.update(f"{name}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\0".encode())
    return digest.hexdigest()[:16]
