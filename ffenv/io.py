"""Files that survive interruptions: one atomic writer for every file ffprune writes, and checked loads.

Every writer (results, checkpoints, bench tables and plots, the token cache, zoo training) goes through
:func:`atomic_write`: the content is written to a temporary file beside the target (``.<name>.tmp<pid><suffix>``)
and renamed over it, so a kill or Ctrl-C never leaves a half-written file, only the old one or the new
one. A target that cannot be written (read-only folder, a file where a folder should be) is an
:class:`~ffenv.errors.FFPruneError` naming the path, not an ``OSError`` traceback.

Checkpoints of long runs (10⁴–10⁵ episodes on a surrogate) stay cheap: :class:`CheckpointPacer` spaces rewrites so
they cost a bounded share of the run, and :func:`pack` stores a search's plain-Python state (its whole history) as
one bytes object, which ``torch.save`` copies instead of visiting every record.

JSON files whose name ends in ``.json.gz`` (the cells of benches and suites, :data:`COMPRESSED_JSON`) are compact JSON,
gzip-compressed with no timestamp (the same data gives the same bytes): :func:`atomic_write_json` and
:func:`read_json` pick the format from the name, so every reader reads both. :func:`beside` names a result's companion
files (``seed0.json`` and ``seed0.json.gz`` both have ``seed0.ckpt``).
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import platform
import shutil
import time
import zlib
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ffenv.errors import FFPruneError


def atomic_write(path: str | Path, write: Callable[[Path], Any], keep_suffix: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it to ``path`` atomically.

    ``keep_suffix=True`` ends the temporary name with ``path``'s suffix, for writers that pick the format
    from it (matplotlib's ``savefig``, stable-baselines3's ``save``). The temporary file is removed if
    ``write`` fails. Raises :class:`FFPruneError` when ``path``'s folder cannot be created or written.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix if keep_suffix else ''}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        _remove(tmp)
        raise FFPruneError(f"cannot write {str(path)!r}: {err.strerror or err}; choose a writable location") from err
    except BaseException:
        _remove(tmp)
        raise
    return path


def check_new_dir(path: str | Path, force: bool = False, name: str = "out") -> Path:
    """``path`` as a folder that may be (re)written: absent or empty, or anything with ``force``; else
    :class:`FFPruneError` naming ``name``. Call it before expensive work that ends in :func:`atomic_write_dir`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FFPruneError(f"{name}={str(path)!r} is a file; give a folder path")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise FFPruneError(f"{name}={str(path)!r} exists and is not empty; choose another folder or pass --force to replace it")
    return path


def atomic_write_dir(path: str | Path, write: Callable[[Path], Any], force: bool = False, name: str = "out") -> Path:
    """Call ``write(tmp)`` on a temporary folder beside ``path``, then put it at ``path`` by renames: a failure
    or a kill leaves no half-written folder (at worst a ``.<name>.tmp<pid>`` beside it, removed on failure).

    ``path`` must not exist or be empty, unless ``force`` (it is then replaced, only once the new folder is
    complete). Raises :class:`FFPruneError` naming ``name`` (the option) otherwise or when it cannot be written.
    """
    path = check_new_dir(path, force, name)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    old = path.with_name(f".{path.name}.old{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        write(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FFPruneError(f"cannot write {name}={str(path)!r}: {err.strerror or err}; choose a writable location") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return path


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # e.g. its folder could not be created: nothing to remove
        pass


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text (UTF-8) atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


COMPRESSED_JSON = ".json.gz"
"""The name ending of a gzip-compressed JSON file."""


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write JSON (NumPy / torch values converted) atomically: indented text, or compact and gzip-compressed (level
    9, no timestamp, so the same data gives the same bytes) where ``path`` ends in :data:`COMPRESSED_JSON`."""
    path = Path(path)
    if path.name.endswith(COMPRESSED_JSON):
        raw = (json.dumps(data, separators=(",", ":"), default=jsonable) + "\n").encode("utf-8")
        blob = gzip.compress(raw, compresslevel=9, mtime=0)
        return atomic_write(path, lambda tmp: tmp.write_bytes(blob))
    return atomic_write_text(path, json.dumps(data, indent=2, default=jsonable) + "\n")


def beside(path: str | Path, suffix: str) -> Path:
    """A companion file of a JSON result: ``path`` with its ``.json`` or ``.json.gz`` ending (or its last suffix)
    replaced by ``suffix`` (``seed0.json.gz`` → ``seed0.ckpt``)."""
    path = Path(path)
    for ending in (COMPRESSED_JSON, ".json"):
        if path.name.endswith(ending):
            return path.with_name(path.name[: -len(ending)] + suffix)
    return path.with_suffix(suffix)


def atomic_save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure as a PNG atomically, with a 256-colour palette (a plot's few colours survive; the
    file is about a third of a true-colour one, which matters for the plots committed under ``docs/results``)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    buffer.seek(0)
    with Image.open(buffer) as image:
        palette = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    palette.save(out, format="PNG", optimize=True)
    blob = out.getvalue()
    return atomic_write(path, lambda tmp: tmp.write_bytes(blob))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` atomically."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def pack(obj: Any) -> bytes:
    """``obj`` (plain Python: a search's state and history) pickled into one bytes object for a checkpoint.
    ``torch.save`` visits every object it saves (10⁴ history records: a fifth of a second), but copies one bytes
    object (about 10× faster). :func:`unpack` reverses it."""
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def unpack(value: Any) -> Any:
    """What :func:`pack` packed; any other value (a checkpoint written before packing) as it is."""
    return pickle.loads(value) if isinstance(value, (bytes, bytearray)) else value


class CheckpointPacer:
    """When a long run rewrites its checkpoint: after every update while writing is cheap, else once the time since
    the last write is at least ``(1 - share) / share`` times what that write took, so rewrites cost at most about
    ``share`` of the run. A checkpoint holding a search's history grows with it: at 10⁴ surrogate episodes, rewriting
    it after every update would take most of the run. An interruption loses only the work since the last write, and
    a search resumed from any of its checkpoints ends as the uninterrupted one would.

    Args:
        share: the most of the run's wall time checkpoints may take, in ``(0, 1)``.
    """

    def __init__(self, share: float = 0.1) -> None:
        if not 0 < share < 1:
            raise FFPruneError(f"share must be in (0, 1), got {share!r}")
        self.share = share
        self._ended: float | None = None  # perf_counter() when the last write ended
        self._took = 0.0                  # seconds the last write took
        self.writes = 0
        """Checkpoints written so far."""

    def due(self) -> bool:
        """Whether a checkpoint should be written now (always before the first one)."""
        return self._ended is None or time.perf_counter() - self._ended >= self._took * (1 - self.share) / self.share

    def write(self, save: Callable[[], Any]) -> None:
        """Call ``save`` now, timing it for the next :meth:`due`."""
        start = time.perf_counter()
        save()
        self._ended = time.perf_counter()
        self._took = self._ended - start
        self.writes += 1

    def maybe(self, save: Callable[[], Any]) -> bool:
        """:meth:`write` ``save`` if it is :meth:`due`; whether it was written."""
        if not self.due():
            return False
        self.write(save)
        return True


def check_writable(path: str | Path, name: str = "out") -> Path:
    """Fail early (before any work) with :class:`FFPruneError` if ``path`` could not be written later."""
    path = Path(path)
    if path.is_dir():
        raise FFPruneError(f"{name}={str(path)!r} is a folder; give a file path")
    probe = path.with_name(f".{path.name}.probe{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise FFPruneError(f"cannot write {str(path)!r} ({name}): {err.strerror or err}; choose a writable location") from err
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`atomic_torch_save`; :class:`FFPruneError` if it is unreadable."""
    path = Path(path)
    try:
        state = torch.load(path, weights_only=False)
    except FileNotFoundError as err:
        raise FFPruneError(f"checkpoint {str(path)!r} does not exist") from err
    except Exception as err:  # noqa: BLE001 - unpickling raises many types for a damaged file
        raise FFPruneError(f"checkpoint {str(path)!r} is corrupt or not an ffprune checkpoint "
                           f"({type(err).__name__}); delete it and start again without --resume") from err
    if not isinstance(state, dict):
        raise FFPruneError(f"checkpoint {str(path)!r} is not an ffprune checkpoint (holds a {type(state).__name__}); "
                           "delete it and start again without --resume")
    return state


def read_json(path: str | Path, name: str = "file") -> Any:
    """Parse a JSON file (gzip-compressed where its name ends in :data:`COMPRESSED_JSON`); :class:`FFPruneError` naming
    it if it is missing, not JSON or a truncated / corrupt archive."""
    path = Path(path)
    try:
        if path.name.endswith(COMPRESSED_JSON):
            return json.loads(gzip.decompress(path.read_bytes()).decode("utf-8"))
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise FFPruneError(f"{name} {str(path)!r} does not exist") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FFPruneError(f"{name} {str(path)!r} is not valid JSON ({err}); delete it or fix it") from err
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise FFPruneError(f"{name} {str(path)!r} is not a complete gzip file ({err}); delete it (a cell reruns) or "
                           "restore it") from err


def json_or_text(text: str) -> Any:
    """A ``KEY=VALUE`` value of the command line or a variant: JSON when it is JSON (numbers, ``true``, lists such as
    ``[64,64]``), else the text itself (stripped)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text.strip()


def as_json(value: Any) -> Any:
    """``value`` as a JSON file gives it back (tuples → lists, NumPy/torch values → plain ones), so settings compare
    equal with what a file on disk records."""
    return json.loads(json.dumps(value, default=jsonable))


def jsonable(x: Any) -> Any:
    """``json.dumps`` default: NumPy arrays / scalars, tensors and paths as plain values."""
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def versions() -> dict[str, str]:
    """Versions of everything that shapes a result (read from the installed distributions)."""

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {"ffprune": version("ffprune"), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": version("transformers"), "gymnasium": version("gymnasium"),
            "stable_baselines3": version("stable-baselines3"), "numpy": np.__version__,
            "platform": platform.platform()}
