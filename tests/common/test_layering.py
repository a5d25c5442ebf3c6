"""The layering rule: client/ and server/ import only common/; common/ imports none of the others;
no module imports an underscore name from another package module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "client", "server", "simulations")
ALLOWED = {
    "common": {"common"},
    "client": {"common", "client"},
    "server": {"common", "server"},
    "simulations": set(PACKAGES),
}


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) of every import in `path`, nested ones too."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, a.name, []) for a in node.names)
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_follow_the_layering(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module, names in _imports(path):
            top = module.split(".")[0]
            if top in PACKAGES and top not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
            if top in PACKAGES:
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                bad += [f"{path.relative_to(ROOT)}:{line} imports {module}.{n}" for n in private]
    assert bad == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_underscore_attribute_of_another_package_module(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text())
        aliases = set()  # names bound to package modules (`from common.privacy import audit as A`)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
                aliases |= {a.asname or a.name for a in node.names}
            elif isinstance(node, ast.Import):
                ours = [a for a in node.names if a.name.split(".")[0] in PACKAGES]
                aliases |= {a.asname or a.name for a in ours}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                bad.append(f"{where} uses {node.value.id}.{node.attr}")
    assert bad == []


def test_every_module_opens_with_a_docstring() -> None:
    missing = [
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert missing == []
