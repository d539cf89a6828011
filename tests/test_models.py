from __future__ import annotations

import math

import pytest
import torch

from ffenv.lm import perplexity as evaluation
from ffenv.lm.data import evaluation_windows
from ffenv.lm.models import BUNDLED_MODELS, bundled_card, bundled_path, decoder_blocks, load_model, load_model_cached
from ffenv.lm.perplexity import nll_sum, perplexity

FAMILY = {"tiny-llama": "LlamaForCausalLM", "tiny-mistral": "MistralForCausalLM", "tiny-opt": "OPTForCausalLM"}


@pytest.mark.parametrize("name", BUNDLED_MODELS)
def test_bundled_model_loads_and_has_finite_low_perplexity(name):
    model, tok = load_model_cached(name, "cpu", "auto")
    assert type(model).__name__ == FAMILY[name]
    cfg = model.config
    assert cfg.num_hidden_layers >= 8 and cfg.num_attention_heads >= 8
    n = sum(p.numel() for p in model.parameters())
    assert 3e6 <= n <= 10e6
    assert bundled_path(name).joinpath("model.safetensors").stat().st_size <= 20e6
    windows = evaluation_windows(tok, "stdlib", "eval", seq_len=256, n=16)
    ppl = perplexity(model, windows)
    assert math.isfinite(ppl)
    assert ppl < cfg.vocab_size / 8  # far better than a uniform guess over the vocabulary
    card = bundled_card(name)
    assert card["parameters"] == n
    assert card["dense_ppl"]["eval"] > 1


def test_mistral_uses_grouped_query_attention():
    model, _ = load_model_cached("tiny-mistral", "cpu", "auto")
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    blocks = decoder_blocks(model)
    assert blocks[0].num_kv_heads == model.config.num_key_value_heads


def test_all_bundled_models_share_one_tokenizer():
    vocab = None
    for name in BUNDLED_MODELS:
        _, tok = load_model_cached(name, "cpu", "auto")
        vocab = vocab or tok.get_vocab()
        assert tok.get_vocab() == vocab


def test_perplexity_is_exact_token_weighted_mean():
    model, tok = load_model_cached("tiny-llama", "cpu", "auto")
    w = evaluation_windows(tok, "stdlib", "eval", seq_len=64, n=5)
    total, count = nll_sum(model, w, batch_size=2)
    assert count == 5 * 63  # T - 1 predictions per window
    # by hand, window by window, summed over tokens
    manual = 0.0
    with torch.inference_mode():
        for row in w:
            logits = model(input_ids=row[None]).logits[0, :-1]
            manual += torch.nn.functional.cross_entropy(logits, row[1:], reduction="sum").item()
    assert total == pytest.approx(manual, rel=1e-5)
    assert perplexity(model, w, batch_size=3) == pytest.approx(math.exp(manual / count), rel=1e-5)


@pytest.mark.parametrize(("name", "rows"), [(name, 100) for name in BUNDLED_MODELS] + [("tiny-llama", 300),
                                                                                     ("tiny-llama", 20)])
def test_chunked_head_and_loss_equal_the_models_own_logits(name, rows, monkeypatch):
    """``rows`` logits rows per chunk: 300, row chunks (≥ MIN_CHUNK_ROWS) that cut a batch of 5 × 63 rows; 100,
    vocabulary tiles of all the batch's rows × 2 blocks; 20, tiles that also split the rows (minimum block)."""
    model, tok = load_model_cached(name, "cpu", "auto")
    assert model.config.model_type in evaluation.HEAD_ONLY_FAMILIES
    w = evaluation_windows(tok, "stdlib", "eval", seq_len=64, n=5)
    monkeypatch.setattr(evaluation, "CHUNK_LOGITS", rows * model.config.vocab_size)
    chunked = nll_sum(model, w, batch_size=5 if rows == 300 else 2)
    calls = []
    monkeypatch.setattr(evaluation, "HEAD_ONLY_FAMILIES", frozenset())  # any other family: its own forward
    handle = model.register_forward_hook(lambda *_a: calls.append(1))
    try:
        whole = nll_sum(model, w, batch_size=2)
    finally:
        handle.remove()
    assert len(calls) == 3 and chunked[1] == whole[1] == 5 * 63
    assert chunked[0] == pytest.approx(whole[0], rel=1e-6)


def test_local_path_loads(tmp_path):
    model, tok = load_model(str(bundled_path("tiny-opt")))
    assert model.config.model_type == "opt"


@pytest.mark.parametrize("bad", ["tiny-gpt", "llama", "./no/such/dir", ""])
def test_unknown_model_lists_bundled_names(bad):
    with pytest.raises(ValueError, match="tiny-llama"):
        load_model(bad)


def test_folder_without_config(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        load_model(str(tmp_path))


def test_bad_device_and_dtype():
    with pytest.raises(ValueError, match="dtype"):
        load_model("tiny-llama", dtype="int8")
    with pytest.raises(ValueError, match="device"):
        load_model("tiny-llama", device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_model("tiny-llama", device="cuda")


def test_offline_hub_id_is_a_clear_error():
    with pytest.raises(ValueError, match="could not be loaded"):
        load_model("nobody-here/not-a-model")


def test_cli_models_and_version(capsys):
    from ffprune.agents.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in BUNDLED_MODELS:
        assert name in out
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "ffprune 0.1.0" in capsys.readouterr().out


@pytest.mark.parametrize("name", BUNDLED_MODELS)
def test_model_card_was_written_for_the_shipped_weights(name):
    """The card was measured on the weights in the folder (``write_card`` records their fingerprint with the dense
    perplexities it measures; a retrain must rewrite the card), and records the run it selected."""
    import json

    from ffenv.lm.models import weights_fingerprint

    card = bundled_card(name)
    assert card["weights_fingerprint"] == weights_fingerprint(name)
    training = json.loads(bundled_path(name).joinpath("training.json").read_text())
    chosen = min(training["history"], key=lambda h: h["calib_ppl"])  # early stopping on the reward split
    assert card["selected_step"] == training["selected_step"] == chosen["step"]
    assert card["tokens_seen"] == chosen["step"] * training["batch_size"] * training["seq_len"]


@pytest.mark.slow
def test_write_card_measures_the_dense_perplexities_it_records():
    """``write_card``'s measurement, redone on one model (the others' cards are tied to their weights by fingerprint):
    the dense perplexity of each whole split is the card's."""
    model, tok = load_model_cached("tiny-llama", "cpu", "auto")
    card = bundled_card("tiny-llama")
    for split in ("reward", "eval"):
        ppl = perplexity(model, evaluation_windows(tok, "stdlib", split, seq_len=card["dense_ppl"]["seq_len"]))
        assert ppl == pytest.approx(card["dense_ppl"][split], rel=1e-4), split


def test_weights_fingerprint(tmp_path):
    import shutil

    from ffenv.lm.models import weights_fingerprint

    fp = weights_fingerprint("tiny-llama")
    assert fp.startswith("sha256:") and fp == weights_fingerprint(str(bundled_path("tiny-llama")))
    assert fp != weights_fingerprint("tiny-opt")
    copy = tmp_path / "copy"
    shutil.copytree(bundled_path("tiny-llama"), copy)
    assert weights_fingerprint(str(copy)) == fp
    with (copy / "model.safetensors").open("r+b") as fh:  # one byte of the weights changes
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))
    assert weights_fingerprint(str(copy)) != fp
    (copy / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no weight files"):
        weights_fingerprint(str(copy))
    assert weights_fingerprint("nobody/not-a-cached-model") is None  # hub id, not in the local cache
    with pytest.raises(ValueError, match="bundled"):
        weights_fingerprint("tiny-gpt")
