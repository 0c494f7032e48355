"""TensorFlow Datasets, read without TensorFlow from ``array_record`` files (``tfds.data_source``).

A task config carries ``tfds: {name: "<builder>[/<config>]:<version>", splits: {<split>: "<TFDS split
string>"}}``, the label rule's name (``label``, see :mod:`.labels`) and optionally
``tfds.image_scale`` (dsprites: 0/1 pixels -> 0/255). Preparing the builders (``pvera-bench data
prepare``) needs TensorFlow once; reading never does. ``tensorflow_datasets`` is imported lazily.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import shutil
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from .core import DataError, DataMissing, SplitReader, register_source, task_name
from .labels import LabelRule, get_rule

PREPARE_EXTRA = 'the `prepare` extra, pip install -e ".[prepare]"'


def default_data_dir() -> str:
    """TFDS's own default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``)."""
    return os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def resolve_data_dir(data_dir: "str | os.PathLike | None") -> str:
    return os.path.expanduser(str(data_dir)) if data_dir else default_data_dir()


@contextlib.contextmanager
def quiet_absl():
    """Silence TFDS's absl warnings (e.g. "Variant folder ... has no dataset_info.json") while probing."""
    logger = logging.getLogger("absl")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


# What the TFDS builders import while preparing (the `prepare` extra in pyproject.toml): module -> package.
PREPARE_MODULES = {"tensorflow": "tensorflow-cpu", "importlib_resources": "importlib_resources",
                   "cv2": "opencv-python-headless", "h5py": "h5py", "scipy": "scipy"}


def missing_prepare_modules() -> list[str]:
    """The packages of the `prepare` extra that are not installed (empty when preparing can work)."""
    return [pkg for mod, pkg in PREPARE_MODULES.items() if importlib.util.find_spec(mod) is None]


def tensorflow_available() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def tfds_spec(task: Mapping) -> str:
    t = task.get("tfds") or {}
    if not t.get("name"):
        raise DataError(f"task {task_name(task)} has no `tfds.name`: it cannot be read with data.source=tfds")
    return str(t["name"])


def tfds_split(task: Mapping, split: str) -> str:
    splits = (task.get("tfds") or {}).get("splits") or {}
    if split not in splits:
        raise DataError(f"task {task_name(task)} has no TFDS split string for {split!r} (tfds.splits)")
    return str(splits[split])


def prepare_command(task: Mapping, data_dir: str) -> str:
    return f"pvera-bench data prepare task={task_name(task)} data.dir={data_dir}"


def not_prepared_message(task: Mapping, data_dir: str) -> str:
    return (f"task {task_name(task)}: TFDS dataset {tfds_spec(task)} is not prepared under {data_dir}. "
            f"Prepare it once with `{prepare_command(task, data_dir)}` (needs TensorFlow: {PREPARE_EXTRA}), "
            f"or read the vtab-1k folder copy with data.source=folder data.dir=PATH")


def _diagnose(task: Mapping, spec: str, split_str: str, data_dir: str, err: Exception) -> DataError:
    """Turn TFDS's exception into one message that says what to do."""
    import tensorflow_datasets as tfds

    try:
        with quiet_absl():
            b = tfds.builder(spec, data_dir=data_dir)
            prepared = b.is_prepared()
    except Exception:  # unknown name on disk and in code, unreadable metadata, ...
        return DataMissing(not_prepared_message(task, data_dir))
    if not prepared:
        return DataMissing(not_prepared_message(task, data_dir))
    fmt = getattr(b.info.file_format, "value", b.info.file_format)
    if str(fmt) not in ("array_record",):
        return DataError(
            f"task {task_name(task)}: {spec} under {b.data_path} was prepared as {fmt}, which needs TensorFlow to "
            f"read; prepare it as array_record with `{prepare_command(task, '<another dir>')}`, or convert it "
            f"with `tfds convert_format --dataset_version_dir {b.data_path} --out_file_format array_record`")
    try:
        held = ", ".join(f"{k} {v.num_examples}" for k, v in b.info.splits.items())
    except Exception:  # noqa: BLE001
        held = ""
    return DataError(f"task {task_name(task)}: cannot read split {split_str!r} of {spec} under {data_dir}: {err}"
                     + (f" (prepared splits: {held})" if held else ""))


def open_data_source(task: Mapping, split_str: str, data_dir: str, decoders=None):
    import tensorflow_datasets as tfds

    spec = tfds_spec(task)
    try:
        with quiet_absl():
            return tfds.data_source(spec, split=split_str, data_dir=data_dir, download=False, decoders=decoders,
                                    try_gcs=False)
    except Exception as e:  # noqa: BLE001 - diagnosed into one DataError
        raise _diagnose(task, spec, split_str, data_dir, e) from e


def _image_fix(task: Mapping) -> Callable[[np.ndarray], np.ndarray]:
    scale = (task.get("tfds") or {}).get("image_scale")
    if scale:  # binary 0/1 images (dsprites) -> 0/scale
        s = np.uint8(int(scale))
        return lambda img: np.minimum(np.asarray(img), 1).astype(np.uint8) * s
    return np.asarray


def get_many(ds, keys: list[int]) -> list:
    """Batch read (array_record reads a batch in parallel); one by one where a data source's batch
    read is unusable (``tfds.testing.mock_data`` mocks ``__getitems__`` without ``self``)."""
    try:
        return ds.__getitems__(keys)
    except TypeError:
        return [ds[k] for k in keys]


class TfdsReader(SplitReader):
    def __init__(self, task: Mapping, split: str, data_dir: "str | None"):
        self.task = task
        self.name = task_name(task)
        self.spec = tfds_spec(task)
        self.split_str = tfds_split(task, split)
        self.data_dir = resolve_data_dir(data_dir)
        try:
            self.rule: LabelRule = get_rule(str(task.get("label") or "label"))
        except KeyError as e:
            raise DataError(f"task {self.name}: {e.args[0]}") from None
        self.num_classes = int(task["num_classes"]) if task.get("num_classes") is not None else None
        self.ds = open_data_source(task, self.split_str, self.data_dir)
        info = self.ds.dataset_info
        self.version = f"{info.full_name}"
        self._fix = _image_fix(task)
        scale = (task.get("tfds") or {}).get("image_scale")
        self.fingerprint = f"tfds:{self.version}|{self.split_str}|label={self.rule.name}|scale={scale}"
        from .cache import files_fingerprint  # the version directory's files and their sizes
        self.fingerprint += f"|files={files_fingerprint(info.data_dir)}"
        self.description = f"TFDS {self.version} {self.split_str} in {self.data_dir}"

    def __len__(self) -> int:
        return len(self.ds)

    def class_count(self) -> int | None:
        """The number of classes the label rule produces (the ClassLabel's when the rule reads one)."""
        if self.rule.num_classes is not None:
            return self.rule.num_classes
        feat = self.ds.dataset_info.features[self.rule.feature]
        return getattr(feat, "num_classes", None)

    def _labels_of(self, examples, start: int) -> np.ndarray:
        labels = np.empty(len(examples), np.int64)
        for j, ex in enumerate(examples):
            try:
                labels[j] = self.rule(ex)
            except Exception as e:  # noqa: BLE001
                raise DataError(f"task {self.name}: label rule {self.rule.name} failed on example {start + j} of "
                                f"{self.description}: {e}") from None
        bad = (labels < 0) | ((labels >= self.num_classes) if self.num_classes else False)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise DataError(f"task {self.name}: example {start + j} of {self.description} gets label {labels[j]} "
                            f"(rule {self.rule.name}), outside 0..{(self.num_classes or 1) - 1}; the prepared data "
                            f"does not match the task table")
        return labels

    def read(self, start: int, stop: int):
        examples = get_many(self.ds, list(range(start, stop)))
        images = [self._fix(ex["image"]) for ex in examples]
        return images, self._labels_of(examples, start)

    def labels(self) -> np.ndarray:
        """All labels, reading the records without decoding their images."""
        import tensorflow_datasets as tfds

        feats = self.ds.dataset_info.features
        skip = {k: tfds.decode.SkipDecoding() for k, f in feats.items() if isinstance(f, tfds.features.Image)}
        try:
            ds = open_data_source(self.task, self.split_str, self.data_dir, decoders=skip or None)
            chunk = 4096
            return np.concatenate([self._labels_of(get_many(ds, list(range(a, min(a + chunk, len(ds))))), a)
                                   for a in range(0, len(ds), chunk)] or [np.zeros(0, np.int64)])
        except ImportError:  # tfds.testing.mock_data encodes skipped images with TensorFlow: decode instead
            return super().labels()


@register_source("tfds")
def open_tfds(task: Mapping, split: str, data_dir: "str | None") -> TfdsReader:
    return TfdsReader(task, split, data_dir)


def manual_dir_for(builder, manual_dir: "str | None") -> str:
    return os.path.expanduser(str(manual_dir)) if manual_dir else os.path.join(str(builder.data_dir_root),
                                                                                "downloads", "manual")


# ---------------------------------------------------------------------------- preparing
class _QuietFilter(logging.Filter):
    """Drops TFDS's chatter that is neither progress nor a problem."""
    NOISE = ("has no dataset_info.json", "Load dataset info from", "Reusing dataset", "Load pre-computed")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(n in msg for n in self.NOISE)


@contextlib.contextmanager
def quiet_prepare():
    """absl (TFDS's logger) at WARNING minus known noise; TensorFlow's C++ INFO/WARNING lines off.
    TFDS's progress bars (tqdm) stay."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logger = logging.getLogger("absl")
    old, filt = logger.level, _QuietFilter()
    logger.setLevel(logging.WARNING)
    logger.addFilter(filt)
    try:
        yield
    finally:
        logger.removeFilter(filt)
        logger.setLevel(old)


@dataclass
class Download:
    """One file a builder downloads: where from, and the name TFDS looks for in ``manual_dir``."""
    url: str
    filename: str
    size: "int | None" = None

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.url).netloc


@dataclass
class Plan:
    """What preparing one builder needs before it can start."""
    task: str
    spec: str
    builder: object = None
    manual_dir: str = ""
    ready: bool = False                       # already prepared as array_record
    problem: str = ""                         # a blocker, said to the user (the builder cannot be built)
    downloads: list = field(default_factory=list)   # files still to download
    unreachable: dict = field(default_factory=dict)  # host -> why


class _Recorded(Exception):
    pass


class _UrlRecorder:
    """Stands in for TFDS's DownloadManager while a builder's ``_split_generators`` runs: records the
    URLs of its first download call, then stops the builder (nothing is downloaded or written)."""

    def __init__(self, manual_dir: str, download_dir: str):
        from etils import epath

        self.manual_dir = epath.Path(manual_dir)
        self.download_dir = epath.Path(download_dir)
        self.urls: list[str] = []

    def _flatten(self, x) -> None:
        if isinstance(x, Mapping):
            for v in x.values():
                self._flatten(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                self._flatten(v)
        elif x is not None:
            self.urls.append(str(getattr(x, "url", x)))

    def download(self, url_or_urls, *a, **k):
        self._flatten(url_or_urls)
        raise _Recorded

    download_and_extract = download

    def __getattr__(self, name):  # extract, iter_archive, download_kaggle_data, ...: stop here
        raise _Recorded


def builder_downloads(builder, manual_dir: str) -> list[Download]:
    """The files ``builder`` downloads for its config: the URLs its ``_split_generators`` asks for first
    (all of its registered URLs when that cannot be told), with TFDS's registered file names."""
    import inspect

    try:
        infos = dict(builder.url_infos or {})
    except Exception:  # noqa: BLE001
        infos = {}
    rec = _UrlRecorder(manual_dir, os.path.join(str(builder.data_dir_root), "downloads"))
    try:
        gen = builder._split_generators  # noqa: SLF001 - the builder's own list of what it downloads
        extra = [None] * (len(inspect.signature(gen).parameters) - 1)  # beam builders take a pipeline
        gen(rec, *extra)
    except Exception:  # noqa: BLE001 - _Recorded, or the builder stopped on the recorder's answers
        pass
    urls = list(dict.fromkeys(rec.urls)) or list(infos)
    out = []
    for u in urls:
        info = infos.get(u)
        name = (info.filename if info is not None and info.filename else
                os.path.basename(urllib.parse.urlsplit(u).path) or u)
        out.append(Download(u, name, int(info.size) if info is not None and info.size is not None else None))
    return out


def _cached(builder, d: Download, manual_dir: str) -> bool:
    """Already here: in ``manual_dir`` under TFDS's file name, or in TFDS's download cache."""
    if os.path.exists(os.path.join(manual_dir, d.filename)):
        return True
    try:
        from tensorflow_datasets.core.download import resource as resource_lib

        infos = builder.url_infos or {}
        checksum = infos[d.url].checksum if d.url in infos else None
        path = os.path.join(str(builder.data_dir_root), "downloads", resource_lib.get_dl_fname(d.url, checksum))
        return os.path.exists(path)
    except Exception:  # noqa: BLE001
        return False


def unreachable_hosts(urls: "list[str]", timeout: float = 5.0) -> dict[str, str]:
    """{host: why} for the hosts of ``urls`` that do not answer an HTTP HEAD within ``timeout`` seconds
    (any HTTP answer, even an error status, counts as reachable). Hosts are tried in parallel; proxies
    set in the environment are honoured (``requests``)."""
    import requests

    by_host: dict[str, str] = {}
    for u in urls:
        by_host.setdefault(urllib.parse.urlsplit(u).netloc, u)
    result: dict[str, str] = {h: f"no answer within {timeout:.0f} s" for h in by_host}

    def probe(host: str, url: str) -> None:
        try:
            requests.head(url, timeout=(timeout, timeout), allow_redirects=False)
            result.pop(host, None)
        except requests.RequestException as e:
            reason = e.args[0] if e.args else e
            reason = getattr(reason, "reason", reason)
            text = re.sub(r"^HTTPS?Connection\(host='[^']*', port=\d+\): ", "", " ".join(str(reason).split()))
            result[host] = f"{type(e).__name__}: {text}"[:200]

    threads = [threading.Thread(target=probe, args=hu, daemon=True) for hu in by_host.items()]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout + 1.0  # a DNS lookup may ignore requests' timeout: stop waiting
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return dict(result)


def plan(task: Mapping, data_dir: "str | None", manual_dir: "str | None" = None) -> Plan:
    """Create ``task``'s builder and find out, without building, whether it can be prepared now: already
    prepared, a manual download missing, or download hosts that cannot be reached."""
    import tensorflow_datasets as tfds

    with quiet_prepare():
        return _plan(tfds, task, data_dir, manual_dir)


def _plan(tfds, task: Mapping, data_dir: "str | None", manual_dir: "str | None") -> Plan:
    name, spec, data_dir = task_name(task), tfds_spec(task), resolve_data_dir(data_dir)
    p = Plan(name, spec)
    try:
        builder = tfds.builder(spec, data_dir=data_dir, file_format="array_record")
    except Exception as e:  # noqa: BLE001
        p.problem = f"[{name}] cannot create the TFDS builder {spec}: {type(e).__name__}: {e}"
        return p
    p.builder, p.manual_dir = builder, manual_dir_for(builder, manual_dir)
    if builder.is_prepared():
        fmt = getattr(builder.info.file_format, "value", builder.info.file_format)
        if str(fmt) == "array_record":
            p.ready = True
        else:
            p.problem = (f"[{name}] {spec} exists at {builder.data_path} as {fmt}, which cannot be read without "
                         f"TensorFlow; use another data.dir or convert it: tfds convert_format "
                         f"--dataset_version_dir {builder.data_path} --out_file_format array_record")
        return p
    instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    mdir = p.manual_dir
    if instructions and (not os.path.isdir(mdir) or not os.listdir(mdir)):
        p.problem = (f"[{name}] {spec} needs a manual download. TFDS's instructions:\n"
                     + "\n".join("    " + ln for ln in str(instructions).strip().splitlines())
                     + f"\n  Put the files in: {mdir}\n  (or pass data.manual_dir=PATH), then run again: "
                     f"{prepare_command(task, data_dir)}")
        return p
    p.downloads = [d for d in builder_downloads(builder, mdir) if not _cached(builder, d, mdir)]
    if p.downloads:
        p.unreachable = unreachable_hosts([d.url for d in p.downloads])
    return p


def _size(n: "int | None") -> str:
    if not n:
        return ""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f" ({n:.0f} {unit})" if unit == "bytes" else f" ({n:.1f} {unit})"
        n /= 1024
    return ""


def unreachable_message(p: Plan) -> str:
    """Which files to fetch by hand for ``p`` and where to put them (TFDS reads them from manual_dir)."""
    hosts = ", ".join(f"{h} ({why})" for h, why in p.unreachable.items())
    files = [d for d in p.downloads if d.host in p.unreachable]
    lines = [f"[{p.task}] cannot reach {hosts}. Fetch these by hand and save them in {p.manual_dir}:"]
    lines += [f"    {d.url}{_size(d.size)}\n      -> {os.path.join(p.manual_dir, d.filename)}" for d in files]
    return "\n".join(lines)


def _tmp_dirs(data_dir: str) -> set[str]:
    dl = os.path.join(data_dir, "downloads")
    try:
        return {os.path.join(dl, n) for n in os.listdir(dl) if ".tmp." in n}
    except OSError:
        return set()


def build(p: Plan, echo: Callable[[str], None] = print) -> bool:
    """Download and prepare ``p``'s builder as array_record; True when ready. Temporary download folders
    of a failed attempt are removed."""
    import tensorflow_datasets as tfds

    builder = p.builder
    data_dir = str(builder.data_dir_root)
    echo(f"[{p.task}] preparing {p.spec} ({builder.version}) as array_record in {data_dir} ...")
    before = _tmp_dirs(data_dir)
    try:
        with quiet_prepare():
            builder.download_and_prepare(
                file_format="array_record",
                # build from the original files: GCS mirrors hold TFRecord copies, unreadable without TF.
                # manual_dir: files fetched by hand (by TFDS's file names) are used instead of downloading.
                download_config=tfds.download.DownloadConfig(manual_dir=p.manual_dir, try_download_gcs=False))
    except Exception as e:  # noqa: BLE001
        for d in sorted(_tmp_dirs(data_dir) - before):
            shutil.rmtree(d, ignore_errors=True)
        msg = " ".join(str(e).split())
        echo(f"[{p.task}] preparing {p.spec} failed: {type(e).__name__}: {msg[:600]}")
        return False
    echo(f"[{p.task}] {p.spec} ready at {builder.data_path}")
    return True
