"""The documentation's reference is generated from the code (scripts/docs_reference.py), and nothing
declared goes undescribed: every config option, adapter option, CSV column, command and flag."""

import argparse
import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest

from pvera_bench import cli, results, schema

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ref():
    spec = importlib.util.spec_from_file_location("docs_reference", ROOT / "scripts" / "docs_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_declared_option_column_command_and_flag_has_a_description(ref):
    missing = ref.undocumented()
    assert not missing, f"{len(missing)} without a description, e.g.:\n" + "\n".join(missing[:40])


def test_an_undescribed_option_column_or_flag_is_caught(ref, monkeypatch):
    @dataclasses.dataclass
    class Extra:
        new_option: int = schema.rule(type=int, ge=1)

    monkeypatch.setitem(schema.GROUPS, "extra", Extra)
    if hasattr(results, "ROW"):
        monkeypatch.setattr(results, "ROW", (*results.ROW, type(results.ROW[0])(name="new_column", help="")))
    else:
        monkeypatch.setattr(results, "COLUMNS", [*results.COLUMNS, "new_column"])
    build = ref.parsers

    def with_a_bare_flag():
        out = build()
        out["report"].add_argument("--new-flag")
        return out

    monkeypatch.setattr(ref, "parsers", with_a_bare_flag)
    missing = ref.undocumented()
    assert "config option extra.new_option" in missing
    assert "CSV column new_column" in missing
    assert "command pvera-bench report: --new-flag (help)" in missing


def test_reference_pages_list_every_option_column_and_flag(ref):
    config = ref.config_page()
    for group, opts in ref.group_options().items():
        for option, _ in opts:
            assert f"| `{group}.{option}` |" in config
    for key in ref.TOP_LEVEL:
        assert f"| `{key}` |" in config
    adapters = ref.adapters_page()
    for name, opts in ref.adapter_options().items():
        assert f"## `{name}`" in adapters
        for option, *_ in opts:
            assert f"| `adapter.{option}` |" in adapters
    columns = ref.csv_page()
    assert [m.group(1) for m in re.finditer(r"^\| \d+ \| `([^`]+)` \|", columns, re.M)] == list(results.COLUMNS)
    page = ref.cli_page()
    for cmd, parser in ref.parsers().items():
        for prog, action, _ in ref._walk(parser, f"pvera-bench {cmd}"):
            if action is None:
                assert f"`{prog}`" in page
            elif action.option_strings:
                assert f"`{action.option_strings[0]}`" in page
    published = ref.published_page()
    assert "--reference vpetl" in published and "| LoRA | `lora` | noah | 0.29M | 72.25 |" in published


def test_every_command_of_the_cli_has_its_parser_in_the_reference(ref):
    words = set(re.findall(r"^\s+pvera-bench ([a-z]+) ", cli.usage(), re.M))
    assert words == set(ref.COMMANDS), "a command of `pvera-bench --help` without a build_parser() in the reference"
    for parser in ref.parsers().values():
        assert isinstance(parser, argparse.ArgumentParser)
