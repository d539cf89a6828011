"""Corpora and token windows: the first stage of ffprune's pipeline.

Three corpora are known by name, and any local text file or folder works too:

``stdlib`` (the default, offline)
    English text that every CPython installation carries: the interpreter's bundled
    documentation topics (:mod:`pydoc_data.topics`) and, for every module of the standard
    library, its docstrings and comment blocks extracted with :mod:`ast` / :mod:`tokenize`.
    Each topic and each module is one *document*; documents are assigned to the splits
    ``train`` (90 %), ``reward`` (5 %) and ``eval`` (5 %) by a SHA-256 hash of their name, so
    every machine with the same Python version gets the same splits.
``wikitext2``
    WikiText-2 (Merity et al. 2016, CC BY-SA). Its validation and test files ship inside the package,
    xz-compressed under ``ffenv/lm/corpora/wikitext2/``, and are ``reward`` and ``eval``: read offline,
    checked against the SHA-256 recorded here, each split one document (the contiguous perplexity stream).
    They are the *tokenised* variant ``wikitext-2-v1`` (``wiki.*.tokens``: rare words are ``<unk>``),
    not ``wikitext-2-raw-v1``, so perplexities are not comparable to papers that use the raw text.
    ``train`` is not shipped: it comes from the hub (``Salesforce/wikitext``, ``wikitext-2-v1``) only
    when asked for, and offline that is an error. ``wikitext2:/path`` reads a local file / folder instead.
``c4``
    The first shard of ``allenai/c4`` (English) from the hub; ``reward`` and ``eval`` are a
    hash split of the validation shard.
a path
    A ``.txt`` file or a folder of them, read with ``datasets``' ``text`` builder. A folder holding
    files named like ``train`` / ``valid`` / ``test`` maps them to ``train`` / ``reward`` / ``eval``;
    otherwise paragraphs are hash-split like ``stdlib``.

Token windows come from :func:`calibration_windows` (``n`` random windows, seeded) and
:func:`evaluation_windows` (non-overlapping windows, tail dropped). Tokenized tensors are cached
on disk under :func:`cache_dir`, keyed by the tokenizer's hash, corpus, split and window layout.
"""

from __future__ import annotations

import ast
import codecs
import functools
import hashlib
import io
import json
import lzma
import os
import re
import sysconfig
import tokenize
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ffenv.errors import FFPruneError
from ffenv.io import atomic_torch_save

SPLITS = ("train", "reward", "eval")
"""A corpus's splits: ``train`` (the tiny models' training text), ``reward`` (what a search may see: the reward's
windows and the calibration windows of the importance scores and of Calib) and ``eval`` (held out: scored, never
searched on)."""
RENAMED_SPLITS = {"calib": "reward"}
"""Old split name -> new one (``calib`` also named Calib, the compensation): refused with the new name."""
CORPORA = ("stdlib", "wikitext2", "c4")
_SPLIT_SHARES = {"train": 90, "reward": 5, "eval": 5}  # percent, by name hash
_CORPUS_FORMAT = 3  # bump when the stdlib extraction or the split names change, to invalidate caches (3: calib -> reward)


def cache_dir() -> Path:
    """Root of ffprune's on-disk cache (``$FFPRUNE_CACHE`` or ``~/.cache/ffprune``)."""
    root = Path(os.environ.get("FFPRUNE_CACHE", Path.home() / ".cache" / "ffprune"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def check_split(split: str) -> str:
    """``split`` if it is one of :data:`SPLITS`; else a one-line :class:`FFPruneError` (naming the new name of a renamed
    split, :data:`RENAMED_SPLITS`)."""
    if split in SPLITS:
        return split
    if split in RENAMED_SPLITS:
        raise FFPruneError(f"split {split!r} is now called {RENAMED_SPLITS[split]!r} (the split the reward and the "
                           f"calibration windows come from); use split={RENAMED_SPLITS[split]!r}")
    raise FFPruneError(f"split must be one of {SPLITS}, got {split!r}")


def split_of(name: str) -> str:
    """The split a document belongs to, from a SHA-256 hash of its name (stable everywhere)."""
    bucket = int(hashlib.sha256(name.encode("utf-8")).hexdigest()[:8], 16) % 100
    if bucket < _SPLIT_SHARES["train"]:
        return "train"
    if bucket < _SPLIT_SHARES["train"] + _SPLIT_SHARES["reward"]:
        return "reward"
    return "eval"


# ----------------------------------------------------------------------------- stdlib corpus
def _module_text(source: str) -> str:
    """Docstrings and comment blocks of one module, as paragraphs of English-ish text."""
    parts: list[str] = []
    try:
        with warnings.catch_warnings():  # stdlib test files hold deliberately odd escapes
            warnings.simplefilter("ignore", (SyntaxWarning, DeprecationWarning))
            tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= 40:
                parts.append(doc.strip())
    block: list[str] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                text = tok.string.lstrip("#").strip()
                if text and not text.startswith("!") and "coding" not in text[:12]:
                    block.append(text)
            elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
                if len(block) >= 2 or (block and len(block[0]) >= 60):
                    parts.append(" ".join(block))
                block = []
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return "\n\n".join(parts)


def iter_stdlib_documents() -> Iterator[dict[str, str]]:
    """Yield ``{"name", "text"}`` for every pydoc topic and every standard-library module."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield {"name": f"topic/{key}", "text": topics[key].strip()}
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("site-packages/", "dist-packages/")):
            continue
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        text = _module_text(source)
        if len(text) >= 200:
            yield {"name": f"module/{rel}", "text": text}


# ----------------------------------------------------------------------------- loading corpora
def _hash_split(rows: list[dict[str, str]]) -> Any:
    import datasets

    buckets: dict[str, dict[str, list[str]]] = {s: {"name": [], "text": []} for s in SPLITS}
    for row in rows:
        b = buckets[split_of(row["name"])]
        b["name"].append(row["name"])
        b["text"].append(row["text"])
    return datasets.DatasetDict({s: datasets.Dataset.from_dict(buckets[s]) for s in SPLITS})


def _load_stdlib() -> Any:
    import platform

    import datasets

    where = cache_dir() / "corpora" / f"stdlib-py{platform.python_version()}-v{_CORPUS_FORMAT}"
    if (where / "dataset_dict.json").exists():
        return datasets.load_from_disk(str(where))
    dd = _hash_split(list(iter_stdlib_documents()))
    # not atomic_write: save_to_disk writes a folder, and losing the race to another process is fine
    tmp = where.with_name(where.name + f".tmp{os.getpid()}")
    dd.save_to_disk(str(tmp))
    try:
        os.replace(tmp, where)
    except OSError:  # another process won the race: use its copy
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(where))


_SPLIT_ALIASES = {
    "train": ("train",),
    "reward": ("valid", "validation", "val", "reward", "calib"),  # calib: its name before
    "eval": ("test", "eval"),
}


def _named_split(path: Path) -> str | None:
    stem = path.name.lower()
    for split, names in _SPLIT_ALIASES.items():
        for n in names:
            if stem.startswith(n + ".") or f".{n}." in stem or stem == n:
                return split
    return None


_WIKI_TITLE = re.compile(r"^ ?= [^=].* = ?$")


def _documents(lines: list[str]) -> list[str]:
    """Group a text file's lines into documents: at WikiText article titles (`` = Title = ``) when the
    file has them, else at blank lines, else every 50 lines."""
    if any(_WIKI_TITLE.match(line.rstrip("\n")) for line in lines):
        starts = [i for i, line in enumerate(lines) if _WIKI_TITLE.match(line.rstrip("\n"))]
    elif any(not line.strip() for line in lines):
        starts = [i for i, line in enumerate(lines) if i == 0 or (not lines[i - 1].strip() and line.strip())]
    else:
        starts = list(range(0, len(lines), 50))
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    docs = ["".join(lines[a:b]).strip() for a, b in zip(starts, [*starts[1:], len(lines)])]
    return [d for d in docs if d]


def _check_text_file(path: Path, chunk_size: int = 1 << 20) -> None:
    """:class:`FFPruneError` naming ``path`` unless it is UTF-8 text holding something besides whitespace.

    Reads in chunks through an incremental decoder, so a large file is never held in memory whole.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes of the file handed to the decoder so far
    has_text = False
    try:
        with open(path, "rb") as fh:
            while True:
                chunk = fh.read(chunk_size)
                pending = len(decoder.getstate()[0])  # bytes of a split character held from the last chunk
                try:
                    text = decoder.decode(chunk, final=not chunk)
                except UnicodeDecodeError as err:  # err.start counts from the held bytes
                    raise FFPruneError(
                        f"corpus: {str(path)!r} is not UTF-8 text (invalid byte 0x{err.object[err.start]:02x} at "
                        f"byte offset {offset - pending + err.start}); the corpus must be UTF-8 text"
                    ) from err
                has_text = has_text or bool(text.strip())
                if not chunk:
                    break
                offset += len(chunk)
    except OSError as err:
        raise FFPruneError(f"corpus: cannot read {str(path)!r}: {err.strerror or err}") from err
    if not has_text:
        raise FFPruneError(f"corpus: {str(path)!r} holds no text (it is empty or only whitespace); "
                           "give a file with UTF-8 text")


def _read_docs(files: list[Path]) -> list[str]:
    import datasets

    raw = datasets.load_dataset("text", data_files=[str(f) for f in files], sample_by="line", keep_linebreaks=True)
    return _documents(raw["train"]["text"])


def _load_local(path: Path) -> Any:
    if not path.exists():
        raise FFPruneError(f"corpus: no such file or folder {str(path)!r}")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    files = [p for p in files if p.suffix in (".txt", ".tokens", ".raw")]
    if not files:
        raise FFPruneError(f"corpus: {str(path)!r} holds no .txt/.tokens/.raw file")
    for f in files:
        _check_text_file(f)
    import datasets

    named = {f: _named_split(f) for f in files}
    if path.is_dir() and all(named.values()) and {"reward", "eval"} <= set(named.values()):
        out = {}
        for s in SPLITS:
            docs = _read_docs([f for f in files if named[f] == s]) if s in named.values() else []
            out[s] = datasets.Dataset.from_dict({"name": [f"{s}:{i}" for i in range(len(docs))], "text": docs})
        return datasets.DatasetDict(out)
    docs = _read_docs(files)
    return _hash_split([{"name": f"{path.name}:{i}", "text": t} for i, t in enumerate(docs)])


WIKITEXT2_DIR = Path(__file__).resolve().parent / "corpora" / "wikitext2"
"""The shipped WikiText-2 files (``wikitext-2-v1``, the tokenised variant with ``<unk>``)."""
WIKITEXT2_FILES = {  # split -> (file in WIKITEXT2_DIR, SHA-256 of its decompressed bytes)
    "reward": ("valid.txt.xz", "e24057b96f875e4ac4a5f347fa6c64438ef8322b6e41abb4d187ef0d4e150505"),
    "eval": ("test.txt.xz", "dd265c9ce12629a1eddcfd8946e087b62bb59eed07da62e775a7f6549c24cddb"),
}
_WIKITEXT2_HUB = ("Salesforce/wikitext", "wikitext-2-v1")  # the train split: the same variant as the shipped files


class LazySplits(Mapping[str, Any]):
    """A read-only ``split -> datasets.Dataset`` mapping that builds each split on its first access.

    It lets ``load_corpus("wikitext2")["reward"]`` stay offline while ``["train"]`` goes to the hub.
    """

    def __init__(self, loaders: dict[str, Callable[[], Any]]) -> None:
        self._loaders = loaders
        self._loaded: dict[str, Any] = {}

    def __getitem__(self, split: str) -> Any:
        if split not in self._loaded:
            self._loaded[split] = self._loaders[split]()  # KeyError for an unknown split, as a dict
        return self._loaded[split]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)


def _one_document(name: str, text: str) -> Any:
    import datasets

    return datasets.Dataset.from_dict({"name": [name], "text": [text]})


def _one_line(err: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (whitespace collapsed), at most ``limit`` characters."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@functools.lru_cache(maxsize=8)
def _read_packaged_xz(path: str, sha256: str) -> str:
    """The UTF-8 text (BOM stripped) of an xz file shipped with the package, verified against ``sha256``."""
    try:
        raw = lzma.decompress(Path(path).read_bytes())
    except (OSError, lzma.LZMAError) as err:
        raise FFPruneError(f"corpus: the packaged file {path!r} cannot be read ({type(err).__name__}: "
                           f"{_one_line(err)}); reinstall ffprune") from err
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise FFPruneError(f"corpus: the packaged file {path!r} is corrupt (its SHA-256 differs from the one "
                           "recorded in ffenv/lm/data.py); reinstall ffprune")
    return raw.decode("utf-8").removeprefix("\ufeff")


def _bundled_wikitext2(split: str) -> Any:
    """The shipped ``reward`` (validation) or ``eval`` (test) split of WikiText-2 as one document; offline."""
    name, sha256 = WIKITEXT2_FILES[split]
    text = _read_packaged_xz(str(WIKITEXT2_DIR / name), sha256)
    return _one_document(f"wikitext2/{name.removesuffix('.txt.xz')}", text)


def _hub_wikitext2_train() -> Any:
    """WikiText-2's train split (``wikitext-2-v1``) from the hub as one document; :class:`FFPruneError` offline."""
    try:
        import datasets

        rows = datasets.load_dataset(*_WIKITEXT2_HUB, split="train")["text"]
    except Exception as err:  # offline, missing credentials, ...
        raise FFPruneError(
            "corpus='wikitext2': the train split is not shipped with ffprune (only validation and test are) and "
            f"could not be fetched from the Hugging Face hub ({type(err).__name__}: {_one_line(err)}); "
            "pass a local copy as 'wikitext2:/path/to/wikitext-2'"
        ) from err
    # the hub turns the file's blank lines (" \n") into empty rows: put them back, so train reads like the shipped files
    return _one_document("wikitext2/train", "".join(r or " \n" for r in rows))


def _load_wikitext2() -> LazySplits:
    """``corpus="wikitext2"``: shipped ``reward`` / ``eval``, ``train`` from the hub only when it is accessed."""
    return LazySplits({"train": _hub_wikitext2_train,
                       "reward": functools.partial(_bundled_wikitext2, "reward"),
                       "eval": functools.partial(_bundled_wikitext2, "eval")})


def _load_hub_c4() -> Any:
    import datasets

    files = {
        "train": "en/c4-train.00000-of-01024.json.gz",
        "validation": "en/c4-validation.00000-of-00008.json.gz",
    }
    raw = datasets.load_dataset("allenai/c4", data_files=files)
    train = raw["train"].select_columns(["url", "text"]).rename_column("url", "name")
    val = raw["validation"].select_columns(["url", "text"]).rename_column("url", "name")
    # reward / eval: halves of the validation shard, by a hash of each document's URL
    in_reward = [int(hashlib.sha256(u.encode()).hexdigest()[:8], 16) % 2 == 0 for u in val["name"]]
    reward = val.select([i for i, c in enumerate(in_reward) if c])
    held = val.select([i for i, c in enumerate(in_reward) if not c])
    return datasets.DatasetDict({"train": train, "reward": reward, "eval": held})


def load_corpus(corpus: str = "stdlib") -> Any:
    """Return a mapping of the splits ``train``, ``reward``, ``eval`` to :class:`datasets.Dataset` objects.

    A :class:`datasets.DatasetDict`, except for ``"wikitext2"``: a :class:`LazySplits` whose ``reward`` and
    ``eval`` are the shipped files and whose ``train`` is fetched from the hub on first access.

    Args:
        corpus: ``"stdlib"``, ``"wikitext2"`` (shipped ``reward`` / ``eval``, hub ``train``),
            ``"wikitext2:/local/path"``, ``"c4"``, or the path of a local text file or folder.

    Raises:
        FFPruneError: unknown corpus name, or a local path that does not exist, holds no text or is not UTF-8;
            for ``"wikitext2"``, on access of a split: a corrupt packaged file, or ``train`` unreachable on the hub.
    """
    if not isinstance(corpus, str) or not corpus:
        raise FFPruneError(f"corpus must be one of {CORPORA} or a local path, got {corpus!r}")
    if corpus == "stdlib":
        return _load_stdlib()
    if corpus == "wikitext2":
        return _load_wikitext2()
    if corpus.startswith("wikitext2:"):
        return _load_local(Path(corpus.split(":", 1)[1]).expanduser())
    if corpus == "c4":
        try:
            return _load_hub_c4()
        except Exception as err:
            raise FFPruneError(f"corpus='c4' could not be loaded from the hub ({type(err).__name__}: {err})") from err
    path = Path(corpus).expanduser()
    if path.exists() or os.sep in corpus or corpus.endswith(".txt"):
        return _load_local(path)
    raise FFPruneError(f"corpus must be one of {CORPORA}, 'wikitext2:/path', or a local path; got {corpus!r}")


def corpus_text(corpus: str, split: str) -> str:
    """All documents of one split joined by blank lines (the text that gets tokenized)."""
    ds = load_corpus(corpus)[check_split(split)]
    return "\n\n".join(t for t in ds["text"] if t)


# ----------------------------------------------------------------------------- tokenization + cache
def tokenizer_hash(tokenizer: Any) -> str:
    """A short stable hash of a tokenizer's full definition (vocab, merges, normalisers...)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    blob = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def disk_cached(key: dict[str, Any] | None, build: Callable[[], Any], folder: str = "tokens") -> Any:
    """``build()`` (tensors, or dicts / lists of them), stored under ``<cache_dir>/<folder>/<digest of key>.pt`` and read
    back from there in later calls and processes; a corrupt entry is rebuilt; ``key=None``: no disk cache."""
    if key is None:
        return build()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    path = cache_dir() / folder / f"{digest}.pt"
    if path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # truncated / corrupt cache entry: rebuild it
            path.unlink(missing_ok=True)
    value = build()
    atomic_torch_save(value, path)
    return value


def _corpus_key(corpus: str) -> str:
    if corpus == "wikitext2":  # the shipped files' identity: caches of the former hub (raw) corpus never match
        digest = hashlib.sha256("".join(sha for _, sha in WIKITEXT2_FILES.values()).encode()).hexdigest()[:12]
        return f"wikitext2-v1-bundled-{digest}"
    if corpus in CORPORA:
        return f"{corpus}-v{_CORPUS_FORMAT}" if corpus == "stdlib" else corpus
    path = Path(corpus.split(":", 1)[1] if corpus.startswith("wikitext2:") else corpus).expanduser()
    if path.exists():
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        stamp = [(str(p.resolve()), p.stat().st_size, int(p.stat().st_mtime)) for p in files]
        return hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16] + f"-v{_CORPUS_FORMAT}"
    return corpus


def token_stream(tokenizer: Any, corpus: str = "stdlib", split: str = "reward") -> torch.Tensor:
    """The whole split tokenized into one 1-D ``int64`` tensor (cached on disk)."""
    check_split(split)
    key = {"what": "stream", "tok": tokenizer_hash(tokenizer), "corpus": _corpus_key(corpus), "split": split}

    def build() -> torch.Tensor:
        docs = [t for t in load_corpus(corpus)[split]["text"] if t]
        if not docs:
            raise FFPruneError(f"corpus {corpus!r} has an empty {split!r} split")
        eos = tokenizer.eos_token_id
        ids: list[int] = []
        for i in range(0, len(docs), 256):
            batch = tokenizer(docs[i : i + 256], add_special_tokens=False, verbose=False)["input_ids"]
            for doc_ids in batch:
                ids.extend(doc_ids)
                if eos is not None:
                    ids.append(eos)
        return torch.tensor(ids, dtype=torch.long)

    return disk_cached(key, build)


def window_bos(tokenizer: Any) -> int | None:
    """The token a model expects at the start of a text: its tokenizer's BOS where encoding a text puts one first
    (Llama-2, Gemma: every window then starts with it), else ``None`` (GPT-2-style tokenizers: SmolLM2, the bundled
    zoo; windows are cut from the token stream as they are). Without the BOS it was trained with, a model's
    perplexity means little (Gemma-3-270M on WikiText-2: ≈ 330 without, ≈ 80 with)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    try:
        first = tokenizer("a", add_special_tokens=True)["input_ids"][:1]
    except Exception:  # noqa: BLE001 - a tokenizer that cannot encode a plain text adds nothing we could know of
        return None
    return int(bos) if first == [bos] else None


def _with_bos(spans: torch.Tensor, bos: int | None) -> torch.Tensor:
    """``[n, seq_len]`` windows: the spans as they are (``bos=None``), or each of ``seq_len - 1`` tokens after a BOS."""
    if bos is None:
        return spans
    return torch.cat([torch.full((len(spans), 1), bos, dtype=spans.dtype), spans], dim=1)


def _check_window_args(tokenizer: Any, seq_len: int, max_positions: int | None) -> None:
    if not isinstance(seq_len, int) or seq_len < 2:
        raise FFPruneError(f"seq_len must be an integer >= 2, got {seq_len!r}")
    if max_positions is not None and seq_len > max_positions:
        raise FFPruneError(f"seq_len={seq_len} exceeds the model's context length ({max_positions}); "
                           f"use seq_len <= {max_positions}")


def calibration_windows(
    tokenizer: Any,
    corpus: str = "stdlib",
    split: str = "reward",
    n: int = 32,
    seq_len: int = 256,
    seed: int = 0,
    max_positions: int | None = None,
) -> torch.Tensor:
    """``n`` windows of ``seq_len`` tokens at random (seeded) offsets of one split: ``[n, seq_len]`` (each starting
    with the model's BOS where its tokenizer uses one, :func:`window_bos`)."""
    if not isinstance(n, int) or n <= 0:
        raise FFPruneError(f"n must be a positive integer (number of windows), got {n!r}")
    _check_window_args(tokenizer, seq_len, max_positions)
    bos = window_bos(tokenizer)
    key = {"what": "calib", "tok": tokenizer_hash(tokenizer), "corpus": _corpus_key(corpus), "split": split,
           "n": n, "seq_len": seq_len, "seed": seed, **({"bos": bos} if bos is not None else {})}

    def build() -> torch.Tensor:
        stream = token_stream(tokenizer, corpus, split)
        span = seq_len - (bos is not None)
        if len(stream) <= span:
            raise FFPruneError(f"seq_len={seq_len} is longer than the whole {split!r} split ({len(stream)} tokens)")
        gen = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, len(stream) - span, (n,), generator=gen)
        return _with_bos(torch.stack([stream[s : s + span] for s in starts.tolist()]), bos)

    return disk_cached(key, build)


def evaluation_windows(
    tokenizer: Any,
    corpus: str = "stdlib",
    split: str = "eval",
    seq_len: int = 256,
    n: int | None = None,
    max_positions: int | None = None,
) -> torch.Tensor:
    """Non-overlapping windows of ``seq_len`` tokens covering a split (tail dropped): ``[N, seq_len]``; where the
    model's tokenizer uses a BOS (:func:`window_bos`) each window is that BOS and the next ``seq_len - 1`` tokens.

    ``n`` keeps only the first ``n`` windows (``None``: all of them).
    """
    if n is not None and (not isinstance(n, int) or n <= 0):
        raise FFPruneError(f"n must be a positive integer or None, got {n!r}")
    _check_window_args(tokenizer, seq_len, max_positions)
    bos = window_bos(tokenizer)
    key = {"what": "eval", "tok": tokenizer_hash(tokenizer), "corpus": _corpus_key(corpus), "split": split,
           "seq_len": seq_len, **({"bos": bos} if bos is not None else {})}

    def build() -> torch.Tensor:
        stream = token_stream(tokenizer, corpus, split)
        span = seq_len - (bos is not None)
        count = len(stream) // span
        if count == 0:
            raise FFPruneError(f"seq_len={seq_len} is longer than the whole {split!r} split ({len(stream)} tokens)")
        return _with_bos(stream[: count * span].view(count, span).clone(), bos)

    windows = disk_cached(key, build)
    if n is not None:
        if n > len(windows):
            raise FFPruneError(f"n={n} exceeds the {len(windows)} windows of {seq_len} tokens in split {split!r}")
        windows = windows[:n]
    return windows
