"""Files that survive interruptions: one atomic writer for every file ffprune writes, and checked loads.

Every writer (results, checkpoints, bench tables and plots, the token cache, zoo training) goes through
:func:`atomic_write`: the content is written to a temporary file beside the target (``.<name>.tmp<pid><suffix>``)
and renamed over it, so a kill or Ctrl-C never leaves a half-written file, only the old one or the new
one. A target that cannot be written (read-only folder, a file where a folder should be) is an
:class:`~ffenv.errors.FFPruneError` naming the path, not an ``OSError`` traceback.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
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


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write JSON (indented; NumPy / torch values converted) atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, default=jsonable) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` atomically."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


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
    """Parse a JSON file; :class:`FFPruneError` naming it if it is missing or not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise FFPruneError(f"{name} {str(path)!r} does not exist") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FFPruneError(f"{name} {str(path)!r} is not valid JSON ({err}); delete it or fix it") from err


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
