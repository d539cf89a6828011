"""The one results reader: committed results read with today's names, old and new files agree, migration is idempotent."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from ffenv.errors import FFPruneError
from ffenv.io import atomic_write_json, beside, read_json
from ffprune.agents.experiments.bench import cell_path
from ffprune.agents.results import (
    FIELD_RENAMES,
    FOLDER_KIND,
    RESULT_FORMAT,
    RESULT_KEYS,
    RESULT_KIND,
    TUNE_KIND,
    compact_results,
    migrate_result,
    pack_history,
    read_result,
    result_env,
    result_kind,
    seed_files,
    unpack_history,
    write_result,
)

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
SMALL = {"reward_windows": 2, "calib_samples": 4, "eval_samples": 2, "seq_len": 64}


def committed_results() -> list[Path]:
    """Every committed search result, bench cell and cell folder manifest, told apart by what each file says it is
    (:func:`result_kind`: its ``kind``, or for a file written before kinds were recorded, its fields) — the analyses,
    caches, learning curves and tune records are none of those."""
    files = sorted([*RESULTS.rglob("*.json"), *RESULTS.rglob("*.json.gz")])
    return [p for p in files if isinstance(raw := read_json(p), dict) and result_kind(raw) in (RESULT_KIND, FOLDER_KIND)]


def test_every_committed_file_says_what_it_is():
    """Cells and manifests by their kind; the name never decides (a result named config.json would be read as one)."""
    kinds: dict[str | None, set[str]] = {}
    for path in sorted([*RESULTS.rglob("*.json"), *RESULTS.rglob("*.json.gz")]):
        raw = read_json(path)
        kind = result_kind(raw) if isinstance(raw, dict) else None
        name = "curve" if "curves" in path.parts else "seed" if path.name.startswith("seed") else path.name
        kinds.setdefault(kind, set()).add(name)
    assert kinds[RESULT_KIND] == {"seed"} and kinds[FOLDER_KIND] == {"config.json"}
    assert kinds[TUNE_KIND] == {"config.json"}  # a tune folder's settings
    assert not {"seed", "config.json"} & kinds[None] and "curve" in kinds[None]  # a study's curve is no result


def test_a_result_is_written_with_its_kind_and_format_and_read_only_if_known(tmp_path):
    path = tmp_path / "r.json.gz"
    write_result(path, {"kind": "stale", "best": {}, "history": [], "env_id": "x"})
    raw = read_json(path)
    assert list(raw)[:2] == ["kind", "format"] and (raw["kind"], raw["format"]) == (RESULT_KIND, RESULT_FORMAT)
    assert read_result(path)["env_id"] == "x"
    write_json = tmp_path / "future.json"
    write_json.write_text(json.dumps({**raw, "format": RESULT_FORMAT + 1}))
    with pytest.raises(FFPruneError, match="newer than this ffprune reads"):
        read_result(write_json)
    (tmp_path / "suite.json").write_text(json.dumps({"suite": "core", "rows": []}))
    with pytest.raises(FFPruneError, match="is not a result"):
        read_result(tmp_path / "suite.json")
    (tmp_path / "odd.json").write_text(json.dumps({"kind": "ffprune.something-else"}))
    with pytest.raises(FFPruneError, match="is a ffprune.something-else"):
        read_result(tmp_path / "odd.json")
    assert RESULT_KEYS[:3] == ("kind", "format", "complete") and "best" in RESULT_KEYS and "variant" not in RESULT_KEYS


def dotted(d: dict, path: str) -> bool:
    *parent, key = path.split(".")
    for p in parent:
        d = d.get(p)
        if not isinstance(d, dict):
            return False
    return key in d


def test_every_committed_result_reads_with_the_new_names():
    paths = committed_results()
    assert len(paths) > 250  # the core suite's cells and configs and the FastForward budget study
    old_seen = set()
    for path in paths:
        raw = read_json(path)
        old_seen |= {old for old in FIELD_RENAMES if dotted(raw, old)}
        result = read_result(path)
        assert not [old for old in FIELD_RENAMES if dotted(result, old)], path
        assert result["weights_fingerprint"].startswith(("sha256:", "gguf:")), path  # files / a converted GGUF
        if path.name == "config.json":
            assert "best" not in result and "unit_names" not in result
            continue
        best = result["best"]
        assert {"reward_ppl", "dense_reward_ppl", "eval_ppl", "dense_eval_ppl"} <= set(best), path
        assert result["env_kwargs"]["reward_windows"] > 0
        assert len(result["unit_names"]) == len(best["layer_sparsity"]) == len(best["action"])
        assert migrate_result(result) == result, path  # idempotent
    assert old_seen == set(FIELD_RENAMES)  # every rename is exercised by a committed file


def test_migration_maps_every_old_name_and_keeps_values(tmp_path):
    old = {"weights": "sha256:ab", "env_id": "FFPrune-Llama-v0",
           "env_kwargs": {"mode": "unstructured", "reward_samples": 8, "workers": 2},
           "best": {"calib_ppl": 90.0, "dense_calib_ppl": 80.0, "eval_ppl_calib": 85.0, "eval_ppl": 91.0,
                    "layer_sparsity": [0.5, 0.6, 0.7]}}
    frozen = json.loads(json.dumps(old))
    new = migrate_result(old)
    assert old == frozen  # the argument is not modified
    assert new["weights_fingerprint"] == "sha256:ab" and "weights" not in new
    assert new["best"] == {"reward_ppl": 90.0, "dense_reward_ppl": 80.0, "eval_ppl_after_calib": 85.0, "eval_ppl": 91.0,
                           "layer_sparsity": [0.5, 0.6, 0.7]}
    assert new["env_kwargs"] == {"mode": "unstructured", "reward_windows": 8, "workers": 2}
    assert new["unit_names"] == ["block.0", "block.1", "block.2"]
    assert migrate_result(new) == new
    path = tmp_path / "r.json"
    path.write_text(json.dumps(old))
    assert read_result(path) == new == read_result(old)
    recorded = {**new, "unit_names": ["x", "y", "z"]}  # names a result recorded are kept
    assert migrate_result(recorded)["unit_names"] == ["x", "y", "z"]


def test_migration_refuses_conflicts_and_bad_files(tmp_path):
    with pytest.raises(FFPruneError, match="weights_fingerprint"):
        migrate_result({"weights": "sha256:a", "weights_fingerprint": "sha256:b"})
    assert migrate_result({"weights": "sha256:a", "weights_fingerprint": "sha256:a"}) == {"weights_fingerprint": "sha256:a"}
    with pytest.raises(FFPruneError, match="does not exist"):
        read_result(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(FFPruneError, match="not valid JSON"):
        read_result(tmp_path / "bad.json")
    with pytest.raises(FFPruneError, match="JSON object"):
        migrate_result([1, 2])


@pytest.mark.parametrize("env_id", ["FFPrune-OPT-v0", "FFPrune-Mistral-Unstructured-v0"])
def test_derived_unit_names_are_the_envs(env_id):
    """The names given to old results are the ones the env itself reports (in action order)."""
    env = gym.make(env_id, **SMALL, workers=0)
    try:
        base = env.unwrapped
        old = {"env_id": env_id, "env_kwargs": base.config.as_kwargs(),
               "best": {"layer_sparsity": [0.0] * base.n_units}}
        assert migrate_result(old)["unit_names"] == base.unit_names
    finally:
        env.close()


def test_result_env_leaves_the_workers_out():
    result = {"env_id": "FFPrune-Llama-v0", "env_kwargs": {**SMALL, "reward_samples": 2, "workers": 3,
                                                           "ray_address": "auto"}}
    del result["env_kwargs"]["reward_windows"]
    env = result_env(result)  # an old result: the renamed window count is accepted, no Ray is started
    try:
        assert env.unwrapped.config.workers == 0 and env.unwrapped.config.ray_address is None
        assert env.unwrapped.config.reward_windows == 2
    finally:
        env.close()


def test_cells_are_stored_compressed_and_older_text_cells_are_read_resumed_and_compacted(tmp_path):
    """New cells are ``seed<k>.json.gz`` (the same data gives the same bytes); a folder of text cells keeps its files
    (a bench resumes it) until ``compact_results`` rewrites them, each checked to read back equal (NaN included)."""
    cell = {"best": {"eval_ppl": float("nan"), "action": [0.25, -1.0]}, "history": [{"ppl": 3.5}], "seed": 1}
    new = cell_path(tmp_path / "new", "random", 1)
    assert new.name == "seed1.json.gz" and beside(new, ".ckpt").name == "seed1.ckpt"
    atomic_write_json(new, cell)
    first = new.read_bytes()
    atomic_write_json(new, cell)
    assert new.read_bytes() == first and first[:2] == b"\x1f\x8b"
    assert json.dumps(read_json(new)) == json.dumps(cell)
    old = tmp_path / "old" / "cells" / "random"
    for seed in (0, 2):
        atomic_write_json(old / f"seed{seed}.json", {**cell, "seed": seed})
    assert cell_path(tmp_path / "old", "random", 2).name == "seed2.json"  # an older folder resumes as it is
    assert [s for s, _p in seed_files(old)] == [0, 2]
    files, before, after = compact_results(tmp_path / "old")
    assert files == 2 and after < before and sorted(p.name for p in old.iterdir()) == ["seed0.json.gz", "seed2.json.gz"]
    assert json.dumps(read_json(cell_path(tmp_path / "old", "random", 2))) == json.dumps({**cell, "seed": 2})
    new.write_bytes(first[: len(first) // 2])
    with pytest.raises(FFPruneError, match=r"seed1.json.gz' is not a complete gzip file .*delete it"):
        read_result(new)


def test_a_history_is_stored_by_columns_and_read_back_equal(tmp_path):
    """Format 3: the history by columns, an action column in float32's shortest decimals, rows without a key kept
    without it, NaN kept; rows whose keys come in other orders stay rows; a format-2 folder is repacked by
    ``compact_results`` (checked equal through the one reader) and a second call rewrites nothing."""
    act = np.random.default_rng(0).uniform(-1, 1, (3, 4)).astype(np.float32).astype(np.float64).tolist()
    rows = [{"episode": 1, "reward": 0.1234567890123, "best_ppl": float("nan"), "target": 0.3},
            {"episode": 2, "reward": 0.2, "best_ppl": 40.1, "target": 0.3, "action": act[0]},
            {"episode": 3, "reward": 0.25, "best_ppl": 39.0, "target": 0.5, "action": act[1]}]
    packed = pack_history(rows)
    assert packed["rows"] == 3 and packed["absent"] == {"action": [0]} and packed["float32"] == ["action"]
    assert len(json.dumps(packed["columns"]["action"])) < 0.6 * len(json.dumps(act[:2]))  # 8 digits, not 17
    assert json.dumps(unpack_history(json.loads(json.dumps(packed)))) == json.dumps(rows)
    assert "float32" not in pack_history([{"r": 0.1}, {"r": 0.2}])  # float64 values keep their text
    reordered = [{"a": 1, "b": 2}, {"b": 3, "a": 4}]
    assert pack_history(reordered) == reordered and unpack_history(reordered) == reordered
    with pytest.raises(FFPruneError, match="history: not a packed history"):
        unpack_history({"rows": 4, "columns": {"episode": [1, 2]}})
    result = {"env_id": "FFPrune-Llama-v0", "env_kwargs": {}, "best": {"action": act[2]}, "history": rows}
    old = tmp_path / "cells" / "random" / "seed0.json.gz"
    atomic_write_json(old, {"kind": RESULT_KIND, "format": 2, **result})  # what format 2 wrote
    before = read_result(old)
    files, size_before, size_after = compact_results(tmp_path)
    assert files == 1 and read_json(old)["format"] == RESULT_FORMAT == 3
    assert isinstance(read_json(old)["history"], dict)
    assert json.dumps({**read_result(old), "format": 2}) == json.dumps(before)
    assert compact_results(tmp_path) == (0, 0, 0)
    write_result(tmp_path / "r.json", result)
    assert json.dumps(read_result(tmp_path / "r.json")["history"]) == json.dumps(rows)


def test_plots_are_saved_as_palette_pngs_atomically(tmp_path):
    """Committed plots are 256-colour PNGs (a third of a true-colour file); an unwritable path is one line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from ffenv.io import atomic_save_figure

    fig, ax = plt.subplots()
    for k in range(8):
        ax.plot(np.arange(20) * k, label=str(k))
    ax.legend()
    path = atomic_save_figure(fig, tmp_path / "plot.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "P" and image.size[0] > 300
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]  # no temporary file left
    (tmp_path / "file").write_text("x")
    with pytest.raises(FFPruneError, match="cannot write"):
        atomic_save_figure(fig, tmp_path / "file" / "plot.png")
    plt.close(fig)
