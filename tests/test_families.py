"""Every family the pruning engines support, on tiny randomly initialised models built from each family's transformers
config: the parts are found by role, a physically pruned model computes what the dense model computes with the same
units masked, the engines restore the dense weights bit for bit, and an exported folder reloads with plain transformers
to the same logits. A model without the roles is refused in one line."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from ffenv.errors import FFPruneError
from ffenv.lm.models import TESTED_FAMILIES, bundled_path, check_prunable, decoder_blocks
from ffenv.lm.perplexity import perplexity
from ffenv.pruning.engines import StructuredPruner, UnstructuredPruner
from ffenv.pruning.importance import collect_input_norms

COMMON = {"vocab_size": 4096, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128, "bos_token_id": 0,
          "eos_token_id": 0, "pad_token_id": 0}
"""Small enough to build in milliseconds; the bundled tokenizer's vocabulary (for the env test)."""
GEMMA = {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 8}
FAMILIES = {  # test id: (config class, what differs from COMMON); what each family adds is in the comment
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"sliding_window": 8}),
    "qwen2": ("Qwen2Config", {}),  # biases on q / k / v
    "qwen3": ("Qwen3Config", {"head_dim": 16}),  # q / k norms per head
    "gemma2": ("Gemma2Config", {**GEMMA, "final_logit_softcapping": 30.0}),  # GeGLU, soft-capped logits, sliding layers
    "gemma3_text": ("Gemma3TextConfig", GEMMA),
    "gemma3_text-mqa": ("Gemma3TextConfig", {**GEMMA, "num_key_value_heads": 1,  # as Gemma-3-270M: only query heads go,
                                              "layer_types": ["sliding_attention", "full_attention"]}),
    "phi3": ("Phi3Config", {}),  # fused qkv_proj and gate_up_proj
    "phi": ("PhiConfig", {"num_key_value_heads": 4}),  # parallel attention / MLP, fc1 / fc2, `dense`, biases
    "opt": ("OPTConfig", {"ffn_dim": 96, "word_embed_proj_dim": 64, "num_key_value_heads": None}),
}


def build(name: str) -> torch.nn.Module:
    cls, extra = FAMILIES[name]
    kwargs = {k: v for k, v in {**COMMON, **extra}.items() if v is not None}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(getattr(transformers, cls)(**kwargs), dtype=torch.float32)
    return model.eval().requires_grad_(False)


def tokens(n: int = 3, length: int = 24) -> torch.Tensor:
    return torch.randint(0, COMMON["vocab_size"], (n, length), generator=torch.Generator().manual_seed(1))


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=x, use_cache=False).logits


def structured(model: torch.nn.Module) -> tuple[StructuredPruner, np.ndarray]:
    blocks = decoder_blocks(model)
    pruner = StructuredPruner(blocks, collect_input_norms(model, blocks, tokens()))
    sizes = np.array([u.size for u in pruner.units], np.float64)
    keep = np.random.default_rng(0).uniform(0.3, 0.9, len(sizes))
    return pruner, pruner.to_unit_sparsity(keep, float(keep @ sizes))


def test_every_tested_family_is_in_the_table():
    assert {name.split("-")[0] for name in FAMILIES} == set(TESTED_FAMILIES)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_pruned_model_computes_the_dense_model_with_the_units_masked(name):
    model = build(name)
    x = tokens()
    dense = logits(model, x)
    blocks = decoder_blocks(model)
    heads, kv = FAMILIES[name][1].get("num_attention_heads", 4), FAMILIES[name][1].get("num_key_value_heads", 2) or 4
    assert [(b.num_heads, b.num_kv_heads) for b in blocks] == [(heads, kv)] * 2
    assert blocks[0].attn_granules == (heads if kv == 1 and heads > 1 else kv)  # MQA: query heads, else KV groups
    pruner, us = structured(model)
    assert 0 < us.min() and us.max() < 1 or blocks[0].attn_granules == 1
    pruner.apply(us)
    masked = logits(model, x)
    pruner.restore()
    assert torch.equal(logits(model, x), dense)
    before = sum(p.numel() for p in model.parameters())
    pruner.prune(us)
    sliced = logits(model, x)
    removed = before - sum(p.numel() for p in model.parameters())
    pruner.restore()
    torch.testing.assert_close(sliced, masked, rtol=1e-4, atol=1e-4)
    assert removed == pytest.approx(sum(u.size for u in pruner.units) - pruner.kept_params(us).sum())
    assert torch.equal(logits(model, x), dense)  # bit-identical after restore
    # every unit emptied: an attention keeps one granule with zeroed output, an FFN runs with width 0
    pruner.prune(np.ones(len(pruner.units)))
    assert torch.isfinite(logits(model, x)).all()
    pruner.restore()
    # unstructured: every linear of every decoder layer, restored exactly
    blocks = decoder_blocks(model)
    flat = UnstructuredPruner(blocks, collect_input_norms(model, blocks, tokens()))
    flat.apply(np.full(len(flat.units), 0.5))
    zeros = sum(int((lin.weight == 0).sum()) for b in blocks for lin in b.linears.values())
    assert zeros == pytest.approx(0.5 * sum(u.size for u in flat.units), rel=0.02)
    flat.restore()
    assert torch.equal(logits(model, x), dense)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_an_export_reloads_with_plain_transformers_to_the_same_logits(tmp_path, name):
    from ffprune.agents.tools.hf_folder import layer_widths, save_pruned

    model = build(name)
    pruner, us = structured(model)
    pruner.prune(us)
    pruned = copy.deepcopy(model)
    pruner.restore()
    x = tokens()
    tokenizer = AutoTokenizer.from_pretrained(bundled_path("tiny-llama"))
    widths = layer_widths(pruned)
    info = {"mode": "structured", "base_model": name, "allocation": {
        "sparsity": 0.5, "unit_sparsity": us.tolist(), "layers": widths, "dense_layers": layer_widths(model)}}
    save_pruned(pruned, tokenizer, tmp_path / "out", info)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True, dtype=torch.float32)
    torch.testing.assert_close(logits(reloaded, x), logits(pruned, x))
    assert perplexity(reloaded, x) == pytest.approx(perplexity(pruned, x), rel=1e-5)
    assert sum(p.numel() for p in reloaded.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_tiled_head_and_loss_equal_the_families_own_logits(name, monkeypatch):
    """The vocabulary-tiled head + online log-sum-exp (a real vocabulary's path) gives each family's own loss,
    soft-capped logits (Gemma 2) and head biases (Phi) included."""
    from ffenv.lm import perplexity as evaluation

    model = build(name)
    x = tokens()
    flat = logits(model, x)[:, :-1]
    own = torch.nn.functional.cross_entropy(flat.reshape(-1, flat.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
    assert model.config.model_type in evaluation.HEAD_ONLY_FAMILIES
    monkeypatch.setattr(evaluation, "CHUNK_LOGITS", 20 * COMMON["vocab_size"])  # < MIN_CHUNK_ROWS rows: tiles
    monkeypatch.setattr(evaluation, "MIN_VOCAB_BLOCK", 1000)  # 5 blocks, the last one short
    total, count = evaluation.nll_sum(model, x, batch_size=3)
    assert count == 3 * 23
    assert total == pytest.approx(float(own), rel=1e-5)
    per_window = evaluation.window_nll(model, x, batch_size=2)
    assert float(per_window.sum()) == pytest.approx(float(own), rel=1e-5)


def test_any_family_loads_into_the_env_by_its_roles_with_its_bos_first(tmp_path):
    from test_data import bos_tokenizer

    model = build("gemma3_text-mqa")
    model.save_pretrained(tmp_path / "gemma")
    bos_tokenizer().save_pretrained(tmp_path / "gemma")  # as Gemma's: every window starts with the BOS
    env = gym.make("FFPrune-Llama-v0", model=str(tmp_path / "gemma"), reward_windows=2, calib_samples=4,
                   eval_samples=2, seq_len=32)
    base = env.unwrapped
    assert [u.count for u in base.units] == [4, 96, 4, 96]  # four query heads (one shared KV head), 96 neurons
    env.reset(seed=0)
    _obs, reward, *_ = env.step(np.zeros(base.n_units, np.float32))
    assert 0 < reward < 2 and base.evaluate(np.zeros(base.n_units, np.float32))["ppl"] > 1
    assert base.measurement.window_bos == 0 and (base.windows("eval")[:, 0] == 0).all()
    assert (base.reward_tokens[:, 0] == 0).all() and (base.calibration_tokens[:, 0] == 0).all()
    assert np.isfinite(base.evaluate(np.zeros(base.n_units, np.float32), calibrate=True)["ppl"])


@pytest.mark.parametrize(("config", "missing"), [
    (transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2), "GPT2Block.attn .* has no nn.Linear query / key / value"),
    (transformers.GPTNeoXConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64),
     r"GPTNeoXLayer.attention \(GPTNeoXAttention\) has no nn.Linear query / key / value"),
])
def test_a_model_without_the_roles_is_refused_in_one_line_before_its_weights(config, missing):
    with pytest.raises(FFPruneError, match=f"model 'x': cannot prune this '{config.model_type}' model: {missing}") as err:
        check_prunable(config, "x")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["gemma3_text-mqa", "qwen3", "phi3", "phi", "gemma2"])
def test_calib_in_one_pass_equals_the_per_module_reference(name, monkeypatch):
    """Calib walks the layers once on cached inputs; on a model mixing sliding and global layers each layer gets the
    mask and positions of its own type. The reference runs the model from the embeddings for every module."""
    from test_compensation import _reference_compensation

    from ffenv.pruning.calib import ridge_compensation

    monkeypatch.setattr("ffenv.pruning.calib.GRAM_PRODUCT_DTYPE", torch.float64)  # the algorithms, not float32 noise
    model = build(name)
    pruner, us = structured(model)
    blocks, x = pruner.blocks, tokens(8, 24)
    dense = [(b.attn_out.weight.detach().clone(), b.ffn_out.weight.detach().clone()) for b in blocks]
    kept = pruner.kept_columns(us)
    pruner.apply(us)
    folded = {}
    for label, compensation in (("one pass", ridge_compensation), ("reference", _reference_compensation)):
        with compensation(model, blocks, kept, dense, x, 0.9, 4):
            folded[label] = [lin.weight.detach().clone() for b in blocks for lin in (b.attn_out, b.ffn_out)]
            calibrated = logits(model, x)
        assert torch.isfinite(calibrated).all()
    pruner.restore()
    assert any(not torch.equal(w, d) for w, d in zip(folded["reference"], [w for pair in dense for w in pair]))
    for ours, ref in zip(folded["one pass"], folded["reference"]):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)
