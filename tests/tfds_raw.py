"""Tiny raw downloads in the upstream layout of real TFDS builders, and the download redirect.

The installed ``tensorflow_datasets`` ships no dummy data, so each ``write_<builder>(manual_dir)``
writes the files that builder downloads (read from its ``_split_generators`` / ``_generate_examples``),
named as TFDS's checksums name them, into ``manual_dir``, the folder where ``pvera-bench data prepare``
tells users to put files fetched by hand. Each returns ``{split: {index: label}}``: the label the task's
rule must give to the example whose image encodes ``index`` (see :func:`decode`).

:func:`redirect` does what ``tfds.testing.DatasetBuilderTestCase`` does: ``DownloadManager.download``
and ``download_and_extract`` return the local files instead of fetching (so the tiny files skip the real
files' checksums); TFDS's own ``extract`` unpacks them and the real builder generates the examples.
``resisc45`` needs no redirect: it is a manual download read from ``manual_dir`` by TFDS itself.

    python tests/tfds_raw.py write D/downloads/manual cifar100 kitti ...   # write raw files
    python tests/tfds_raw.py prepare task=kitti data.dir=D                 # pvera-bench data prepare, redirected
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import sys
import tarfile
import urllib.parse
import zipfile
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------- images that say which example they are
SPLIT_CODE = {"train": 40, "validation": 80, "test": 120, "extra": 160}


def index_rgb(i: int, split: str, shape=(8, 8)) -> np.ndarray:
    """A constant image: R = 20 i + 10, G = the split's code (survives resizing and JPEG)."""
    img = np.empty((*shape, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 20 * i + 10, SPLIT_CODE[split], 200
    return img


def decode(images: np.ndarray) -> tuple[list[int], list[str]]:
    """(indices, split names) back from :func:`index_rgb` images (N, H, W, 3), read at any size."""
    px = np.asarray(images, np.float64)[:, images.shape[1] // 2, images.shape[2] // 2, :]
    names = {v: k for k, v in SPLIT_CODE.items()}
    idx = [int(round((r - 10) / 20)) for r in px[:, 0]]
    split = [names[min(names, key=lambda c: abs(c - g))] for g in px[:, 1]]
    return idx, split


def png(img: np.ndarray) -> bytes:
    from PIL import Image

    bio = io.BytesIO()
    Image.fromarray(img).save(bio, format="PNG")
    return bio.getvalue()


def jpeg(img: np.ndarray) -> bytes:
    from PIL import Image

    bio = io.BytesIO()
    Image.fromarray(img).save(bio, format="JPEG", quality=95)
    return bio.getvalue()


def _zip(path: Path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)


def _tar_gz(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


# ---------------------------------------------------------------- one writer per builder
def write_cifar100(d: Path) -> dict:
    """cifar-100-binary.tar.gz: cifar-100-binary/{train,test}.bin (coarse byte, fine byte, 3072 CHW bytes)
    and the two label-name files."""
    out, files = {}, {}
    for split, fname, n in (("train", "train.bin", 6), ("test", "test.bin", 4)):
        recs, out[split] = [], {}
        for i in range(n):
            fine = (37 * i + 11 + (50 if split == "test" else 0)) % 100
            recs.append(bytes([fine // 5, fine]) + index_rgb(i, split, (32, 32)).transpose(2, 0, 1).tobytes())
            out[split][i] = fine
        files[f"cifar-100-binary/{fname}"] = b"".join(recs)
    files["cifar-100-binary/fine_label_names.txt"] = "".join(f"fine{i}\n" for i in range(100)).encode()
    files["cifar-100-binary/coarse_label_names.txt"] = "".join(f"coarse{i}\n" for i in range(20)).encode()
    _tar_gz(d / "cifar-100-binary.tar.gz", files)
    return out


def write_svhn_cropped(d: Path) -> dict:
    """{train,test,extra}_32x32.mat: X (32, 32, 3, N) uint8, y (N, 1) in 1..10 (10 is the digit 0)."""
    from scipy.io import savemat

    out = {}
    for split, n in (("train", 5), ("test", 4), ("extra", 2)):
        y = np.array([[(3 * i + (7 if split == "test" else 0)) % 10 + 1] for i in range(n)], np.uint8)
        x = np.stack([index_rgb(i, split, (32, 32)) for i in range(n)], axis=-1)
        savemat(d / f"{split}_32x32.mat", {"X": x, "y": y})
        out[split] = {i: int(y[i, 0]) % 10 for i in range(n)}
    return out


DSPRITES_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.hdf5"


def dsprites_image(i: int) -> np.ndarray:
    """64x64 0/1 image: bit b of i fills the 16x16 block b (row-major), so any resize reads it back."""
    img = np.zeros((64, 64), np.uint8)
    for b in range(16):
        if (i >> b) & 1:
            r, c = divmod(b, 4)
            img[16 * r:16 * r + 16, 16 * c:16 * c + 16] = 1
    return img


def dsprites_decode(images: np.ndarray) -> list[int]:
    n, h, w = images.shape[:3]
    out = []
    for k in range(n):
        v = 0
        for b in range(16):
            r, c = divmod(b, 4)
            if images[k, (4 * r + 2) * h // 16, (4 * c + 2) * w // 16, 0] > 127:
                v |= 1 << b
        out.append(v)
    return out


def write_dsprites(d: Path) -> dict:
    """One hdf5 file: imgs (N, 64, 64) uint8 0/1, latents/classes and latents/values (N, 6): color, shape,
    scale, orientation, x, y. Returns {"train": {i: (x_position, orientation)}}."""
    import h5py

    n = 8
    x_pos = [(5 * i + 3) % 32 for i in range(n)]
    ori = [(7 * i + 1) % 40 for i in range(n)]
    classes = np.array([[0, i % 3, i % 6, ori[i], x_pos[i], (i * 11) % 32] for i in range(n)], np.int64)
    with h5py.File(d / DSPRITES_FILE, "w") as f:
        f["imgs"] = np.stack([dsprites_image(i + 1) for i in range(n)])  # index + 1: never all black
        f.create_group("latents")
        f["latents/classes"] = classes
        f["latents/values"] = classes.astype(np.float64) / 10
    return {"train": {i + 1: (x_pos[i], ori[i]) for i in range(n)}}


def _norb_matrix(arr: np.ndarray) -> bytes:
    """smallnorb's binary matrix: int32 magic, ndim, max(3, ndim) dims, then the data (little endian)."""
    magic = 507333717 if arr.dtype == np.uint8 else 507333716
    dims = list(arr.shape) + [1] * max(0, 3 - arr.ndim)
    head = np.array([magic, arr.ndim, *dims], "<i4").tobytes()
    return head + (arr if arr.dtype == np.uint8 else arr.astype("<i4")).tobytes()


def write_smallnorb(d: Path) -> dict:
    """smallnorb-5x{46789,01235}x9x18x6x2x96x96-{training,testing}-{dat,cat,info}.mat.gz. The image's grey
    level is 20 k + 10, k = the index counted across train (0..3) then test (4..9).
    Returns {split: {k: (azimuth label 0..17, elevation 0..8)}}."""
    out = {}
    for split, stem, n, k0 in (("train", "smallnorb-5x46789x9x18x6x2x96x96-training", 4, 0),
                               ("test", "smallnorb-5x01235x9x18x6x2x96x96-testing", 6, 4)):
        dat = np.stack([np.full((2, 96, 96), 20 * (k0 + i) + 10, np.uint8) for i in range(n)])
        azi = [(5 * i + (3 if split == "test" else 0)) % 18 for i in range(n)]
        ele = [(2 * i + 1) % 9 for i in range(n)]
        info = np.array([[i % 10, ele[i], 2 * azi[i], i % 6] for i in range(n)], np.int32)  # azimuth 0, 2, .., 34
        for kind, arr in (("dat", dat), ("cat", np.arange(n, dtype=np.int32) % 5), ("info", info)):
            with gzip.open(d / f"{stem}-{kind}.mat.gz", "wb") as f:
                f.write(_norb_matrix(arr))
        out[split] = {k0 + i: (azi[i], ele[i]) for i in range(n)}
    return out


def _clevr_objects(k: int, zs: list[float]) -> list[dict]:
    return [{"color": "red", "material": "metal", "shape": "cube", "size": "large" if j % 2 else "small",
             "rotation": 10.0 * j, "3d_coords": [0.1 * j, 0.2, 0.3], "pixel_coords": [10 + j, 20 + k, zs[j]]}
            for j in range(len(zs))]


def write_clevr(d: Path) -> dict:
    """CLEVR_v1.0.zip: images/{train,val,test}/CLEVR_<split>_NNNNNN.png, questions/CLEVR_<split>_questions.json,
    scenes/CLEVR_{train,val}_scenes.json (objects with pixel_coords; the scenes follow sorted file names).
    Returns {split: {i: (number of objects, closest pixel z)}}."""
    files, out = {}, {}
    depth = [[9.2, 12.0, 14.0], [8.7, 9.9, 10.5, 11.0], [13.0, 7.5, 9.0, 9.0, 10.0], [9.7, 11.0, 12.0, 10.2],
             [8.2, 8.4, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0, 18.0], [10.1, 11.0, 12.0]]
    for split, tfds_split, n in (("train", "train", 6), ("val", "validation", 3), ("test", "test", 2)):
        scenes, out[tfds_split] = [], {}
        for i in range(n):
            fname = f"CLEVR_{split}_{i:06d}.png"
            files[f"CLEVR_v1.0/images/{split}/{fname}"] = png(index_rgb(i, tfds_split, (12, 16)))
            zs = depth[(i + (3 if split == "val" else 0)) % len(depth)]
            scenes.append({"image_filename": fname, "objects": _clevr_objects(i, zs)})
            out[tfds_split][i] = (len(zs), min(zs))
        questions = [{"image_filename": s["image_filename"], "question": "How many?", "answer": "3"}
                     for s in scenes]
        files[f"CLEVR_v1.0/questions/CLEVR_{split}_questions.json"] = json.dumps({"questions": questions}).encode()
        if split != "test":
            files[f"CLEVR_v1.0/scenes/CLEVR_{split}_scenes.json"] = json.dumps({"scenes": scenes}).encode()
    _zip(d / "CLEVR_v1.0.zip", files)
    return out


KITTI_VIDEOS = 4  # 10% of the videos (at least 1) go to test, as many to validation: 1, 1 and 2 for train
KITTI_PER_VIDEO = 2


def write_kitti(d: Path) -> dict:
    """data_object_image_2.zip (training/image_2/NNNNNN.png), data_object_label_2.zip (training/label_2/
    NNNNNN.txt, 15 space-separated fields per object) and devkit_object.zip (mapping/train_rand.txt,
    mapping/train_mapping.txt: which video each image comes from; TFDS splits by video).
    Returns {"all": {i: (video, closest vehicle z or None)}} (the split is the builder's choice)."""
    images, labels, out = {}, {}, {}
    # per image: objects (type, z); DontCare lines are skipped by the builder, Pedestrians are no vehicles
    scenes = [[("Car", 5.0), ("Pedestrian", 2.0)], [("Van", 15.5), ("Car", 30.0)], [("Truck", 40.0)],
              [("Pedestrian", 3.0), ("DontCare", -1000.0)], [("Car", 7.9), ("Truck", 8.1)], [("Cyclist", 4.0)],
              [("Van", 19.9)], [("Car", 25.0), ("Van", 21.0), ("Misc", 1.0)]]
    n = KITTI_VIDEOS * KITTI_PER_VIDEO
    mapping = []
    for i in range(n):
        video = i % KITTI_VIDEOS  # interleaved: a split's images are not a contiguous range of ids
        mapping.append(f"2011_09_26 2011_09_26_drive_{video:04d}_sync {i:010d}")
        images[f"training/image_2/{i:06d}.png"] = png(index_rgb(i, "train", (6, 10)))
        lines = []
        for t, z in scenes[i]:
            # type truncated occluded alpha bbox(left top right bottom, pixels) h w l x y z rotation_y
            lines.append(f"{t} 0.00 {i % 4} -1.50 1.00 1.00 8.00 5.00 1.50 1.60 3.90 0.50 1.70 {z:.2f} 0.10")
        labels[f"training/label_2/{i:06d}.txt"] = ("\n".join(lines) + "\n").encode()
        vehicles = [z for t, z in scenes[i] if t in ("Car", "Van", "Truck")]
        out[i] = (video, min(vehicles) if vehicles else None)
    images["testing/image_2/000000.png"] = png(index_rgb(0, "test", (6, 10)))  # the unlabelled test set: unused
    # train_rand.txt: for image id k (0-based position), the 1-based line of train_mapping.txt
    perm = [n - k for k in range(n)]
    lines = [None] * n
    for k, p in enumerate(perm):
        lines[p - 1] = mapping[k]
    _zip(d / "data_object_image_2.zip", images)
    _zip(d / "data_object_label_2.zip", labels)
    _zip(d / "devkit_object.zip", {"mapping/train_rand.txt": ", ".join(map(str, perm)).encode(),
                                   "mapping/train_mapping.txt": ("\n".join(lines) + "\n").encode(),
                                   "readme.txt": b"devkit"})
    return {"all": out}


EUROSAT = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
           "Residential", "River", "SeaLake"]  # TFDS's _LABELS order


def write_eurosat(d: Path) -> dict:
    """EuroSAT.zip: 2750/<Class>/<Class>_<n>.jpg, 64x64 RGB; the label is the file name's prefix."""
    files, out = {}, {}
    for i in range(10):
        c = (3 * i + 1) % 10
        files[f"2750/{EUROSAT[c]}/{EUROSAT[c]}_{i + 1}.jpg"] = jpeg(index_rgb(i, "train", (64, 64)))
        out[i] = c
    _zip(d / "EuroSAT.zip", files)
    return {"train": out}


RESISC45 = ["airplane", "airport", "baseball_diamond", "basketball_court", "beach", "bridge", "chaparral",
            "church", "circular_farmland", "cloud", "commercial_area", "dense_residential", "desert", "forest",
            "freeway", "golf_course", "ground_track_field", "harbor", "industrial_area", "intersection", "island",
            "lake", "meadow", "medium_residential", "mobile_home_park", "mountain", "overpass", "palace",
            "parking_lot", "railway", "railway_station", "rectangular_farmland", "river", "roundabout", "runway",
            "sea_ice", "ship", "snowberg", "sparse_residential", "stadium", "storage_tank", "tennis_court",
            "terrace", "thermal_power_station", "wetland"]  # TFDS's _LABELS order


def write_resisc45(d: Path) -> dict:
    """A manual download: the extracted NWPU-RESISC45/<class>/<class>_NNN.jpg (256x256 RGB) in manual_dir."""
    out = {}
    for i in range(6):
        c = (17 * i + 4) % 45
        p = d / "NWPU-RESISC45" / RESISC45[c] / f"{RESISC45[c]}_{i + 1:03d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(jpeg(index_rgb(i, "train", (256, 256))))
        out[i] = c
    return {"train": out}


WRITERS = {"cifar100": write_cifar100, "svhn_cropped": write_svhn_cropped, "dsprites": write_dsprites,
           "smallnorb": write_smallnorb, "clevr": write_clevr, "kitti": write_kitti, "eurosat": write_eurosat,
           "resisc45": write_resisc45}


# ---------------------------------------------------------------- the redirect
@contextlib.contextmanager
def redirect(manual_dir):
    """``DownloadManager.download`` / ``download_and_extract`` answer with ``manual_dir/<file name of the
    URL>`` (the tiny files), as ``tfds.testing`` redirects them; extraction and generation stay real."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.utils import py_utils

    dm = tfds.download.DownloadManager
    saved = (dm.download, dm.download_and_extract)

    def local(url) -> str:
        url = str(getattr(url, "url", url))
        p = Path(manual_dir) / os.path.basename(urllib.parse.urlsplit(url).path)
        if not p.exists():
            raise FileNotFoundError(f"redirect: no local file for {url} (looked for {p})")
        return str(p)

    def download(self, url_or_urls):
        return py_utils.map_nested(local, url_or_urls)

    def download_and_extract(self, url_or_urls):
        return self.extract(download(self, url_or_urls))

    dm.download, dm.download_and_extract = download, download_and_extract
    try:
        yield
    finally:
        dm.download, dm.download_and_extract = saved


def main(argv: list[str]) -> int:
    if argv and argv[0] == "write":
        d = Path(argv[1])
        d.mkdir(parents=True, exist_ok=True)
        for name in argv[2:]:
            WRITERS[name](d)
        return 0
    if argv and argv[0] == "prepare":  # pvera-bench data prepare WORDS, redirected to data.manual_dir
        from pvera_bench.data import cli

        words = dict(w.partition("=")[::2] for w in argv[1:])
        manual = words.get("data.manual_dir") or os.path.join(os.path.expanduser(words["data.dir"]), "downloads",
                                                              "manual")
        with redirect(manual):
            return cli.main(argv)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
