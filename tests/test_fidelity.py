"""``ffprune fidelity``: candidate rewards ranked against the held-out ppl, resumable, refusing other settings."""

from __future__ import annotations

import json
import math

import gymnasium as gym
import pytest
import torch

import ffenv  # noqa: F401  (registers the ids)
from ffenv.errors import FFPruneError
from ffenv.lm.data import evaluation_windows
from ffenv.lm.models import load_model
from ffenv.lm.perplexity import nll_sum, perplexity, window_nll
from ffprune.agents.cli import main
from ffprune.agents.experiments.fidelity import full_split_picks, run_fidelity, run_full_split

KW = {"seq_len": 64, "calib_samples": 4, "reward_windows": 4, "eval_samples": 4}
SMALL = {"allocations": 12, "lengths": (32, 64), "windows": (2, 4), "max_tokens": 128}


def test_window_nll_sums_to_nll_sum_per_window():
    model, tok = load_model("tiny-llama")
    tokens = evaluation_windows(tok, "stdlib", "reward", seq_len=64)[:5]
    per_window = window_nll(model, tokens, batch_size=2)
    total, count = nll_sum(model, tokens)
    assert per_window.shape == (5,) and float(per_window.sum()) == pytest.approx(total, rel=1e-5)
    assert math.exp(float(per_window[:3].sum()) / (3 * 63)) == pytest.approx(perplexity(model, tokens[:3]), rel=1e-5)
    with pytest.raises(FFPruneError, match="tokens must have shape"):
        window_nll(model, tokens[0])


def test_fidelity_study_ranks_candidates_and_resumes(tmp_path):
    out = tmp_path / "fid"
    summary = run_fidelity("FFPrune-Llama-v0", out=out, progress=False, **SMALL, env_kwargs=KW)
    rows = json.loads((out / "rows.json").read_text())["rows"]
    assert len(rows) == 12 and rows[0]["kind"] == "uniform"
    assert {"owl", "dlp", "alphapruning", "flap", "atp"} <= {r["kind"] for r in rows}
    # candidates within max_tokens only, cheapest first; 64 x 2 and 32 x 4 both cost 128 tokens
    assert [(c["length"], c["windows"]) for c in summary["candidates"]] == [(32, 2), (32, 4), (64, 2)]
    assert all(-1 <= c["rho"] <= 1 for c in summary["candidates"])
    # the uniform row's held-out ppl is what the env's evaluate measures on the same windows
    env = gym.make("FFPrune-Llama-v0", **KW)
    assert rows[0]["held_out_ppl"] == pytest.approx(env.unwrapped.evaluate(torch.zeros(env.unwrapped.n_units).numpy())["ppl"],
                                                    rel=1e-5)
    rec = summary["recommended"]
    assert rec is None or rec["rho"] >= 0.9
    assert "| length | windows |" in (out / "fidelity.md").read_text() and (out / "fidelity.png").is_file()
    # resume: nothing is measured again; other settings are refused before any work
    again = run_fidelity("FFPrune-Llama-v0", out=out, progress=False, **SMALL, env_kwargs=KW)
    assert again["candidates"] == summary["candidates"]
    with pytest.raises(FFPruneError, match="other settings"):
        run_fidelity("FFPrune-Llama-v0", out=out, progress=False, **{**SMALL, "allocations": 13}, env_kwargs=KW)


def test_full_split_check_measures_spread_allocations_and_resumes(tmp_path, monkeypatch):
    """The held-out subset vs the whole test split: allocations spread over the study's held-out range, each measured
    on every test window (here the split is cut to 24 windows to keep the test short), resumable."""
    from ffenv.envs.backend import Backend

    out = tmp_path / "fid"
    with pytest.raises(FFPruneError, match="run `ffprune fidelity` first"):
        run_full_split(out, 5, progress=False)
    run_fidelity("FFPrune-Llama-v0", out=out, progress=False, **SMALL, env_kwargs=KW)
    rows = json.loads((out / "rows.json").read_text())["rows"]
    picks = full_split_picks(rows, 5)
    held = sorted(r["held_out_ppl"] for r in rows)
    assert len(picks) == 5 and picks == sorted(set(picks)) and full_split_picks(rows, 50) == list(range(len(rows)))
    assert {rows[i]["held_out_ppl"] for i in picks} >= {held[0], held[-1]}  # both ends of the range
    original = Backend.split_tokens
    monkeypatch.setattr(Backend, "split_tokens", lambda self, split, n: original(self, split, 24 if n is None else n))
    summary = run_full_split(out, 5, progress=False)
    assert summary["allocations"] == 5 and summary["windows"] == [24, 64] and -1 <= summary["rho"] <= 1
    env = gym.make("FFPrune-Llama-v0", **KW)
    u = env.unwrapped
    first = summary["rows"][0]
    expected = u.evaluate(rows[first["index"]]["action"], split="eval", n_windows=24)["ppl"]
    assert first["full_ppl"] == pytest.approx(expected, rel=1e-5) and first["subset_ppl"] == rows[first["index"]]["held_out_ppl"]
    assert "Spearman ρ (subset vs full)" in (out / "full_split.md").read_text()
    monkeypatch.setattr(Backend, "split_tokens", lambda *a: pytest.fail("a finished check measured again"))
    assert run_full_split(out, 5, progress=False)["rows"] == summary["rows"]
    with pytest.raises(FFPruneError, match="other allocations"):
        run_full_split(out, 6, progress=False)


@pytest.mark.parametrize("kwargs, match", [({"allocations": 5}, "allocations must be >= 10"),
                                           ({"max_tokens": 16}, "admits no candidate"),
                                           ({"lengths": (1,)}, "lengths must be"),
                                           ({"goal": 1.5}, "goal must be")])
def test_fidelity_bad_input_is_one_line(tmp_path, kwargs, match):
    with pytest.raises(FFPruneError, match=match):
        run_fidelity("FFPrune-Llama-v0", out=tmp_path / "f", progress=False, **{**SMALL, **kwargs}, env_kwargs=KW)


def test_fidelity_cli_bad_lengths(capsys, tmp_path):
    assert main(["fidelity", "--env", "FFPrune-Llama-v0", "--out", str(tmp_path), "--lengths", "a,b"]) == 2
    assert "--lengths and --windows" in capsys.readouterr().err
