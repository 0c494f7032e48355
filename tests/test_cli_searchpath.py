"""A config folder of one's own on Hydra's search path (docs/guides/extend.md): its choices are
valid choices, and plugins' folders are added after it, not instead of it."""

from pathlib import Path

from pvera_bench import cli, registry


def own_folder(tmp_path: Path) -> Path:
    (tmp_path / "mine" / "task").mkdir(parents=True)
    (tmp_path / "mine" / "task" / "my_digits.yaml").write_text("name: my_digits\nnum_classes: 10\n")
    return tmp_path / "mine"


def test_a_task_in_ones_own_folder_is_a_valid_choice(tmp_path):
    mine = own_folder(tmp_path)
    args = [f"hydra.searchpath=[file://{mine}]", "task=my_digits"]
    assert cli.user_config_dirs(args) == (mine,)
    assert cli.check_choices(args) is None
    err = cli.check_choices([f"hydra.searchpath=[file://{mine}]", "task=my_digit"])
    assert err.startswith("unknown task 'my_digit'") and "my_digits" in err
    assert "my_digits" not in cli.check_choices(["task=my_digit"])  # without the folder it is not a choice


def test_plugins_folders_join_the_users_search_path(tmp_path, monkeypatch):
    mine, plugin = own_folder(tmp_path), tmp_path / "plugin"
    monkeypatch.setattr(registry, "config_dirs", lambda: [plugin])
    got = cli.plugin_search_path(["task=demo", f"hydra.searchpath=[file://{mine}]", "adapter=lora"])
    assert got == ["task=demo", f"hydra.searchpath=[file://{mine},file://{plugin}]", "adapter=lora"]
    assert cli.plugin_search_path(["task=demo"]) == ["task=demo", f"hydra.searchpath=[file://{plugin}]"]
    monkeypatch.setattr(registry, "config_dirs", lambda: [])
    assert cli.plugin_search_path(["task=demo"]) == ["task=demo"]
