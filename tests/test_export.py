"""ffprune export / ffenv.load_pruned: a search's best allocation as a smaller Hugging Face folder that loads again."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

import ffenv
from ffenv.lm.models import EXPORT_FILE, load_pruned, read_export, weights_fingerprint
from ffenv.lm.perplexity import perplexity
from ffenv.pruning.calib import CALIB_ALPHA
from ffprune.agents.cli import main
from ffprune.agents.experiments.search import run_search
from ffprune.agents.results import FIELD_RENAMES, read_result
from ffprune.agents.tools.export import export_result
from ffprune.agents.tools.hf_folder import RECIPE_FILE

SMALL = {"reward_windows": 8, "eval_samples": 8, "calib_samples": 8}


def _search(tmp_path, env_id, agent="random", **env_kwargs):
    out = tmp_path / f"{env_id}.json"
    run_search(env_id, agent=agent, budget=4, seed=0, logdir=None, out=out, env_kwargs={**SMALL, **env_kwargs},
               progress=False)
    return out


@pytest.mark.parametrize("env_id", ["FFPrune-Llama-v0", "FFPrune-Mistral-v0", "FFPrune-OPT-v0"])
@pytest.mark.parametrize("calibrate", [False, True])
def test_structured_export_reloads_to_the_envs_held_out_ppl(tmp_path, env_id, calibrate):
    result = _search(tmp_path, env_id)
    facts = export_result(result, tmp_path / "pruned", calibrate=calibrate, speed=False)
    env = gym.make(env_id, **SMALL)
    u = env.unwrapped
    action = np.asarray(json.loads(result.read_text())["best"]["action"], np.float32)
    expected = u.evaluate(action, split="eval", calibrate=calibrate)["ppl"]
    model, _tok = load_pruned(tmp_path / "pruned")
    assert perplexity(model, u.windows("eval")) == pytest.approx(expected, rel=1e-4)
    assert facts["reloaded"]["eval_ppl"] == pytest.approx(expected, rel=1e-4)
    # physically smaller, by exactly the parameters the env counts as removed
    removed = float(np.asarray(facts["allocation"]["unit_sparsity"], np.float64) @ u.sizes)
    dense = sum(p.numel() for p in u.model.parameters())
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(dense - removed, abs=1)
    cfg = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert len(cfg["ffprune_layers"]) == len(u.blocks) and cfg["architectures"][0].startswith("FFPruned")
    assert any(w["intermediate_size"] < u.blocks[0].intermediate_size for w in cfg["ffprune_layers"])
    # bytes on disk: what the kept parameters predict (float32 after Calib, the source's float16 otherwise)
    itemsize = 4 if calibrate else 2
    assert facts["weights_bytes"] == pytest.approx(facts["figures"]["params"]["pruned"] * itemsize, rel=0.01)
    assert facts["storage_dtype"] == ("float32" if calibrate else "float16") and facts["lossless_storage"]
    assert facts["calib_alpha"] == (CALIB_ALPHA if calibrate else None)  # calib_alpha=None: the env config's
    assert facts["base_weights_fingerprint"] == weights_fingerprint(u.config.model) == read_result(result)["weights_fingerprint"]


def test_a_result_with_the_old_field_names_exports_the_same_model(tmp_path):
    """Results committed before the renames (``weights``, ``best.calib_ppl``, ...) are read through the one reader."""
    result = _search(tmp_path, "FFPrune-Llama-v0")
    new = read_result(result)
    old = json.loads(json.dumps(new))
    for was, now in FIELD_RENAMES.items():
        *parent, was_key = was.split(".")
        holder = old[parent[0]] if parent else old
        if now.split(".")[-1] in holder:
            holder[was_key] = holder.pop(now.split(".")[-1])
    assert "weights" in old and "calib_ppl" in old["best"] and "reward_samples" in old["env_kwargs"]
    assert "weights_fingerprint" not in old and "reward_ppl" not in old["best"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    facts = [export_result(path, tmp_path / name, speed=False, calibrate=True)
             for path, name in ((result, "from-new"), (tmp_path / "old.json", "from-old"))]
    for f in facts:
        f["search"].pop("result")
    assert facts[0] == facts[1]
    a, b = (load_pruned(tmp_path / name)[0].state_dict() for name in ("from-new", "from-old"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_exported_folder_loads_without_ffprune_and_prunes_again(tmp_path):
    result = _search(tmp_path, "FFPrune-Mistral-v0")
    export_result(result, tmp_path / "pruned", speed=False)
    ours, tok = load_pruned(tmp_path / "pruned")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", trust_remote_code=True, dtype=torch.float32)
    x = tok("def main():\n    return 0\n", return_tensors="pt").input_ids
    with torch.inference_mode():
        torch.testing.assert_close(theirs(input_ids=x).logits, ours(input_ids=x).logits)
    # the exported folder is a model the env can load and prune again (layers of different widths)
    env = gym.make("FFPrune-Mistral-v0", model=str(tmp_path / "pruned"), **SMALL)
    u = env.unwrapped
    widths = read_export(tmp_path / "pruned")["allocation"]["layers"]
    # a layer left with one KV group is multi-query now: its granules are its query heads
    assert [x.count for x in u.units[::2]] == [w["num_attention_heads"] if w["num_key_value_heads"] == 1 else
                                               w["num_key_value_heads"] for w in widths]
    assert [x.count for x in u.units[1::2]] == [w["intermediate_size"] for w in widths]
    dense_before = {k: v.clone() for k, v in u.model.state_dict().items()}
    env.reset(seed=0)
    _obs, reward, *_ = env.step(np.zeros(u.n_units, np.float32))
    assert np.isfinite(reward)
    assert all(torch.equal(v, dense_before[k]) for k, v in u.model.state_dict().items())


def test_unstructured_export_is_a_plain_checkpoint_with_a_recipe(tmp_path):
    result = _search(tmp_path, "FFPrune-Llama-Unstructured-v0")
    facts = export_result(result, tmp_path / "pruned", speed=False)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", dtype=torch.float32)  # no custom code
    env = gym.make("FFPrune-Llama-Unstructured-v0", **SMALL)
    u = env.unwrapped
    action = np.asarray(json.loads(result.read_text())["best"]["action"], np.float32)
    assert perplexity(model, u.windows("eval")) == pytest.approx(u.evaluate(action)["ppl"], rel=1e-4)
    recipe = yaml.safe_load((tmp_path / "pruned" / RECIPE_FILE).read_text())
    sparsity = recipe["sparsity_stage"]["sparsity_modifiers"]["WandaPruningModifier"]["sparsity"]
    assert sparsity == pytest.approx(facts["allocation"]["unit_sparsity"], abs=1e-6) and len(sparsity) == len(u.blocks)
    for block, s in zip(ffenv.lm.models.decoder_blocks(model), sparsity):  # the zeros are in the weights
        for lin in block.linears.values():
            assert (lin.weight == 0).float().mean().item() == pytest.approx(s, abs=2 / lin.in_features)
    assert "auto_map" not in json.loads((tmp_path / "pruned" / "config.json").read_text())


def test_export_refusals_write_nothing(tmp_path, capsys):
    result = _search(tmp_path, "FFPrune-Llama-v0")
    data = read_result(result)
    out = tmp_path / "pruned"

    def refused(path, match, **kw):
        with pytest.raises(ffenv.FFPruneError, match=match):
            export_result(path, out, speed=False, **kw)
        assert not out.exists() or not any(out.iterdir())
        assert not list(tmp_path.glob(".pruned*"))  # no temporary folder left behind

    other = tmp_path / "other.json"
    other.write_text(json.dumps({**data, "weights_fingerprint": "0" * 64}))
    refused(other, "other weights")
    other.write_text(json.dumps({**data, "complete": False}))
    refused(other, "unfinished")
    refused(tmp_path / "missing.json", "does not exist")
    (tmp_path / "running.ckpt").write_bytes(b"x")
    refused(tmp_path / "running.json", "unfinished")
    other.write_text(json.dumps({**data, "env_kwargs": {**data["env_kwargs"], "model": str(tmp_path / "gone")}}))
    refused(other, "unknown model")
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ffenv.FFPruneError, match="--force"):
        export_result(result, out, speed=False)
    assert (out / "keep.txt").read_text() == "mine"
    export_result(result, out, speed=False, force=True)
    assert not (out / "keep.txt").exists() and (out / EXPORT_FILE).exists()
    # the CLI: one line on stderr, exit code 2
    assert main(["export", str(result), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err


def test_a_failing_write_leaves_no_folder(tmp_path, monkeypatch):
    result = _search(tmp_path, "FFPrune-OPT-v0")

    def broken(*_a, **_k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("ffprune.agents.tools.hf_folder.model_card", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_result(result, tmp_path / "pruned", speed=False)
    assert not (tmp_path / "pruned").exists() and not list(tmp_path.glob(".pruned*"))


def test_calibrate_needs_a_structured_search(tmp_path):
    result = _search(tmp_path, "FFPrune-Llama-Unstructured-v0")
    with pytest.raises(ffenv.FFPruneError, match="structured"):
        export_result(result, tmp_path / "pruned", calibrate=True, speed=False)


def test_corrupt_or_foreign_folders_are_refused_in_one_line(tmp_path):
    result = _search(tmp_path, "FFPrune-Llama-v0")
    export_result(result, tmp_path / "pruned", speed=False)
    weights = tmp_path / "pruned" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ffenv.FFPruneError, match="corrupt or incomplete"):
        load_pruned(tmp_path / "pruned")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text("{}")
    with pytest.raises(ffenv.FFPruneError, match="not an ffprune export"):
        load_pruned(tmp_path / "plain")


def test_export_reports_size_and_speed(tmp_path, capsys):
    result = _search(tmp_path, "FFPrune-Llama-v0")
    assert main(["export", str(result), "--out", str(tmp_path / "pruned")]) == 0
    printed = capsys.readouterr().out
    assert "forward tokens/s" in printed and "parameters" in printed
    fig = read_export(tmp_path / "pruned")["figures"]
    assert fig["tokens_per_s"]["dense"] > 0 and fig["tokens_per_s"]["pruned"] > 0
    assert fig["params"]["pruned"] < fig["params"]["dense"]
    card = (tmp_path / "pruned" / "README.md").read_text()
    assert "## Allocation" in card and "FFN sparsity" in card and "trust_remote_code=True" in card


def test_eval_runs_the_harness_on_an_exported_model(tmp_path, capsys):
    pytest.importorskip("lm_eval")
    result = _search(tmp_path, "FFPrune-OPT-v0")
    export_result(result, tmp_path / "pruned", speed=False)
    threads = torch.get_num_threads()
    try:
        assert main(["eval", str(tmp_path / "pruned"), "--tasks", "ffprune_nextline", "--limit", "20", "--threads", "1",
                     "--out", str(tmp_path / "eval.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    summary = json.loads((tmp_path / "eval.json").read_text())
    task = summary["tasks"]["ffprune_nextline"]
    assert task["n"] == 20 and 0 <= task["acc"] <= 1 and summary["weights_fingerprint"]
    assert "ffprune_nextline: acc" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "pruned"), "--tasks", "no_such_task_xyz", "--limit", "2"]) == 2


def test_an_allocation_that_empties_an_attention_exports(tmp_path):
    """Removing every head group of a layer (kept as one silent group, as in a step; SmolLM2's 3 KV groups at min_keep
    0.1 round to none): the exported folder reloads with plain transformers to the env's held-out ppl."""
    result = _search(tmp_path, "FFPrune-Mistral-v0", agent="uniform", min_keep=0.0)
    env = gym.make("FFPrune-Mistral-v0", min_keep=0.0, **SMALL)
    u = env.unwrapped
    emptied = [2]  # attn.1; the others share the rest of the 30 % target
    rest = (0.3 * u.sizes.sum() - u.sizes[emptied].sum()) / (u.sizes.sum() - u.sizes[emptied].sum())
    sparsities = np.where(np.isin(np.arange(u.n_units), emptied), 1.0, rest)
    action = u.action_from_sparsities(sparsities)
    assert list(u.pruner.granules_kept(u.allocation(action))[emptied]) == [0]
    raw = json.loads(result.read_text())
    raw["best"]["action"] = action.tolist()
    result.write_text(json.dumps(raw))
    expected = u.evaluate(action)["ppl"]
    facts = export_result(result, tmp_path / "pruned", speed=False)
    widths = read_export(tmp_path / "pruned")["allocation"]["layers"]
    assert widths[1]["num_key_value_heads"] == 1  # one silent group
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", trust_remote_code=True, dtype=torch.float32)
    assert perplexity(theirs, u.windows("eval")) == pytest.approx(expected, rel=1e-4)
    assert facts["reloaded"]["eval_ppl"] == pytest.approx(expected, rel=1e-4)


def test_layer_widths_allow_an_ffn_without_neurons_but_not_an_attention_without_heads():
    from transformers import AutoConfig

    from ffenv.lm.models import bundled_path
    from ffenv.lm.pruned_modeling import LAYERS_KEY, pruned_class

    config = AutoConfig.from_pretrained(bundled_path("tiny-mistral"))
    layers = [{"num_attention_heads": 4, "num_key_value_heads": 1, "intermediate_size": 0 if i == 2 else 64}
              for i in range(config.num_hidden_layers)]
    setattr(config, LAYERS_KEY, layers)
    model = pruned_class("mistral")(config)
    assert model.model.layers[2].mlp.down_proj.in_features == 0
    with torch.inference_mode():
        assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()
    setattr(config, LAYERS_KEY, [{**w, "num_key_value_heads": 0} for w in layers])
    with pytest.raises(ValueError, match=">= 1 \\(heads\\)"):
        pruned_class("mistral")(config)
