"""Raw rows through ``datasets``: local files and folders, saved datasets and hub ids.

Local files are read one by one with ``Dataset.from_json`` / ``from_parquet`` /
``from_csv`` (cached like ``load_dataset``, without its hub download-count
request), so every row can be traced back to its file and its 0-based row in
that file (``Provenance``) for error messages.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

import datasets

from .spec import DatasetSpec

BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
READERS = {"json": datasets.Dataset.from_json, "parquet": datasets.Dataset.from_parquet, "csv": datasets.Dataset.from_csv}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")


@dataclass(frozen=True)
class Provenance:
    """Where the rows of a loaded dataset came from: ``sources[k]`` starts at global row ``starts[k]``."""

    sources: tuple[str, ...]
    starts: tuple[int, ...]

    def locate(self, index: int) -> tuple[str, int]:
        """``(source, row within that source)`` of global row ``index``."""
        k = bisect.bisect_right(self.starts, index) - 1
        return self.sources[k], index - self.starts[k]

    @property
    def name(self) -> str:
        """One name for the whole dataset (its only source, or the first with a count)."""
        more = len(self.sources) - 1
        return self.sources[0] + (f" (+{more} more files)" if more else "")


def looks_local(path: str) -> bool:
    """Whether ``path`` reads as a local path, not a hub id (``org/name``): a data-file suffix, a leading
    ``.``, ``/`` or ``~``, a backslash, or more than one ``/``."""
    return (_builder(Path(path)) is not None or path.startswith((".", "/", "~")) or "\\" in path
            or path.count("/") > 1)


def _read(read, file: Path, cache_dir: str | None) -> datasets.Dataset:
    """The rows of one data file; a file without rows raises ``ValueError`` naming it."""
    ds = None
    if file.stat().st_size:
        try:
            ds = read(str(file), cache_dir=cache_dir)
        except (StopIteration, ValueError) as err:  # datasets' ways of saying the file holds no rows
            if not isinstance(err, StopIteration) and "corresponds to no data" not in str(err):
                raise
        except datasets.exceptions.DatasetGenerationError as err:
            cause = err.__cause__ or err
            raise ValueError(f"{file}: cannot read the file: {str(cause).splitlines()[0]}") from None
    if ds is None or len(ds) == 0:
        raise ValueError(f"{file}: the data file has no rows")
    return ds


def _builder(file: Path) -> str | None:
    suffixes = [s for s in file.suffixes if s not in COMPRESSIONS]
    return BUILDERS.get(suffixes[-1].lower()) if suffixes else None


def _local_files(spec: DatasetSpec, root: Path | None) -> list[Path]:
    if spec.data_files is not None:
        names = [spec.data_files] if isinstance(spec.data_files, str) else list(spec.data_files)
        files = [root / name if root is not None and root.is_dir() else Path(name) for name in names]
    elif root.is_dir():
        files = sorted(f for f in root.rglob("*") if f.is_file() and _builder(f))
    else:
        files = [root]
    missing = [str(f) for f in files if not f.is_file()]
    if missing or not files:
        raise ValueError(f"{spec.path}: data files not found: {missing or 'no json/jsonl/parquet/csv files'}")
    return files


def _load_local(
    label: str, builder: str | None, files: list[Path], cache_dir: str | None
) -> tuple[datasets.Dataset, Provenance]:
    builders = {builder or _builder(f) for f in files}
    if len(builders) != 1 or not builders <= set(READERS):
        raise ValueError(f"{label}: cannot tell one file type ({sorted(READERS)}) from {[f.name for f in files]}; "
                         "set ds_type")
    read = READERS[builders.pop()]
    parts = [_read(read, f, cache_dir) for f in files]
    starts, total = [], 0
    for part in parts:
        starts.append(total)
        total += len(part)
    ds = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return ds, Provenance(tuple(str(f) for f in files), tuple(starts))


def load_rows(spec: DatasetSpec, cache_dir: str | None = None) -> tuple[datasets.Dataset, Provenance]:
    """Load the raw rows of ``spec`` (columns renamed by ``spec.columns``) and their provenance.

    - a folder written by ``save_to_disk``: ``load_from_disk`` (``split`` picks from a DatasetDict);
    - an existing file or folder: its data files (``data_files`` relative to a folder, or all of them);
    - a builder name (``json``, ``parquet``, ``csv``) with ``data_files``: those files;
    - a missing path that looks local (``looks_local``): ``ValueError``;
    - anything else: a hub dataset, ``load_dataset(path, name, split=split, revision, data_files)``.
    """
    root = Path(spec.path)
    if root.is_dir() and ((root / "state.json").is_file() or (root / "dataset_dict.json").is_file()):
        saved = datasets.load_from_disk(str(root))
        ds = saved[spec.split] if isinstance(saved, datasets.DatasetDict) else saved
        provenance = Provenance((spec.path,), (0,))
    elif root.exists():
        ds, provenance = _load_local(spec.path, spec.ds_type, _local_files(spec, root), cache_dir)
    elif spec.path in BUILDERS.values() and spec.data_files is not None:
        ds, provenance = _load_local(spec.path, spec.path, _local_files(spec, None), cache_dir)
    elif looks_local(spec.path):
        raise ValueError(f"{spec.path}: local data file or folder not found")
    else:
        try:
            ds = datasets.load_dataset(spec.path, spec.name, split=spec.split, revision=spec.revision,
                                       data_files=spec.data_files, cache_dir=cache_dir)
        except (ConnectionError, FileNotFoundError) as err:
            raise ValueError(f"{spec.path}: not a local file or folder, and no hub dataset could be loaded under "
                             f"that name ({type(err).__name__}: {str(err).splitlines()[0]})") from None
        provenance = Provenance((f"{spec.path} [{spec.split}]",), (0,))
    if spec.columns:
        ds = ds.rename_columns(spec.columns)
    return ds, provenance
