"""One identity per result: the resolved resume key, the code identity, rebuilding the CSV from runs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from pvera_bench import results
from pvera_bench.data.folder import FolderReader
from pvera_bench.paths import config_dir
from pvera_bench import identity
from pvera_bench.identity import config_hash, git_identity, resolved_precision, resume_key, run_keys, setting_of

from helpers_data import make_folder_tree

FAST = ["backbone=vit_tiny_random", "task=demo", "protocol=holdout", "trainer.epochs=1", "runtime.progress=false"]
REPO = Path(__file__).resolve().parents[1]


def cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=["task=demo", *overrides])


def test_precision_in_the_key_is_the_one_used():
    auto_cpu, fp32, bf16 = (cfg("runtime.device=cpu", f"trainer.precision={p}") for p in ("auto", "fp32", "bf16"))
    assert resolved_precision(auto_cpu) == "fp32" and resolved_precision(bf16) == "bf16"
    assert config_hash(auto_cpu) == config_hash(fp32) != config_hash(bf16)
    if not _cuda():
        assert resolved_precision(cfg("trainer.precision=auto")) == "fp32"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_the_key_covers_data_options_and_the_data_fingerprint(tmp_path):
    base = cfg("task=cifar100", "data.source=folder", f"data.dir={tmp_path}")
    key = resume_key(base)
    assert key["data_fingerprint"]["cifar100/test"].startswith("unavailable")  # no data yet: the run says why
    root = make_folder_tree(tmp_path / "vtab-1k", "cifar", n_per_split=3, num_classes=100, size=8)
    c = cfg("task=cifar100", "data.source=folder", f"data.dir={root}")
    identity._cached_fingerprint.cache_clear()
    h1 = config_hash(c)
    # vtab without a grid trains on train800val200 directly: only the splits it reads are in the key
    assert set(resume_key(c)["data_fingerprint"]) == {"cifar100/train800val200", "cifar100/test"}
    grid = cfg("task=cifar100", "data.source=folder", f"data.dir={root}", "++protocol.grid={trainer.lr_head:[0.1,0.2]}")
    assert set(resume_key(grid)["data_fingerprint"]) == {"cifar100/train800", "cifar100/val200",
                                                          "cifar100/train800val200", "cifar100/test"}
    img = next((root / "cifar" / "images" / "test").iterdir())
    os.utime(img, ns=(1, 1))  # the same names, another file: another key
    identity._cached_fingerprint.cache_clear()
    assert config_hash(c) != h1
    assert config_hash(cfg("task=demo", "data.resize=bilinear")) != config_hash(cfg("task=demo"))
    assert config_hash(cfg("task=demo", "data.cache_dir=/elsewhere")) == config_hash(cfg("task=demo"))
    assert setting_of(*run_keys(cfg("seed=0"))) == setting_of(*run_keys(cfg("seed=1"))) and config_hash(cfg("seed=0")) != config_hash(cfg("seed=1"))


def test_folder_fingerprint_notices_a_replaced_image(tmp_path):
    root = make_folder_tree(tmp_path / "vtab-1k", "cifar", n_per_split=3, num_classes=100, size=8)
    task = {"name": "cifar100", "folder": "cifar", "num_classes": 100}
    before = FolderReader(task, "train800", root).fingerprint
    assert FolderReader(task, "train800", root).fingerprint == before
    img = sorted((root / "cifar" / "images" / "train800").iterdir())[0]
    img.write_bytes(img.read_bytes() + b"\0")  # same name, other bytes (size and mtime change)
    assert FolderReader(task, "train800", root).fingerprint != before
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(root), str(copy)], check=True)  # a copy with the same lists, other mtimes
    os.utime(next((copy / "cifar" / "images" / "train800").iterdir()), ns=(7, 7))
    assert FolderReader(task, "train800", copy).fingerprint != FolderReader(task, "train800", root).fingerprint


def test_git_identity(tmp_path):
    assert git_identity(tmp_path) == {}  # not a checkout: nothing, no error
    if (REPO / ".git").exists():
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        got = git_identity(REPO)
        assert got["pvera-bench-commit"] == head and isinstance(got["pvera-bench-dirty"], bool)


def test_a_row_records_code_identity_recipe_trainer_and_setting(cli, tmp_path):
    p = cli("adapter=ia3", *FAST)
    assert p.returncode == 0, p.stderr
    (row,) = results.read(tmp_path / "results" / "results.csv")
    versions = json.loads(row["versions"])
    assert versions["pvera-bench"]
    if (REPO / ".git").exists():
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        assert versions["pvera-bench-commit"] == head
    trainer = json.loads(row["trainer"])
    assert trainer["epochs"] == 1 and trainer["precision"] in ("fp32", "bf16")  # resolved, never auto
    assert len(row["setting"]) == 16 and row["setting"] != row["config_hash"]


@pytest.mark.slow
def test_rebuild_restores_deleted_csv_with_the_same_numbers(cli, tmp_path):
    for adapter in ("lora", "ia3"):
        assert cli(f"adapter={adapter}", *FAST).returncode == 0
    csv = tmp_path / "results" / "results.csv"
    before = {r["adapter"]: r for r in results.read(csv)}
    csv.unlink()
    p = cli("results", "rebuild", "--runs", "outputs", "--out", str(csv))
    assert p.returncode == 0 and "2 run records found; 2 rows added" in p.stdout, p.stderr
    after = {r["adapter"]: r for r in results.read(csv)}
    assert sorted(after) == ["ia3", "lora"]
    for a in after:
        for col in ("test_acc", "test_nll", "val_acc", "config_hash", "setting", "params_adapter", "run_dir"):
            assert after[a][col] == before[a][col], (a, col)
    p = cli("results", "rebuild", "--runs", "outputs", "--out", str(csv))
    assert "0 rows added" in p.stdout and len(results.read(csv)) == 2
    p = cli("results", "check", "--results", str(csv))
    assert p.returncode == 0 and "2 rows, 0 problems" in p.stdout, p.stdout + p.stderr


def test_compile_fallback_reraises_out_of_memory():
    import torch

    from pvera_bench.compiled import CompiledOrEager

    model = torch.nn.Linear(3, 2)
    ce = CompiledOrEager(model)

    def oom(x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    ce.compiled = oom
    with pytest.raises(torch.OutOfMemoryError):
        ce(torch.zeros(1, 3))
    assert ce.compiled is oom  # not mistaken for a compilation failure

    def broken(x):
        raise RuntimeError("inductor: no C compiler")

    ce.compiled = broken
    x = torch.ones(2, 3)
    assert torch.equal(ce(x), model(x)) and ce.compiled is None  # other failures: eager from now on


def test_files_fingerprint_follows_names_and_sizes(tmp_path):
    from pvera_bench.data.cache import files_fingerprint

    (tmp_path / "dataset_info.json").write_text("{}")
    (tmp_path / "x.array_record-00000-of-00001").write_bytes(b"a" * 10)
    a = files_fingerprint(tmp_path)
    assert files_fingerprint(tmp_path) == a
    (tmp_path / "x.array_record-00000-of-00001").write_bytes(b"a" * 11)  # re-prepared: other size
    assert files_fingerprint(tmp_path) != a
    assert files_fingerprint(tmp_path / "missing") == "unavailable"


def test_tfds_fingerprint_has_the_version_and_the_files_sizes(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from helpers_data import tfds_task, write_indexed_dataset

    from pvera_bench.data.tfds_source import TfdsReader

    name = write_indexed_dataset(tmp_path)
    task = tfds_task(f"{name}:1.*.*", {"test": "test"}, {"test": 10})
    r = TfdsReader(task, "test", str(tmp_path))
    assert r.fingerprint.startswith(f"tfds:{r.version}|test|") and "/1." in r.version and "|files=" in r.fingerprint
    shard = max((p for p in Path(r.ds.dataset_info.data_dir).iterdir() if "array_record" in p.name),
                key=lambda p: p.stat().st_size)
    with open(shard, "ab") as f:  # the same version re-prepared into other files
        f.write(b"\0")
    assert TfdsReader(task, "test", str(tmp_path)).fingerprint != r.fingerprint


def _same(a: tuple, b: tuple) -> bool:
    return config_hash(cfg(*a)) == config_hash(cfg(*b))


FP32 = ("trainer.precision=fp32",)


@pytest.mark.parametrize("a,b,same", [
    # runtime: the device's type and compile change numbers; its index and the rest do not
    (("runtime.device=cpu",), ("runtime.device=cuda",), False),
    (("runtime.device=cuda",), ("runtime.device=cuda:1",), True),
    (("runtime.compile=false",), ("runtime.compile=true",), False),
    (("runtime.eval_batch_size=16",), ("runtime.eval_batch_size=64",), True),
    (("runtime.threads=1",), ("runtime.threads=4",), True),
    (("runtime.progress=false",), ("runtime.checkpoint_every=3", "runtime.checkpoint_dir=/x"), True),
    # names whose settings are in the key
    (("protocol=holdout",), ("protocol=holdout", "protocol.name=mine"), True),
    (("protocol=holdout",), ("protocol=holdout", "protocol.metric=loss"), False),
    (("recipe.name=default",), ("recipe.name=my_copy",), True),
    (("recipe=default",), ("recipe=pvera_paper",), False),
    (("backbone.name=vit_b16",), ("backbone.name=renamed",), True),
    # adapter options the chosen mode does not read (declared by the adapter module)
    (("adapter=pvera", "adapter.mc_samples=4"), ("adapter=pvera", "adapter.mc_samples=8"), True),
    (("adapter=pvera", "adapter.inference=mc", "adapter.mc_samples=4"),
     ("adapter=pvera", "adapter.inference=mc", "adapter.mc_samples=8"), False),
    (("adapter=pvera", "adapter.mc_samples=4", "++protocol.grid={adapter.inference:[mean,mc]}"),
     ("adapter=pvera", "adapter.mc_samples=8", "++protocol.grid={adapter.inference:[mean,mc]}"), False),
    (("adapter=pvera", "adapter.inference=mean"), ("adapter=pvera", "adapter.inference=fixed"), False),
    # trainer options their mode does not read
    (("++trainer.schedule=constant", "trainer.min_lr=1e-5"), ("++trainer.schedule=constant", "trainer.min_lr=1e-3"), True),
    (("trainer.min_lr=1e-5",), ("trainer.min_lr=1e-3",), False),
    (("trainer.warmup_epochs=0", "trainer.warmup_lr=1e-6"), ("trainer.warmup_epochs=0", "trainer.warmup_lr=1e-3"), True),
    (("trainer.warmup_lr=1e-6",), ("trainer.warmup_lr=1e-3",), False),
    (("adapter=linear_probe", "trainer.lr_adapter=1e-3"), ("adapter=linear_probe", "trainer.lr_adapter=1e-2"), True),
    (("adapter=lora", "trainer.lr_adapter=1e-3"), ("adapter=lora", "trainer.lr_adapter=1e-2"), False),
    # vtab without a grid trains the final model directly: the selection options are not read
    (("protocol=vtab", "protocol.metric=acc", "trainer.eval_every=1"),
     ("protocol=vtab", "protocol.metric=loss", "trainer.eval_every=3"), True),
    (("protocol=holdout", "trainer.eval_every=1"), ("protocol=holdout", "trainer.eval_every=3"), False),
    (("protocol=holdout", "protocol.min_rel_delta=0.0"), ("protocol=holdout", "protocol.min_rel_delta=0.01"), False),
    (("protocol=vtab", "protocol.grid_mode=separate"), ("protocol=vtab", "protocol.grid_mode=joint"), True),
])
def test_the_key_holds_what_changes_a_number_and_no_label(a, b, same):
    assert _same(FP32 + a, FP32 + b) == same


def test_the_key_and_the_row_keep_the_names_readable():
    key = resume_key(cfg("protocol=holdout", "runtime.device=cpu"))
    assert key["runtime"] == {"device": "cpu", "compile": False}
    assert "name" not in key["protocol"] and "name" not in key["backbone"] and "recipe" not in key
    assert key["adapter"]["name"] == "pvera" and "mc_samples" not in key["adapter"]


def test_the_key_identifies_a_local_checkpoint_by_its_content(tmp_path):
    import shutil

    w = tmp_path / "w.bin"
    w.write_bytes(b"weights one")
    base = ("backbone=vit_tiny_random", f"backbone.checkpoint={w}")
    h1 = config_hash(cfg(*base))
    assert resume_key(cfg(*base))["backbone"]["weights"].startswith("sha256:")
    shutil.copy(w, tmp_path / "moved.bin")
    assert config_hash(cfg("backbone=vit_tiny_random", f"backbone.checkpoint={tmp_path / 'moved.bin'}")) == h1
    w.write_bytes(b"weights two")  # replaced in place, same path
    os.utime(w, ns=(5, 5))
    assert config_hash(cfg(*base)) != h1
    assert resume_key(cfg("task=demo"))["backbone"]["weights"] == "hub:timm/vit_base_patch16_224.orig_in21k"
    assert resume_key(cfg("backbone=vit_tiny_random"))["backbone"]["weights"] is None
    identity._file_sha256.cache_clear()


@pytest.mark.slow
def test_real_runs_name_their_commits_and_a_replaced_checkpoint_reruns(cli, tmp_path):
    """Rows made by real runs: the report's and `results check`'s mixed-code notes read the code
    identity they carry; a backbone.checkpoint file replaced by other weights is not skipped."""
    if not (REPO / ".git").exists():
        pytest.skip("the package does not run from a git checkout: rows carry no commit")
    import torch
    from safetensors.torch import save_file

    from pvera_bench.backbones import create_backbone

    tiny = dict(model="vit_tiny_patch16_224", pretrained=False,
                kwargs=dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=2))

    def weights(seed: int, path: Path) -> None:
        torch.manual_seed(seed)
        save_file({k: v.contiguous() for k, v in create_backbone(tiny).state_dict().items()}, str(path))

    w = tmp_path / "w.safetensors"
    weights(1, w)
    args = ["adapter=ia3", *FAST, f"backbone.checkpoint={w}"]
    csv = tmp_path / "results" / "results.csv"
    for seed in (0, 1):
        p = cli(*args, f"seed={seed}")
        assert p.returncode == 0, p.stderr[-2000:]
    rows = results.read(csv)
    v = json.loads(rows[1]["versions"])
    head = v["pvera-bench-commit"]  # what a real run writes
    assert len(head) == 40 and isinstance(v["pvera-bench-dirty"], bool)
    other = "0123456789abcdef0123456789abcdef01234567"
    lines = csv.read_text().splitlines(keepends=True)
    assert lines[2].count(head) == 1
    csv.write_text("".join(lines[:2] + [lines[2].replace(head, other)]))  # seed 1 "ran" another commit
    p = cli("report", "--results", str(csv))
    assert p.returncode == 0, p.stderr
    note = next(ln for ln in p.stdout.splitlines() if "mix code versions" in ln)
    assert "ia3 / demo (" in note and f"+g{head[:12]}" in note and f"+g{other[:12]}" in note, note
    p = cli("results", "check", "--results", str(csv))
    assert f"+g{head[:12]}" in p.stdout and f"+g{other[:12]}" in p.stdout, p.stdout
    # the same weights under another path: skipped; the file replaced by other weights: trained again
    moved = tmp_path / "moved.safetensors"
    moved.write_bytes(w.read_bytes())
    p = cli("adapter=ia3", *FAST, f"backbone.checkpoint={moved}", "seed=0")
    assert p.returncode == 0 and "skipped" in p.stderr + p.stdout and len(results.read(csv)) == 2
    weights(2, w)
    p = cli(*args, "seed=0")
    assert p.returncode == 0 and "skipped" not in p.stderr + p.stdout, p.stderr[-2000:]
    rows = results.read(csv)
    assert len(rows) == 3 and rows[2]["status"] == "ok" and rows[2]["config_hash"] != rows[0]["config_hash"]
