"""The public API that docs/guides/add-your-method.md names is what a plugin uses, and stays: this test
imports exactly the names of the guide's table, and the worked example imports nothing else."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "guides" / "add-your-method.md"
EXAMPLE = REPO / "examples" / "pvera-bench-fact"

API = {
    "pvera_bench.registry": {"Adapter", "option", "declare", "add_configs", "add_references", "ENTRY_POINT_GROUP",
                             "PLUGINS_ENV"},
    "pvera_bench.adapters": {"AdapterLayer", "AdapterOptionError", "blocks", "apply", "count_trainable"},
    "pvera_bench.export": {"peft_exporter", "PeftExport"},
}


def guide_names() -> dict[str, set[str]]:
    table = GUIDE.read_text(encoding="utf-8").split("## The public API", 1)[1]
    out: dict[str, set[str]] = {}
    for module, name in re.findall(r"^\| `(pvera_bench(?:\.\w+)*)\.(\w+)` \|", table, flags=re.M):
        out.setdefault(module, set()).add(name)
    return out


def test_the_guide_names_the_pinned_api_and_every_name_imports():
    assert guide_names() == API
    for module, names in API.items():
        m = importlib.import_module(module)
        for name in names:
            assert hasattr(m, name), f"{module}.{name}"


def test_the_declaration_api_keeps_its_signature():
    from pvera_bench.registry import ENTRY_POINT_GROUP, PLUGINS_ENV, Adapter, add_configs, add_references, declare, option

    assert ENTRY_POINT_GROUP == "pvera_bench.adapters" and PLUGINS_ENV == "PVERA_BENCH_PLUGINS"
    assert list(inspect.signature(option).parameters) == ["default", "help", "ge", "gt", "lt", "le", "choices",
                                                          "used_when"]
    assert [f for f in Adapter.__dataclass_fields__][:6] == ["name", "options", "apply", "help", "trains",
                                                            "no_peft_form"]
    assert list(inspect.signature(declare).parameters) == ["adapter"]
    assert list(inspect.signature(add_configs).parameters) == list(inspect.signature(add_references).parameters) \
        == ["path"]


def pvera_bench_imports(path: Path) -> set[tuple[str, str]]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pvera_bench"):
            out |= {(node.module, a.name) for a in node.names}
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("pvera_bench.") for a in node.names), path
    return out


@pytest.mark.parametrize("path", sorted((EXAMPLE / "pvera_bench_fact").glob("*.py")), ids=lambda p: p.name)
def test_the_worked_example_uses_only_the_public_api(path):
    for module, name in pvera_bench_imports(path):
        assert name in API.get(module, set()), f"{path.name} imports {module}.{name}, which the guide does not name"


def test_the_method_lives_only_in_its_package():
    hits = [str(p) for p in (REPO / "pvera_bench").rglob("*") if p.is_file() and p.suffix in (".py", ".yaml")
            and "fact_t" in p.read_text(encoding="utf-8", errors="replace")]
    assert hits == []


def test_without_the_example_fact_tt_is_the_usual_unknown_adapter():
    """conftest sets PVERA_BENCH_PLUGINS=0: the registry holds the built-ins only, as without the package."""
    from pvera_bench import cli, registry, schema

    with pytest.raises(registry.UnknownAdapterError, match="unknown adapter 'fact_tt'; valid names: adaptformer"):
        registry.get("fact_tt")
    assert cli.check_choices(["adapter=fact_tt"]).startswith("unknown adapter 'fact_tt'; valid adapter names: ")
    with pytest.raises(schema.ConfigError, match="adapter.name='fact_tt' is invalid: allowed adaptformer"):
        schema.check_adapter({"name": "fact_tt"})
