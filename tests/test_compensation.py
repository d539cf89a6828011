"""Post-pruning calibration (ridge compensation): it reduces the pruned modules' output error, is undone exactly."""

from __future__ import annotations

import contextlib
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

import ffenv  # noqa: F401
from ffenv.pruning.calib import input_gram, ridge_compensation, ridge_fold
from ffenv.pruning.projector import project_budget

SMALL = {"reward_windows": 2, "calib_samples": 8, "eval_samples": 2}


def _pruned(env_id: str, target: float):
    env = gym.make(env_id, target_sparsity=target, **SMALL)
    u = env.unwrapped
    keep = project_budget(np.zeros(u.n_units), target, u.sizes, u.config.min_keep, u.config.max_keep)
    return u, u.pruner.to_unit_sparsity(keep, (1 - target) * u.sizes.sum())


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
    torch.testing.assert_close(gram, x.T @ x, rtol=1e-5, atol=1e-4)  # float32 products, float64 sum
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
    plain = u.evaluate(action, split="reward", n_windows=2)
    calib = u.evaluate(action, split="reward", n_windows=2, calibrate=True)
    after = u.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert calib["ppl"] != plain["ppl"] and np.isfinite(calib["ppl"])
    assert calib["sparsity"] == plain["sparsity"]
    # nothing pruned -> nothing to compensate
    full = u.evaluate(sparsities=np.zeros(u.n_units), split="reward", n_windows=2, calibrate=True)
    assert full["ppl"] == pytest.approx(u.evaluate(sparsities=np.zeros(u.n_units), split="reward", n_windows=2)["ppl"])


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

    tiny = ["--env-kwarg", "reward_windows=2", "--env-kwarg", "calib_samples=8", "--env-kwarg", "eval_samples=2"]
    out = tmp_path / "r.json"
    assert cli_main(["search", "--env", "FFPrune-Mistral-v0", "--agent", "uniform", "--calibrate", "--out", str(out),
                     "--logdir", str(tmp_path), "--quiet", *tiny]) == 0
    best = json.loads(out.read_text())["best"]
    assert np.isfinite(best["eval_ppl_after_calib"]) and best["eval_ppl_after_calib"] != best["eval_ppl"]
    assert "after post-pruning calibration" in capsys.readouterr().out
    assert cli_main(["search", "--env", "FFPrune-Mistral-Unstructured-v0", "--agent", "uniform", "--calibrate",
                     "--logdir", str(tmp_path), "--quiet", *tiny]) == 2
    assert "structured" in capsys.readouterr().err


# ---------------------------------------------------------------- one pass through the layers == the old per-module loop
def _reference_compensation(model, blocks, kept_columns, dense, tokens, alpha=0.9, batch_size=8):
    """The previous algorithm, kept as the reference: one partial model forward from the embeddings per batch
    for every pruned output projection (``input_gram``), folding in forward order."""
    saved = [(lin, lin.weight.detach().clone()) for b in blocks for lin in (b.attn_out, b.ffn_out)]

    @contextlib.contextmanager
    def ctx():
        try:
            for block, (attn_cols, ffn_cols), (attn_w, ffn_w) in zip(blocks, kept_columns, dense):
                for lin, cols, w in ((block.attn_out, attn_cols, attn_w), (block.ffn_out, ffn_cols, ffn_w)):
                    if len(cols) < lin.in_features:
                        ridge_fold(lin, cols, input_gram(model, lin, tokens, batch_size), alpha, w)
            yield
        finally:
            with torch.no_grad():
                for lin, weight in saved:
                    lin.weight.copy_(weight)

    return ctx()


def _random_allocation(env_id: str, target: float = 0.5, **kwargs):
    env = gym.make(env_id, target_sparsity=target, **{**SMALL, **kwargs})
    u = env.unwrapped
    action = np.random.default_rng(0).uniform(-1, 1, u.n_units).astype(np.float32)
    keep = project_budget(action.astype(np.float64), target, u.sizes, u.config.min_keep, u.config.max_keep)
    return u, action, u.pruner.to_unit_sparsity(keep, (1 - target) * u.sizes.sum())


def _dense_weights(u):
    return [(b.attn_out.weight.detach().clone(), b.ffn_out.weight.detach().clone()) for b in u.blocks]


def _recording(compensation, folded: list):
    """``compensation`` that also records the folded output-projection weights when its body starts."""
    @contextlib.contextmanager
    def wrapped(model, blocks, *args):
        with compensation(model, blocks, *args):
            folded.extend(lin.weight.detach().clone() for b in blocks for lin in (b.attn_out, b.ffn_out))
            yield

    return wrapped


@pytest.mark.parametrize("env_id", ["FFPrune-Llama-v0", "FFPrune-Mistral-v0", "FFPrune-OPT-v0"])
def test_one_pass_gives_the_same_compensation_as_the_per_module_reference(env_id, monkeypatch):
    monkeypatch.setattr("ffenv.pruning.calib.GRAM_PRODUCT_DTYPE", torch.float64)  # the algorithms, not float32 noise
    u, action, unit_sparsity = _random_allocation(env_id)
    assert len(set(np.round(unit_sparsity, 6))) > 2  # a non-uniform allocation
    u.pruner.apply(unit_sparsity)
    masked = [lin.weight.detach().clone() for b in u.blocks for lin in (b.attn_out, b.ffn_out)]
    u.pruner.restore()
    new, ref = [], []
    monkeypatch.setattr("ffenv.envs.backend.ridge_compensation", _recording(ridge_compensation, new))
    ppl = u.evaluate(action, calibrate=True)["ppl"]  # held-out split
    monkeypatch.setattr("ffenv.envs.backend.ridge_compensation", _recording(_reference_compensation, ref))
    ppl_ref = u.evaluate(action, calibrate=True)["ppl"]
    assert len(new) == len(ref) == len(masked) == 2 * len(u.blocks)
    assert sum(not torch.equal(w, m) for w, m in zip(ref, masked)) >= len(u.blocks)  # the reference did fold
    for w_new, w_ref in zip(new, ref):
        torch.testing.assert_close(w_new, w_ref, rtol=1e-4, atol=1e-6)
    assert np.isfinite(ppl) and ppl == pytest.approx(ppl_ref, rel=1e-4)


def test_compensation_puts_every_weight_back_bit_identically():
    u, _action, unit_sparsity = _random_allocation("FFPrune-OPT-v0")
    dense_state = {k: v.detach().clone() for k, v in u.model.named_parameters()}
    dense = _dense_weights(u)
    u.pruner.apply(unit_sparsity)
    try:
        pruned_state = {k: v.detach().clone() for k, v in u.model.named_parameters()}
        with ridge_compensation(u.model, u.blocks, u.pruner.kept_columns(unit_sparsity), dense, u.calibration_tokens):
            assert any(not torch.equal(v, pruned_state[k]) for k, v in u.model.named_parameters())
        assert all(torch.equal(v, pruned_state[k]) for k, v in u.model.named_parameters())
        with pytest.raises(RuntimeError, match="boom"):  # also when the body fails
            with ridge_compensation(u.model, u.blocks, u.pruner.kept_columns(unit_sparsity), dense,
                                    u.calibration_tokens):
                raise RuntimeError("boom")
        assert all(torch.equal(v, pruned_state[k]) for k, v in u.model.named_parameters())
    finally:
        u.pruner.restore()
    assert all(torch.equal(v, dense_state[k]) for k, v in u.model.named_parameters())
    attn = [m for m in u.model.modules() if hasattr(m, "out_proj")]
    assert attn and all("forward" not in vars(m) for m in attn)  # the attention replay is undone


def _count_calls(modules):
    counts = [0] * len(modules)
    handles = [m.register_forward_pre_hook(lambda *_a, i=i: counts.__setitem__(i, counts[i] + 1))
               for i, m in enumerate(modules)]
    return counts, handles


@pytest.mark.parametrize("env_id", ["FFPrune-Llama-v0", "FFPrune-OPT-v0"])
def test_calibration_walks_the_layers_once(env_id):
    u, _action, unit_sparsity = _random_allocation(env_id)
    batch_size = 4
    n_batches = -(-len(u.calibration_tokens) // batch_size)
    assert n_batches >= 2
    dense = _dense_weights(u)
    emb = u.model.get_input_embeddings()
    layers = u.model.model.decoder.layers if env_id == "FFPrune-OPT-v0" else u.model.model.layers
    q_proj = [b.attn_in[0] for b in u.blocks]
    n_emb, h_emb = _count_calls([emb])
    n_layer, h_layer = _count_calls(list(layers))
    n_q, h_q = _count_calls(q_proj)
    ffn_in = [b.ffn_in[0] for b in u.blocks]
    n_ffn, h_ffn = _count_calls(ffn_in)
    u.pruner.apply(unit_sparsity)
    try:
        with ridge_compensation(u.model, u.blocks, u.pruner.kept_columns(unit_sparsity), dense, u.calibration_tokens,
                                batch_size=batch_size):
            # the embedding once per batch (not once per pruned module), the attention once per batch and layer
            assert n_emb == [n_batches]
            assert n_q == [n_batches] * len(u.blocks)
            # the FFN input projections: once in the FFN pass; the full run replays the FFN (Llama's MLP is
            # a submodule whose output is down_proj's), except in a layer with nothing removed from its FFN
            ffn_pruned = [len(k[1]) < b.intermediate_size for k, b in zip(u.pruner.kept_columns(unit_sparsity), u.blocks)]
            if env_id == "FFPrune-Llama-v0":
                assert all(n == (n_batches if p else 2 * n_batches) for n, p in zip(n_ffn[:-1], ffn_pruned))
            else:  # OPT's fc1/fc2 are direct children of the layer: no replay
                assert all(n == (2 * n_batches if p else n_batches) for n, p in zip(n_ffn[:-1], ffn_pruned))
            assert n_layer[0] <= 4 * n_batches and all(n <= 3 * n_batches for n in n_layer[1:])
            # the last layer: attention pass (+ FFN pass), no full run (its output is not needed)
            last_ffn_pruned = len(u.pruner.kept_columns(unit_sparsity)[-1][1]) < u.blocks[-1].intermediate_size
            assert n_layer[-1] == (1 + last_ffn_pruned) * n_batches
    finally:
        u.pruner.restore()
        for h in [*h_emb, *h_layer, *h_q, *h_ffn]:
            h.remove()
    # only up to the last pruned layer: nothing pruned after layer 0 -> the other layers never run
    sparsity = np.zeros(u.n_units)
    sparsity[1] = 0.5  # layer 0's FFN only
    unit_sparsity = u.pruner.to_unit_sparsity(1 - sparsity, (1 - sparsity) @ u.sizes)
    kept = u.pruner.kept_columns(unit_sparsity)
    n_layer, h_layer = _count_calls(list(layers))
    u.pruner.apply(unit_sparsity)
    try:
        with ridge_compensation(u.model, u.blocks, kept, dense, u.calibration_tokens, batch_size=batch_size):
            assert n_layer[1:] == [0] * (len(layers) - 1) and n_layer[0] == 3 * n_batches
    finally:
        u.pruner.restore()
        for h in h_layer:
            h.remove()


@pytest.mark.parametrize("env_id", ["FFPrune-Llama-v0", "FFPrune-Mistral-v0", "FFPrune-OPT-v0"])
def test_float32_gram_products_agree_with_float64(env_id, monkeypatch):
    u, action, _unit_sparsity = _random_allocation(env_id)
    ppl32 = u.evaluate(action, split="reward", calibrate=True)["ppl"]
    monkeypatch.setattr("ffenv.pruning.calib.GRAM_PRODUCT_DTYPE", torch.float64)
    ppl64 = u.evaluate(action, split="reward", calibrate=True)["ppl"]
    assert np.isfinite(ppl32) and ppl32 == pytest.approx(ppl64, rel=1e-5)
