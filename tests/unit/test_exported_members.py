"""Public members are exported: what a package offers is exactly what its ``__all__`` says.

(The idea of httpx's ``tests/test_exported_members.py``.) Order in ``__all__`` is free.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
import types
from pathlib import Path

import pytest

PACKAGES = ["schemas", "producers", "consumers", "consumers.testing", "infra", "infra.bus"]


def _defined_names(module: types.ModuleType) -> set[str]:
    """Names a module binds itself at top level: classes, functions and assigned constants."""
    source = Path(inspect.getfile(module)).read_text(encoding="utf-8")
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _defined_in_package(package: str, name: str, value: object) -> bool:
    """Whether ``value`` was defined (not merely imported) in one of ``package``'s submodules."""
    module_name = getattr(value, "__module__", None)
    if (inspect.isclass(value) or inspect.isfunction(value)) and isinstance(module_name, str):
        return module_name.startswith(f"{package}.")
    submodules = [mod for key, mod in list(sys.modules.items()) if key.startswith(f"{package}.") and mod is not None]
    return any(getattr(mod, name, None) is value and name in _defined_names(mod) for mod in submodules)


@pytest.mark.parametrize("package", PACKAGES)
def test_all_is_a_list_of_unique_existing_names(package: str) -> None:
    module = importlib.import_module(package)
    exported = module.__all__
    assert isinstance(exported, list | tuple)
    assert all(isinstance(name, str) for name in exported)
    duplicates = sorted({name for name in exported if exported.count(name) > 1})
    assert duplicates == []
    missing = [name for name in exported if not hasattr(module, name)]
    assert missing == []


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_member_is_exported(package: str) -> None:
    module = importlib.import_module(package)
    public = {
        name: value
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    unexported = sorted(
        name
        for name, value in public.items()
        if name not in module.__all__ and _defined_in_package(package, name, value)
    )
    assert unexported == []


def test_the_check_would_notice_an_unexported_member() -> None:
    schemas = importlib.import_module("schemas")
    assert _defined_in_package("schemas", "CATALOG", schemas.CATALOG)  # a constant (an instance)
    assert _defined_in_package("schemas", "Money", schemas.Money)  # a type alias
    assert _defined_in_package("schemas", "AvroCodec", schemas.AvroCodec)
    assert _defined_in_package("schemas", "read_fingerprint", schemas.read_fingerprint)
    assert not _defined_in_package("schemas", "Path", Path)  # imported from the standard library


def test_importing_schemas_does_not_import_a_kafka_client() -> None:
    code = "import sys, schemas; print(sorted(m for m in sys.modules if m.split('.')[0] in ('aiokafka', 'kafka')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "[]"
