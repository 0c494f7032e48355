"""data.resize: torch's antialiased bilinear, or Pillow's bicubic / bilinear (torchvision's Resize
on PIL images, as NOAH and the PVeRA code preprocess); a separate decoded-cache entry for each."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from helpers_data import folder_task, make_folder_tree
from pvera_bench.data import DataError, load_split
from pvera_bench.data.core import resize_many, resize_uint8

COUNTS = {"train800": 6, "val200": 2, "test": 5}


def photos(n=3, h=37, w=53, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("method, mode", [("bicubic", transforms.InterpolationMode.BICUBIC),
                                          ("bilinear", transforms.InterpolationMode.BILINEAR)])
@pytest.mark.parametrize("size", [16, 80])  # down and up
def test_pil_methods_equal_torchvision_resize_on_pil_images(method, mode, size):
    imgs = photos()
    ours = resize_uint8(imgs, size, method)
    tv = transforms.Resize((size, size), interpolation=mode)
    for i, im in enumerate(imgs):
        ref = np.asarray(tv(Image.fromarray(im)))
        assert np.array_equal(ours[i], ref)
    assert ours.shape == (3, size, size, 3) and ours.dtype == np.uint8


def test_noahs_interpolation_3_is_bicubic():
    im = photos(1)[0]
    noah = transforms.Resize((24, 24), interpolation=3)  # NOAH lib/datasets.py (an int: PIL's BICUBIC)
    assert np.array_equal(resize_uint8(im[None], 24, "bicubic")[0], np.asarray(noah(Image.fromarray(im))))


def test_methods_differ_and_default_is_torch_antialiased_bilinear():
    imgs = photos()
    out = {m: resize_uint8(imgs, 16, m) for m in ("bilinear_antialias", "bicubic", "bilinear")}
    assert not np.array_equal(out["bicubic"], out["bilinear"])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", antialias=True)
    assert np.array_equal(out["bilinear_antialias"], ref.permute(0, 2, 3, 1).numpy())
    assert np.array_equal(resize_uint8(imgs, 16), out["bilinear_antialias"])
    # mixed sizes and grey images go through the same method
    mixed = [imgs[0], imgs[1][:20, :30, 0]]
    got = resize_many(mixed, 16, "bicubic")
    assert np.array_equal(got[0], out["bicubic"][0])
    grey = np.repeat(imgs[1][:20, :30, :1], 3, axis=-1)
    assert np.array_equal(got[1], resize_uint8(grey[None], 16, "bicubic")[0])


def test_unknown_method_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"data.resize='lanczos' is not valid; use one of: bilinear_antialias, "
                                        r"bicubic, bilinear"):
        resize_uint8(photos(), 16, "lanczos")
    root = make_folder_tree(tmp_path / "v", "cifar", n_per_split=COUNTS, num_classes=3, size=24)
    task = folder_task("cifar100", "cifar", 3, COUNTS)
    with pytest.raises(DataError, match="data.resize='area'"):
        load_split(task, "test", source="folder", data_dir=str(root), img_size=16, resize="area")


def test_each_method_has_its_own_cache_entry(tmp_path):
    root = make_folder_tree(tmp_path / "v", "cifar", n_per_split=COUNTS, num_classes=3, size=24)
    task = folder_task("cifar100", "cifar", 3, COUNTS)
    cache = tmp_path / "cache"
    got = {}
    for m in ("bicubic", "bilinear", "bilinear_antialias"):
        s = load_split(task, "test", source="folder", data_dir=str(root), img_size=16, cache_dir=str(cache), resize=m)
        plain = load_split(task, "test", source="folder", data_dir=str(root), img_size=16, resize=m)
        assert np.array_equal(np.asarray(s.images), plain.images)  # the cache holds what the method computes
        got[m] = np.asarray(s.images)
    assert len([p for p in cache.glob("*/*") if p.is_dir()]) == 3
    assert not np.array_equal(got["bicubic"], got["bilinear"])
    # a second read of one method hits its own entry
    again = load_split(task, "test", source="folder", data_dir=str(root), img_size=16, cache_dir=str(cache),
                       resize="bicubic")
    assert isinstance(again.images, np.memmap) and np.array_equal(np.asarray(again.images), got["bicubic"])
