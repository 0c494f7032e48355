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
    return DataError(f"task {task_name(task)}: cannot read split {split_str!r} of {spec} under {data_dir}: {err}")


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


def prepare(task: Mapping, data_dir: "str | None", manual_dir: "str | None" = None,
            echo: Callable[[str], None] = print) -> bool:
    """Download and prepare ``task``'s TFDS builder as array_record under ``data_dir``; True when ready.

    Needs TensorFlow (the ``prepare`` extra); the caller checks :func:`tensorflow_available` first.
    """
    import tensorflow_datasets as tfds

    name, spec, data_dir = task_name(task), tfds_spec(task), resolve_data_dir(data_dir)
    note = (task.get("tfds") or {}).get("note")
    if note:
        echo(f"[{name}] note: {' '.join(str(note).split())}")
    try:
        builder = tfds.builder(spec, data_dir=data_dir, file_format="array_record")
    except Exception as e:  # noqa: BLE001
        echo(f"[{name}] cannot create the TFDS builder {spec}: {e}")
        return False
    if builder.is_prepared():
        fmt = getattr(builder.info.file_format, "value", builder.info.file_format)
        if str(fmt) == "array_record":
            echo(f"[{name}] {spec} already prepared at {builder.data_path}")
            return True
        echo(f"[{name}] {spec} exists at {builder.data_path} as {fmt}, which cannot be read without TensorFlow; "
             f"use another data.dir or convert it: tfds convert_format --dataset_version_dir {builder.data_path} "
             f"--out_file_format array_record")
        return False
    instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    mdir = manual_dir_for(builder, manual_dir)
    if instructions and (not os.path.isdir(mdir) or not os.listdir(mdir)):
        echo(f"[{name}] {spec} needs a manual download. TFDS's instructions:\n"
             + "\n".join("    " + ln for ln in str(instructions).strip().splitlines())
             + f"\n  Put the files in: {mdir}\n  (or pass data.manual_dir=PATH), then run again: "
             f"{prepare_command(task, data_dir)}")
        return False
    echo(f"[{name}] preparing {spec} ({builder.version}) as array_record in {data_dir} ...")
    try:
        builder.download_and_prepare(
            file_format="array_record",
            # build from the original files: GCS mirrors hold TFRecord copies, unreadable without TF
            download_config=tfds.download.DownloadConfig(manual_dir=mdir if instructions else None,
                                                         try_download_gcs=False))
    except Exception as e:  # noqa: BLE001
        echo(f"[{name}] preparing {spec} failed: {type(e).__name__}: {e}")
        return False
    echo(f"[{name}] {spec} ready at {builder.data_path}")
    return True
