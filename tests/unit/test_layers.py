"""The architecture as imports: the four layers (also checked by import-linter in CI, `[tool.importlinter]`),
a runtime that knows no business, and infra that uses only the public names of the layers below."""

from __future__ import annotations

import grimp
import pytest

PACKAGES = ("schemas", "producers", "consumers", "infra")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES)


def test_each_layer_imports_only_the_ones_below_it(graph: grimp.ImportGraph) -> None:
    upward = [
        (lower, higher)
        for index, lower in enumerate(PACKAGES)
        for higher in PACKAGES[index + 1 :]
        if graph.chain_exists(importer=lower, imported=higher, as_packages=True)
    ]
    assert upward == []


def test_the_runtime_imports_no_business_group(graph: grimp.ImportGraph) -> None:
    runtime = sorted(
        module
        for module in graph.find_descendants("consumers") | {"consumers"}
        if module != "consumers.groups" and not module.startswith("consumers.groups.")
    )
    assert "consumers._runner" in runtime
    business = graph.find_descendants("consumers.groups") | {"consumers.groups"}
    offenders = {module: sorted(graph.find_upstream_modules(module) & business) for module in runtime}
    assert {module: found for module, found in offenders.items() if found} == {}


def test_infra_uses_only_the_public_names_of_the_layers_below(graph: grimp.ImportGraph) -> None:
    private = []
    for module in graph.find_descendants("infra") | {"infra"}:
        for imported in graph.find_modules_directly_imported_by(module):
            top, _, rest = imported.partition(".")
            if top in PACKAGES[:3] and rest.startswith("_"):
                private.append(f"{module} -> {imported}")
    assert sorted(private) == []
