"""References name the recipe of each published row; a Δ against a row of another recipe says so."""

import pytest

from pvera_bench.report import references

from test_report import main_out, run, write_csv  # noqa: F401

def test_every_shipped_row_names_its_recipe():
    for ref in references.available().values():
        for r in ref.rows:
            assert isinstance(r["recipe"], str) and r["recipe"] and r["recipe_note"], (ref.name, r["method"])
    vpetl = {r["method"]: r["recipe"] for r in references.get("vpetl").rows}
    assert {m: vpetl[m] for m in ("full fine-tuning", "linear probing", "Adapter", "LoRA", "AdaptFormer")} == \
        {"full fine-tuning": "vpt", "linear probing": "vpt", "Adapter": "noah", "LoRA": "noah", "AdaptFormer": "vpetl"}
    assert {r["recipe"] for r in references.get("pvera_paper").rows} == {"pvera_paper"}


@pytest.mark.parametrize("recipe, warned", [("noah", True), ("vpetl", False)])
def test_adaptformer_delta_warns_only_across_recipes(capsys, tmp_path, recipe, warned):
    rows = [run("adaptformer", "cifar100", 0, 71.0, recipe=recipe), run("adaptformer", "dtd", 0, 69.0, recipe=recipe)]
    path = write_csv(tmp_path / "r.csv", rows)
    rc, md, _ = main_out(capsys, ["--results", str(path), "--reference", "vpetl", "--metric", "acc"])
    assert rc == 0
    line = "Recipe mismatch: adaptformer ran recipe noah, published: AdaptFormer [vpetl] was produced by recipe vpetl"
    assert (line in md) is warned
    assert ("| Δ adaptformer − published: AdaptFormer [vpetl] (recipes differ: noah vs vpetl) | +0.2 | -1.5 |"
            in md) is warned
    if not warned:
        assert "| Δ adaptformer − published: AdaptFormer [vpetl] | +0.2 | -1.5 |" in md and "Recipe mismatch" not in md
