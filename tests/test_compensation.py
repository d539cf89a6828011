"""Post-pruning calibration (ridge compensation): it reduces the pruned modules' output error, is undone exactly."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

import ffenv  # noqa: F401
from ffenv.compensation import input_gram, ridge_compensation, ridge_fold
from ffenv.projector import project_budget

SMALL = {"reward_samples": 2, "calib_samples": 8, "eval_samples": 2}


def _pruned(env_id: str, target: float):
    env = gym.make(env_id, target_sparsity=target, **SMALL)
    u = env.unwrapped
    keep = project_budget(np.zeros(u.n_units), target, u.sizes, u.config.min_keep, u.config.max_keep)
    return u, u.pruner.round(keep, (1 - target) * u.sizes.sum())


@pytest.mark.parametrize("env_id", ["FFPrune-Llama-v0", "FFPrune-OPT-v0"])
def test_ridge_fold_reduces_the_output_error_on_calibration_inputs(env_id):
    u, kept = _pruned(env_id, 0.5)
    pruner, block = u.pruner, u.blocks[2]
    tokens = u.calibration_tokens
    lin = block.ffn_out
    dense = lin.weight.detach().clone()
    x = []
    h = lin.register_forward_pre_hook(lambda _m, a: x.append(a[0].detach().reshape(-1, lin.in_features).double()))
    with torch.inference_mode():
        u.model(input_ids=tokens, use_cache=False)
    h.remove()
    x = torch.cat(x)
    cols = pruner.kept_columns(kept)[2][1]
    gram = input_gram(u.model, lin, tokens)
    torch.testing.assert_close(gram, x.T @ x, rtol=1e-9, atol=1e-6)
    masked = torch.zeros_like(dense)
    masked[:, cols] = dense[:, cols]
    err_masked = (x @ (dense - masked).double().T).norm()
    with torch.no_grad():
        lin.weight.copy_(masked)
        ridge_fold(lin, cols, gram, 0.9, dense)
        comp = lin.weight.detach().clone()
        lin.weight.copy_(dense)
    err_comp = (x @ (dense - comp).double().T).norm()
    removed = torch.ones(lin.in_features, dtype=torch.bool)
    removed[cols] = False
    assert torch.all(comp[:, removed] == 0)  # removed channels stay removed
    assert err_comp < 0.9 * err_masked


def test_evaluate_with_calibration_restores_weights_and_changes_ppl():
    u, _ = _pruned("FFPrune-Mistral-v0", 0.4)
    before = {k: v.clone() for k, v in u.model.state_dict().items()}
    action = np.zeros(u.n_units, np.float32)
    plain = u.evaluate(action, split="calib", n_windows=2)
    calib = u.evaluate(action, split="calib", n_windows=2, calibrate=True)
    after = u.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert calib["ppl"] != plain["ppl"] and np.isfinite(calib["ppl"])
    assert calib["sparsity"] == plain["sparsity"]
    # nothing pruned -> nothing to compensate
    full = u.evaluate(sparsities=np.zeros(u.n_units), split="calib", n_windows=2, calibrate=True)
    assert full["ppl"] == pytest.approx(u.evaluate(sparsities=np.zeros(u.n_units), split="calib", n_windows=2)["ppl"])


def test_calibration_bad_input():
    u, kept = _pruned("FFPrune-Llama-v0", 0.3)
    with pytest.raises(ValueError, match="alpha"):
        with ridge_compensation(u.model, u.blocks, [], [], u.calibration_tokens, alpha=0.0):
            pass
    with pytest.raises(ValueError, match="one entry per block"):
        with ridge_compensation(u.model, u.blocks, [], [], u.calibration_tokens):
            pass
    unstructured = gym.make("FFPrune-Llama-Unstructured-v0", **SMALL).unwrapped
    with pytest.raises(ValueError, match="structured"):
        unstructured.evaluate(np.zeros(unstructured.n_units, np.float32), calibrate=True)


def test_search_reports_the_calibrated_ppl_next_to_the_plain_one(tmp_path, capsys):
    from ffprune.agents.cli import main as cli_main

    tiny = ["--env-kwarg", "reward_samples=2", "--env-kwarg", "calib_samples=8", "--env-kwarg", "eval_samples=2"]
    out = tmp_path / "r.json"
    assert cli_main(["search", "--env", "FFPrune-Mistral-v0", "--agent", "uniform", "--calibrate", "--out", str(out),
                     "--logdir", str(tmp_path), "--quiet", *tiny]) == 0
    best = json.loads(out.read_text())["best"]
    assert np.isfinite(best["eval_ppl_calib"]) and best["eval_ppl_calib"] != best["eval_ppl"]
    assert "after post-pruning calibration" in capsys.readouterr().out
    assert cli_main(["search", "--env", "FFPrune-Mistral-Unstructured-v0", "--agent", "uniform", "--calibrate",
                     "--logdir", str(tmp_path), "--quiet", *tiny]) == 2
    assert "structured" in capsys.readouterr().err
