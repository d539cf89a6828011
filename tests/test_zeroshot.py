"""Zero-shot evaluation with lm-evaluation-harness (ffprune.agents.tools.zeroshot): the offline task and the harness wrapper.

The harness tests need lm-eval and its Hugging Face backend (``pip install -e ".[eval]"``) and skip without
them; the task construction and argument checks run everywhere.
"""

from __future__ import annotations

import json
import random
import sys

import pytest
import torch

from ffenv.errors import FFPruneError
from ffenv.lm.data import load_corpus
from ffprune.agents.tools.zeroshot import INSTALL_HINT, LOCAL_TASK, build_local_task, run_tasks

N = 40  # items of the tasks built here
CHOICES = 4


def _rows(yaml_path) -> list[dict]:
    return [json.loads(line) for line in yaml_path.with_suffix(".jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("nextline")
    build_local_task(out, n=N, choices=CHOICES, seed=0)
    return out


@pytest.fixture(scope="module")
def tiny_llama():
    from ffenv.lm.models import load_model

    return load_model("tiny-llama")


# ----------------------------------------------------------------------------- the local task
def test_local_task_is_deterministic(task_dir, tmp_path):
    again = build_local_task(tmp_path / "again", n=N, choices=CHOICES, seed=0)
    first = task_dir / f"{LOCAL_TASK}.yaml"
    assert again.with_suffix(".jsonl").read_bytes() == first.with_suffix(".jsonl").read_bytes()
    # the YAML differs only by the absolute path of its data file
    assert again.read_text().replace(str(again.parent), "DIR") == first.read_text().replace(str(task_dir), "DIR")
    other = build_local_task(tmp_path / "seed1", n=N, choices=CHOICES, seed=1)
    assert _rows(other) != _rows(first)
    # items are taken in a fixed order, so a larger n extends a smaller one (limit=k == n=k)
    longer = build_local_task(tmp_path / "longer", n=N + 20, choices=CHOICES, seed=0)
    assert _rows(longer)[:N] == _rows(first)
    # rebuilding with the same arguments leaves the files untouched (datasets' cache keys on mtime)
    stamp = first.with_suffix(".jsonl").stat().st_mtime_ns
    build_local_task(task_dir, n=N, choices=CHOICES, seed=0)
    assert first.with_suffix(".jsonl").stat().st_mtime_ns == stamp


def test_local_task_items_are_well_formed(task_dir):
    yaml_path = task_dir / f"{LOCAL_TASK}.yaml"
    text = yaml_path.read_text()
    for line in (f"task: {LOCAL_TASK}", "output_type: multiple_choice", "dataset_path: json", "test_split: test",
                 f'    test: "{yaml_path.with_suffix(".jsonl")}"', "  - metric: acc", "  - metric: acc_norm"):
        assert line in text.splitlines(), line
    rows = _rows(yaml_path)
    assert len(rows) == N and [r["id"] for r in rows] == list(range(N))
    docs = load_corpus("stdlib")["eval"]["text"]
    assert len({r["doc"] for r in rows}) >= 10  # round-robin over the documents
    labels = set()
    for r in rows:
        assert len(r["choices"]) == CHOICES and len(set(r["choices"])) == CHOICES
        labels.add(r["label"])
        lines = docs[r["doc"]].split("\n")
        answer = r["choices"][r["label"]]
        assert answer == lines[r["line"]].rstrip()  # the true next line of the document ...
        assert ("\n".join(lines[: r["line"]]) + "\n").endswith(r["context"])
        assert len(r["context"].strip().splitlines()) >= 3  # ... after a few lines of it
        own = {line.strip() for line in lines}
        for i, choice in enumerate(r["choices"]):
            if i != r["label"]:  # distractors: other documents' lines, indented like the answer
                assert choice.strip() not in own
                assert choice[: len(choice) - len(choice.lstrip())] == answer[: len(answer) - len(answer.lstrip())]
    assert labels == set(range(CHOICES))  # the answer's position varies


def test_local_task_rejects_bad_arguments(tmp_path):
    for kwargs, needle in (({"n": 0}, "n must be"), ({"choices": 1}, "choices must be"), ({"split": "test"}, "split"),
                           ({"seed": -1}, "seed"), ({"n": 100_000}, "use n <=")):
        with pytest.raises(FFPruneError, match=needle):
            build_local_task(tmp_path, **kwargs)


# ----------------------------------------------------------------------------- the harness
def test_arguments_are_checked_before_lm_eval(tiny_llama):
    model, tok = tiny_llama
    for kwargs, needle in (({"limit": 0}, "limit"), ({"batch_size": 0}, "batch_size"), ({"num_fewshot": -1}, "num_fewshot")):
        with pytest.raises(FFPruneError, match=needle):
            run_tasks(model, tok, [LOCAL_TASK], **kwargs)
    with pytest.raises(FFPruneError, match="at least one"):
        run_tasks(model, tok, [])


def test_missing_lm_eval_names_the_fix(tiny_llama, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError
    model, tok = tiny_llama
    with pytest.raises(FFPruneError) as err:
        run_tasks(model, tok, [LOCAL_TASK])
    assert INSTALL_HINT in str(err.value) and "\n" not in str(err.value)


def test_harness_scores_the_bundled_model_above_chance(tiny_llama):
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")  # lm-eval's HFLM imports it (the lm-eval[hf] extra)
    model, tok = tiny_llama
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core machine: oversubscribed threads are several times slower
    before = random.getstate()
    try:
        result = run_tasks(model, tok, [LOCAL_TASK], limit=100, batch_size=8, seed=0)  # built on demand
    finally:
        torch.set_num_threads(threads)
    assert random.getstate() == before  # lm-eval seeds the global RNGs; run_tasks restores them
    json.dumps(result)
    task = result["tasks"][LOCAL_TASK]
    assert task["n"] == 100 and result["limit"] == 100 and result["num_fewshot"] == 0 == task["num_fewshot"]
    assert result["seeds"] == dict.fromkeys(("random_seed", "numpy_random_seed", "torch_random_seed",
                                             "fewshot_random_seed"), 0)
    assert result["lm_eval_version"]
    for metric in ("acc", "acc_norm"):
        assert 0.0 <= task[metric] <= 1.0 and 0.0 < task[f"{metric}_stderr"] < 0.1
        # chance is 1/4. Measured (tiny-llama, n=100, task seeds 0-4): acc 0.42-0.49, acc_norm 0.43-0.48
        # (0.43 / 0.455 on n=200). 0.35 is 2.3 binomial SE (0.043) above what a chance-level model scores.
        assert task[metric] >= 0.35, result


def test_unknown_task_is_one_line_error(tiny_llama, tmp_path):
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    model, tok = tiny_llama
    with pytest.raises(FFPruneError) as err:
        run_tasks(model, tok, [LOCAL_TASK, "hellaswg"])
    message = str(err.value)
    assert "\n" not in message and "'hellaswg'" in message and "lm-eval ls tasks" in message
    assert "did you mean 'hellaswag'" in message
    with pytest.raises(FFPruneError, match="include_path"):
        run_tasks(model, tok, [LOCAL_TASK], include_path=tmp_path / "missing")
