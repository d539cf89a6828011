"""Zero-shot accuracy with lm-evaluation-harness, on a model already in memory, plus an offline task.

:func:`run_tasks` wraps ``lm_eval.simple_evaluate``: the model *instance* (dense, or physically pruned with
per-layer widths) goes to lm-eval's ``HFLM`` as is, never re-loaded from a path, and the result comes back
as a small JSON-able dict (per task: ``acc`` / ``acc_norm`` and their standard errors, the number of
samples; the lm-eval version, seeds, limit and few-shot count). lm-eval is an optional dependency
(``pip install -e ".[eval]"``) imported only when :func:`run_tasks` runs.

:func:`build_local_task` writes ``ffprune_nextline``, a multiple-choice task built from the project's own
corpus (the docstrings, comments and pydoc topics of :mod:`ffenv.lm.data`'s ``stdlib`` corpus) so the harness
runs fully offline: each item is a few consecutive lines of one document of a split (``eval`` by default:
documents the bundled models never trained on) and ``choices`` (4) candidate next lines, the true one and
distractors drawn from *other* documents (same indentation, similar length). A model that has learned the
corpus picks the continuation of the text it reads; chance is ``1 / choices``.
:func:`run_tasks` builds it under :func:`ffenv.lm.data.cache_dir` whenever the name is asked for.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ffenv.errors import FFPruneError, non_negative_int, positive_int
from ffenv.io import atomic_write_text
from ffenv.lm.data import cache_dir, check_split, load_corpus

#: the task :func:`build_local_task` writes (and :func:`run_tasks` builds on demand)
LOCAL_TASK = "ffprune_nextline"
#: task names :func:`run_tasks` builds itself, with no ``include_path``
LOCAL_TASKS = (LOCAL_TASK,)
#: bump when the item construction changes (stored in the task's metadata)
TASK_FORMAT = 1
#: non-empty lines before the answer that make an item's context
CONTEXT_LINES = 3
#: a candidate line (answer or distractor) has this many characters, stripped
MIN_CHARS, MAX_CHARS = 24, 160
#: contexts longer than this (characters) are skipped (comment blocks are single long lines)
MAX_CONTEXT_CHARS = 800
#: a distractor's length is within this factor of the answer's when enough such lines exist
LENGTH_FACTOR = 2.0
INSTALL_HINT = 'pip install -e ".[eval]"'


# ----------------------------------------------------------------------------- the local task
def _candidate(line: str) -> bool:
    """A line worth predicting: prose of ``MIN_CHARS..MAX_CHARS`` characters, four words or more, mostly letters
    (no heading underlines, tables of symbols or code-like lines)."""
    text = line.strip()
    if not MIN_CHARS <= len(text) <= MAX_CHARS or len(text.split()) < 4:
        return False
    return sum(c.isalpha() for c in text) >= 0.6 * len(text)


def _items_of(doc: int, text: str) -> list[dict[str, Any]]:
    """Every (context, answer) position of one document: the answer is a candidate line right after a
    non-empty line; the context runs from the ``CONTEXT_LINES``-th non-empty line before it (blank lines kept)."""
    lines = text.split("\n")
    found = []
    filled: list[int] = []  # indices of the non-empty lines before i
    for i, line in enumerate(lines):
        if filled and filled[-1] == i - 1 and len(filled) >= CONTEXT_LINES and _candidate(line):
            context = "\n".join(lines[filled[-CONTEXT_LINES] : i]) + "\n"
            if len(context) <= MAX_CONTEXT_CHARS:
                found.append({"doc": doc, "line": i, "context": context, "answer": line.rstrip()})
        if line.strip():
            filled.append(i)
    return found


def _too_long(tokenizer: Any, item: dict[str, Any]) -> bool:
    limit = getattr(tokenizer, "model_max_length", None)
    if not isinstance(limit, int) or limit >= 1_000_000:  # transformers' "no limit" sentinel
        return False
    longest = max(item["choices"], key=len)
    return len(tokenizer(item["context"] + longest, add_special_tokens=True)["input_ids"]) > limit


def build_local_task(
    out_dir: str | Path,
    tokenizer: Any = None,
    n: int = 200,
    choices: int = 4,
    seed: int = 0,
    corpus: str = "stdlib",
    split: str = "eval",
) -> Path:
    """Write the offline multiple-choice task ``ffprune_nextline`` into ``out_dir``; return its YAML's path.

    ``out_dir`` receives ``ffprune_nextline.jsonl`` (one item a line: ``context``, ``choices``, ``label``,
    plus the source document and line) and ``ffprune_nextline.yaml`` (``output_type: multiple_choice``,
    ``dataset_path: json`` on the absolute path of the jsonl, metrics ``acc`` and ``acc_norm``). Pass
    ``out_dir`` as ``include_path`` to :func:`run_tasks` or ``lm-eval --include_path``. Files whose content
    would not change are left untouched (so ``datasets``' cache of them stays valid).

    Items: every position of a document where a prose line (:data:`MIN_CHARS` to :data:`MAX_CHARS`
    characters, mostly letters) directly follows a non-empty line; the context is the preceding
    :data:`CONTEXT_LINES` non-empty lines (blank lines between them kept). Positions are taken round-robin
    over the documents in a seeded order (the first items, those ``limit`` keeps, span many documents);
    the ``choices - 1`` distractors are distinct candidate lines of *other* documents, none equal to a line
    of the item's own document, re-indented like the answer and, when enough exist, within a factor
    :data:`LENGTH_FACTOR` of its length. The answer's position among the choices is seeded too. The same
    arguments give byte-identical files on every machine with the same Python version (``stdlib``).

    Args:
        out_dir: folder to write (created if missing).
        tokenizer: optional; items whose context plus longest choice exceed its ``model_max_length`` tokens
            are skipped (with the default line limits no item of the bundled tokenizer is).
        n: number of items.
        choices: options per item (``>= 2``); chance accuracy is ``1 / choices``.
        seed: seed of the item selection, distractors and answer positions.
        corpus: a corpus name or path, as for :func:`ffenv.lm.data.load_corpus`.
        split: ``train``, ``reward`` or ``eval``.

    Raises:
        FFPruneError: bad arguments, a split with fewer than ``n`` usable positions, an unwritable ``out_dir``.
    """
    n, choices, seed = _check_task_arguments(n, choices, seed, split)
    docs = [t or "" for t in load_corpus(corpus)[split]["text"]]
    items, available = _select_items(docs, n, choices, random.Random(seed), tokenizer)
    if len(items) < n:
        raise FFPruneError(f"n={n} exceeds the {len(items)} items the {split!r} split of corpus {corpus!r} offers "
                           f"({available} positions); use n <= {len(items)} or another split")
    out = Path(out_dir).expanduser().resolve()
    data_path, yaml_path = out / f"{LOCAL_TASK}.jsonl", out / f"{LOCAL_TASK}.yaml"
    meta = {"version": float(TASK_FORMAT), "corpus": corpus, "split": split, "n": n, "choices": choices, "seed": seed}
    _write_if_changed(data_path, "".join(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n" for item in items))
    _write_if_changed(yaml_path, _task_yaml(data_path, meta))
    return yaml_path


def _check_task_arguments(n: Any, choices: Any, seed: Any, split: Any) -> tuple[int, int, int]:
    """``(n, choices, seed)`` as ints, or a one-line :class:`FFPruneError` naming the bad argument."""
    n = positive_int("n", n)
    choices = positive_int("choices", choices)
    if choices < 2:
        raise FFPruneError(f"choices must be an integer >= 2, got {choices!r}")
    seed = non_negative_int("seed", seed)
    check_split(split)
    return n, choices, seed


class _Distractors:
    """The candidate lines of a split's documents, from which an item's wrong choices are drawn."""

    def __init__(self, docs: list[str]) -> None:
        self.first_doc: dict[str, int] = {}  # candidate line (stripped) -> first document holding it
        self.doc_lines = [{line.strip() for line in text.split("\n")} for text in docs]
        for d, text in enumerate(docs):
            for line in text.split("\n"):
                if _candidate(line):
                    self.first_doc.setdefault(line.strip(), d)
        self.lines = sorted(self.first_doc)

    def source(self, doc: int, answer: str, count: int) -> list[str]:
        """Lines an item of document ``doc`` with this (stripped) ``answer`` may draw ``count`` distractors from:
        lines of other documents that its own document does not hold, those within :data:`LENGTH_FACTOR` of the
        answer's length when there are ``count`` of them."""
        others = [s for s in self.lines if self.first_doc[s] != doc and s != answer and s not in self.doc_lines[doc]]
        close = [s for s in others if len(answer) / LENGTH_FACTOR <= len(s) <= len(answer) * LENGTH_FACTOR]
        return close if len(close) >= count else others


def _select_items(docs: list[str], n: int, choices: int, rng: random.Random,
                  tokenizer: Any) -> tuple[list[dict[str, Any]], int]:
    """Up to ``n`` items taken round-robin over the documents in a seeded order, and the number of positions
    the split offers. An item is skipped when too few distractors exist or ``tokenizer`` finds it too long."""
    per_doc = [_items_of(d, text) for d, text in enumerate(docs)]
    distractors = _Distractors(docs)
    order = [d for d, found in enumerate(per_doc) if found]
    rng.shuffle(order)
    queues = {d: rng.sample(per_doc[d], len(per_doc[d])) for d in order}
    available = sum(len(q) for q in queues.values())
    items: list[dict[str, Any]] = []
    while len(items) < n and any(queues.values()):
        for d in order:
            if not queues[d] or len(items) >= n:
                continue
            record = _multiple_choice(queues[d].pop(), d, len(items), choices, distractors, rng)
            if record is None or (tokenizer is not None and _too_long(tokenizer, record)):
                continue
            items.append(record)
    return items, available


def _multiple_choice(item: dict[str, Any], doc: int, index: int, choices: int, distractors: _Distractors,
                     rng: random.Random) -> dict[str, Any] | None:
    """The task record of one position of document ``doc``: its answer among ``choices - 1`` distractors
    re-indented like it, at a seeded position; ``None`` when too few distractors exist."""
    answer = item["answer"].strip()
    indent = item["answer"][: len(item["answer"]) - len(item["answer"].lstrip())]
    source = distractors.source(doc, answer, choices - 1)
    if len(source) < choices - 1:
        return None
    options = [item["answer"], *(indent + s for s in rng.sample(source, choices - 1))]
    rng.shuffle(options)
    return {"id": index, "doc": doc, "line": item["line"], "context": item["context"], "choices": options,
            "label": options.index(item["answer"])}


def _task_yaml(data_path: Path, meta: dict[str, Any]) -> str:
    """The lm-eval task YAML of :data:`LOCAL_TASK` reading ``data_path``, with ``meta`` as its metadata."""
    return "\n".join([
        "# written by ffprune.agents.tools.zeroshot.build_local_task("
        f"{', '.join(f'{k}={v!r}' for k, v in meta.items() if k != 'version')})",
        f"task: {LOCAL_TASK}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(data_path))}",
        "output_type: multiple_choice",
        "test_split: test",
        "doc_to_text: context",  # column names: lm-eval reads the fields as they are (a Jinja template
        "doc_to_choice: choices",  # would drop the context's final newline)
        "doc_to_target: label",
        'target_delimiter: ""',  # the context ends with a newline; a choice is the whole next line
        "metric_list:",
        *(f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true" for m in ("acc", "acc_norm")),
        "metadata:",
        *(f"  {k}: {json.dumps(v)}" for k, v in meta.items()),
        "",
    ])


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` atomically unless ``path`` already holds it (``datasets`` caches a data file by its mtime)."""
    if not (path.is_file() and path.read_text(encoding="utf-8") == text):
        atomic_write_text(path, text)


def local_task_dir() -> Path:
    """Where :func:`run_tasks` builds the local tasks it is asked for: ``<cache_dir>/lm_eval_tasks``."""
    return cache_dir() / "lm_eval_tasks"


# ----------------------------------------------------------------------------- running lm-eval
def _import_lm_eval() -> tuple[Any, Any, Any]:
    """``(lm_eval, HFLM, TaskManager)``, or :class:`FFPruneError` naming the install command."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise FFPruneError(f"zero-shot evaluation needs lm-evaluation-harness, which cannot be imported ({err}); "
                           f"install it with: {INSTALL_HINT}") from err
    return lm_eval, HFLM, TaskManager


@functools.lru_cache(maxsize=4)
def _task_manager(task_manager_class: Any, paths: tuple[str, ...], include_defaults: bool) -> Any:
    """A ``TaskManager`` per set of task folders, kept for the process: indexing lm-eval's own ~15,000 task
    names takes seconds, and every ``load`` builds fresh ``Task`` objects, so one index serves every call."""
    return task_manager_class(include_path=list(paths) or None, include_defaults=include_defaults)


def _task_names(tasks: Any) -> list[str]:
    if isinstance(tasks, str):
        tasks = tasks.split(",")
    if not isinstance(tasks, (list, tuple)) or not all(isinstance(t, str) for t in tasks):
        raise FFPruneError(f"tasks must be a list of lm-eval task names, got {tasks!r}")
    names = list(dict.fromkeys(t.strip() for t in tasks if t.strip()))
    if not names:
        raise FFPruneError(f"tasks must name at least one lm-eval task (e.g. {LOCAL_TASK!r}), got {tasks!r}")
    return names


def _check_known(names: list[str], known: list[str], include_path: Path | None) -> None:
    """One-line :class:`FFPruneError` for names lm-eval's index does not hold (and that are not YAML files)."""
    registered = set(known)
    unknown = [t for t in names if t not in registered and not (t.endswith((".yaml", ".yml")) and Path(t).is_file())]
    if not unknown:
        return
    hints = [m for t in unknown for m in difflib.get_close_matches(t, known, n=1, cutoff=0.75)]
    listing = "lm-eval ls tasks" + (f" --include_path {include_path}" if include_path else "")
    raise FFPruneError(
        f"unknown lm-eval task{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
        + (f" (did you mean {', '.join(map(repr, dict.fromkeys(hints)))}?)" if hints else "")
        + f"; list the available names with `{listing}`, or use {LOCAL_TASK!r} (built offline from the stdlib corpus)"
    )


def _data_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "a task's data could not be fetched" (offline, not cached, no such dataset)."""
    kinds: list[type[BaseException]] = [ConnectionError, FileNotFoundError]
    try:
        from datasets.exceptions import DatasetNotFoundError

        kinds.append(DatasetNotFoundError)
    except ImportError:
        pass
    try:
        from huggingface_hub.errors import OfflineModeIsEnabled

        kinds.append(OfflineModeIsEnabled)
    except ImportError:
        pass
    return tuple(kinds)


def _number(value: Any) -> float | None:
    """A metric value as a JSON-able float; ``None`` for lm-eval's ``"N/A"`` and for NaN / inf."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def _compact(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per task (and group) of lm-eval's ``results``: its metrics (``acc``, ``acc_stderr``, ...; a filter other
    than ``none`` is kept as ``metric[filter]``), ``n`` samples evaluated and the few-shot count."""
    out: dict[str, dict[str, Any]] = {}
    samples = results.get("n-samples", {})
    shots = results.get("n-shot", {})
    for name, entry in results.get("results", {}).items():
        metrics: dict[str, Any] = {}
        for key, value in sorted(entry.items()):
            if "," not in key:
                continue  # "alias", "name", "sample_len"
            metric, filt = key.split(",", 1)
            metrics[metric if filt == "none" else f"{metric}[{filt}]"] = _number(value)
        count = samples.get(name, {}).get("effective")
        metrics["n"] = int(count) if count is not None else None
        if name in shots:
            metrics["num_fewshot"] = int(shots[name])
        if name in results.get("group_subtasks", {}):
            metrics["subtasks"] = list(results["group_subtasks"][name])
        out[name] = metrics
    return out


def run_tasks(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: list[str],
    *,
    limit: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    num_fewshot: int = 0,
    include_path: str | Path | None = None,
) -> dict[str, Any]:
    """Run lm-evaluation-harness tasks on a causal LM in memory; return a compact JSON-able summary.

    The model instance goes to ``lm_eval.models.huggingface.HFLM(pretrained=model, tokenizer=tokenizer, ...)``
    on its own device and dtype (a physically pruned model works as is), then to ``lm_eval.simple_evaluate``
    with a ``TaskManager`` that also indexes ``include_path``. :data:`LOCAL_TASKS` (``ffprune_nextline``) are
    built with :func:`build_local_task`'s defaults (seed 0: the task is the same for every ``seed`` here)
    under :func:`local_task_dir` when asked for. HFLM calls ``model.eval()`` and ``model.tie_weights()``.

    Args:
        model: a Hugging Face causal LM (``PreTrainedModel``), e.g. from :func:`ffenv.lm.models.load_model`.
        tokenizer: its tokenizer.
        tasks: lm-eval task / group names (or paths of task YAML files); a comma-separated string works too.
        limit: evaluate only the first ``limit`` documents of each task (``None``: all).
        batch_size: sequences per forward pass.
        seed: lm-eval's ``random_seed``, ``numpy_random_seed``, ``torch_random_seed`` and
            ``fewshot_random_seed``; the caller's global RNG states are restored afterwards.
        num_fewshot: examples in each prompt (``0``: zero-shot). Tasks whose YAML fixes ``num_fewshot: 0``
            keep it (lm-eval's rule).
        include_path: a folder of extra task YAMLs (task folders are indexed once per process: a YAML added
            later under a new task name needs a new process).

    Returns:
        ``{"tasks": {name: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr" (those the task reports; ``None``
        when lm-eval gives no value), "n", "num_fewshot"}}, "lm_eval_version", "limit", "num_fewshot",
        "batch_size", "seeds": {...}, "include_path", "seconds"}``.

    Raises:
        FFPruneError: lm-eval not installed, an unknown task name, a task whose data cannot be loaded (offline
            and not cached), or a bad argument.
    """
    names = _task_names(tasks)
    limit = None if limit is None else positive_int("limit", limit)
    batch_size = positive_int("batch_size", batch_size)
    seed = non_negative_int("seed", seed)
    num_fewshot = non_negative_int("num_fewshot", num_fewshot)
    extra = None
    if include_path is not None:
        extra = Path(include_path).expanduser().resolve()
        if not extra.is_dir():
            raise FFPruneError(f"include_path={str(include_path)!r} is not a folder; give the folder of the task YAMLs")
    lm_eval, HFLM, TaskManager = _import_lm_eval()

    paths: list[str] = []
    local = [t for t in names if t in LOCAL_TASKS]
    if local:
        build_local_task(local_task_dir())
        paths.append(str(local_task_dir()))
    if extra is not None:
        paths.append(str(extra))
    # lm-eval's own task folders take seconds to index: skip them when only local tasks are asked for
    manager = _task_manager(TaskManager, tuple(paths), len(local) < len(names) or extra is not None)
    _check_known(names, manager.all_tasks, extra)

    seeds = {"random_seed": seed, "numpy_random_seed": seed, "torch_random_seed": seed, "fewshot_random_seed": seed}
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None)
    start = time.perf_counter()
    try:
        device = next(model.parameters()).device
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(device))
        raw = lm_eval.simple_evaluate(
            model=lm, tasks=names, num_fewshot=num_fewshot, batch_size=batch_size, limit=limit,
            task_manager=manager, log_samples=False, **seeds)
    except _data_errors() as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise FFPruneError(
            f"lm-eval could not load the data of {names} ({type(err).__name__}: {message}); hub datasets are "
            f"downloaded on first use: run once with network access (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE unset), "
            f"or use {LOCAL_TASK!r}") from err
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])
    seconds = time.perf_counter() - start
    if raw is None:  # lm-eval returns None on ranks other than 0 (distributed runs)
        raise FFPruneError("lm-eval returned no results (not the main process of a distributed run)")
    return {
        "tasks": _compact(raw),
        "lm_eval_version": getattr(lm_eval, "__version__", None),
        "limit": limit,
        "num_fewshot": num_fewshot,
        "batch_size": batch_size,
        "seeds": seeds,
        "include_path": str(extra) if extra is not None else None,
        "seconds": round(seconds, 2),
    }
