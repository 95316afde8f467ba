"""Every import points down: the package order of ``videoopd.LAYERS`` holds module by module,
library packages never import command modules, and ``opd_kernels`` knows nothing of videoopd."""

import ast
from pathlib import Path

import pytest

import videoopd

ROOT = Path(videoopd.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Absolute module names ``path`` imports, at any depth (function-level imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def videoopd_files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py"))


def rank(module: str) -> int | None:
    """The layer of ``videoopd.X...``: its package's place in LAYERS; a top-level command module
    ranks above every package; None for names outside videoopd (and videoopd itself)."""
    parts = module.split(".")
    if parts[0] != "videoopd" or len(parts) == 1:
        return None
    if parts[1] in videoopd.LAYERS:
        return videoopd.LAYERS.index(parts[1])
    if (ROOT / f"{parts[1]}.py").is_file():
        return len(videoopd.LAYERS)
    return None  # a name imported from videoopd itself (e.g. LAYERS)


def test_every_package_is_a_layer():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages == set(videoopd.LAYERS)


@pytest.mark.parametrize("path", videoopd_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path):
    module = "videoopd." + ".".join(path.relative_to(ROOT).with_suffix("").parts)
    own = rank(module.removesuffix(".__init__"))
    if own is None:
        return
    up = sorted(name for name in imported_modules(path) if (r := rank(name)) is not None and r > own)
    assert not up, f"{module} imports from a layer above it: {up}"


def test_opd_kernels_knows_nothing_of_videoopd():
    kernels = Path(videoopd.__file__).parent.parent / "opd_kernels"
    for path in kernels.rglob("*.py"):
        assert not any(name.split(".")[0] == "videoopd" for name in imported_modules(path)), path
