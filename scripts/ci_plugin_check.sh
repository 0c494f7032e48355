#!/usr/bin/env bash
# CI: a plugin package end to end. Installs examples/pvera-bench-fact (FacT-TT and FacT-TK, entry point
# group pvera_bench.adapters) into the current virtual environment, which already has pvera-bench, and
# runs, in a scratch directory: --help lists both; each trains to an ok row on the demo task; a bad
# option is one line and exit 2; `evaluate` of a run gives its numbers exactly; `export` is refused with
# the adapter's own reason; `report --reference vpetl_fact` shows FacT beside a built-in adapter and the
# published row; the example's own tests pass; uninstalled, adapter=fact_tt is the unknown-adapter line.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
export HF_HUB_OFFLINE=1 PVERA_BENCH_PLUGINS=1
say() { echo "+ $*"; }
fail() { echo "ci_plugin_check: FAILED: $*" >&2; exit 1; }

# The command must exit 2 with exactly one line on stderr, equal to $1 (or starting with it when $1 ends in '*').
one_line() {
  local want="$1"; shift
  say "$* (expect exit 2, one line)"
  set +e; "$@" >/dev/null 2>err.txt; local rc=$?; set -e
  [ "$rc" = 2 ] || { cat err.txt; fail "$* exited $rc, not 2"; }
  [ "$(grep -c . err.txt)" = 1 ] || { cat err.txt; fail "$* wrote more than one line"; }
  # shellcheck disable=SC2053
  [[ "$(cat err.txt)" == $want ]] || fail "$*: got '$(cat err.txt)', expected '$want'"
}

say "pip install $repo/examples/pvera-bench-fact"
python -m pip install --quiet "$repo/examples/pvera-bench-fact"
work="$(mktemp -d)"; cd "$work"
fast=(task=demo backbone=vit_tiny_random protocol=holdout trainer.epochs=2 runtime.progress=false seed=0)

say "pvera-bench --help"
pvera-bench --help > help.txt
grep -q "^  fact_tt .*\[pvera-bench-fact\]$" help.txt && grep -q "^  fact_tk .*\[pvera-bench-fact\]$" help.txt \
  || { cat help.txt; fail "--help does not list fact_tt and fact_tk"; }

one_line "pvera-bench: error: adapter.r=0 is invalid for adapter fact_tt: allowed an integer >= 1" \
  pvera-bench adapter=fact_tt adapter.r=0 "${fast[@]}"
one_line "pvera-bench: error: adapter.scale='big' is invalid for adapter fact_tk: allowed a number > 0" \
  pvera-bench adapter=fact_tk adapter.scale=big "${fast[@]}"

for a in fact_tt fact_tk linear_probe; do
  say "pvera-bench adapter=$a ${fast[*]}"
  pvera-bench adapter=$a "${fast[@]}" > /dev/null
done
python - <<'EOF'
from pvera_bench import results
rows = results.read("results/results.csv")
assert [(r["adapter"], r["status"]) for r in rows] == [("fact_tt", "ok"), ("fact_tk", "ok"), ("linear_probe", "ok")], rows
# trainable tensors by formula at vit_tiny_random (d = 64, 4 blocks): TT r=8 2dr + 12 L r^2; TK r=32 2dr + 12 L r + r^3
assert [int(r["params_adapter"]) for r in rows[:2]] == [2 * 64 * 8 + 12 * 4 * 64, 2 * 64 * 32 + 12 * 4 * 32 + 32 ** 3]
print("ok rows:", ", ".join(f"{r['adapter']} test_acc {r['test_acc']}" for r in rows))
EOF

run_dir="$(python -c 'from pvera_bench import results; print(results.read("results/results.csv")[0]["run_dir"])')"
say "pvera-bench evaluate $run_dir results_csv=re.csv"
pvera-bench evaluate "$run_dir" results_csv=re.csv runtime.progress=false > /dev/null
python - <<'EOF'
from pvera_bench import results
(row,), (again,) = results.read("results/results.csv")[:1], results.read("re.csv")
for k in ("test_acc", "test_nll", "test_ece", "test_brier"):
    assert again[k] == row[k], (k, again[k], row[k])
print("evaluate: the training row's numbers exactly:", row["test_acc"], row["test_nll"])
EOF

one_line "pvera-bench export: error: fact_tt has no PEFT form: *" pvera-bench export "$run_dir" --out exported
[ ! -e exported ] || fail "export wrote something"

say "pvera-bench report --reference vpetl_fact --metric acc_max"
pvera-bench report --reference vpetl_fact > report.md
for want in "published: FacT [vpetl_fact]" "| fact_tt" "| fact_tk" "| linear_probe"; do
  grep -qF "$want" report.md || { cat report.md; fail "report lacks '$want'"; }
done

say "pytest examples/pvera-bench-fact"
(cd "$repo/examples/pvera-bench-fact" && python -m pytest -q -p no:cacheprovider)

say "pip uninstall pvera-bench-fact"
python -m pip uninstall --quiet --yes pvera-bench-fact
one_line "pvera-bench: error: unknown adapter 'fact_tt'; valid adapter names: *" pvera-bench adapter=fact_tt "${fast[@]}"
one_line "pvera-bench: error: unknown recipe 'fact'; valid recipe names: *" pvera-bench recipe=fact adapter=lora task=cifar100
echo "ci_plugin_check: OK"
