from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from ffenv.errors import FFPruneError
from ffenv.lm import data


def test_stdlib_splits_are_deterministic_and_disjoint():
    dd = data.load_corpus("stdlib")
    assert set(dd) == set(data.SPLITS)
    names = {s: set(dd[s]["name"]) for s in data.SPLITS}
    assert not names["train"] & names["reward"]
    assert not names["train"] & names["eval"]
    assert not names["reward"] & names["eval"]
    for s in data.SPLITS:
        assert len(names[s]) > 20
        # the split is a pure function of the document's name
        assert all(data.split_of(n) == s for n in names[s])
    # about 90/5/5 by document count
    total = sum(len(v) for v in names.values())
    assert len(names["train"]) / total > 0.8
    assert sum(len(t) for t in dd["train"]["text"]) > 2_000_000  # characters of English-ish text


def test_split_of_is_stable():
    # pinned values: a different answer means every machine's splits moved
    assert data.split_of("topic/assert") == data.split_of("topic/assert")
    buckets = [data.split_of(f"doc{i}") for i in range(2000)]
    assert 0.03 < buckets.count("eval") / 2000 < 0.07
    assert 0.03 < buckets.count("reward") / 2000 < 0.07


def test_the_reward_split_has_one_name():
    """``reward``: what a search may see (the reward's and the calibration windows); its old name ``calib`` (which also
    named Calib, the compensation) is refused with the new one, in one line; a folder's ``calib.txt`` still maps to it."""
    assert data.SPLITS == ("train", "reward", "eval") and data.check_split("reward") == "reward"
    with pytest.raises(FFPruneError, match=r"split 'calib' is now called 'reward' .*use split='reward'$"):
        data.token_stream(None, "stdlib", "calib")
    with pytest.raises(FFPruneError, match=r"split must be one of \('train', 'reward', 'eval'\), got 'valid'"):
        data.corpus_text("stdlib", "valid")
    assert data._named_split(Path("calib.txt")) == data._named_split(Path("valid.txt")) == "reward"


def test_calibration_windows_seeded_and_cached(tokenizer):
    a = data.calibration_windows(tokenizer, "stdlib", "reward", n=8, seq_len=64, seed=1)
    b = data.calibration_windows(tokenizer, "stdlib", "reward", n=8, seq_len=64, seed=1)
    c = data.calibration_windows(tokenizer, "stdlib", "reward", n=8, seq_len=64, seed=2)
    assert a.shape == (8, 64) and a.dtype == torch.long
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_evaluation_windows_are_non_overlapping_prefix_of_stream(tokenizer):
    stream = data.token_stream(tokenizer, "stdlib", "eval")
    w = data.evaluation_windows(tokenizer, "stdlib", "eval", seq_len=128)
    assert w.shape == (len(stream) // 128, 128)
    assert torch.equal(w.reshape(-1), stream[: w.numel()])
    assert torch.equal(data.evaluation_windows(tokenizer, "stdlib", "eval", seq_len=128, n=3), w[:3])


def test_cache_makes_second_call_fast(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("FFPRUNE_CACHE", str(tmp_path))
    # a local text corpus in an empty cache (the stdlib corpus takes 40 s to rebuild; every fresh CI machine builds it
    # once anyway): the first call tokenizes, the second loads
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Paragraph {i}: " + " ".join(f"word{j * i % 97}" for j in range(200))
                                    for i in range(300)))
    t0 = time.perf_counter()
    first = data.evaluation_windows(tokenizer, str(corpus), "reward", seq_len=96)
    t_first = time.perf_counter() - t0
    files = list((tmp_path / "tokens").glob("*.pt"))
    assert len(files) >= 2  # the stream and the windows
    t0 = time.perf_counter()
    second = data.evaluation_windows(tokenizer, str(corpus), "reward", seq_len=96)
    t_second = time.perf_counter() - t0
    assert torch.equal(first, second)
    assert t_second < t_first / 5


def test_cache_key_depends_on_seq_len(tokenizer):
    a = data.evaluation_windows(tokenizer, "stdlib", "eval", seq_len=100)
    b = data.evaluation_windows(tokenizer, "stdlib", "eval", seq_len=50)
    assert a.shape[1] == 100 and b.shape[1] == 50


def test_wikitext_local_file(wikitext_valid, tokenizer):
    dd = data.load_corpus(f"wikitext2:{wikitext_valid}")
    assert all(len(dd[s]) > 0 for s in data.SPLITS)
    text = "\n\n".join(dd["eval"]["text"])
    assert " = " in text or "@-@" in text  # WikiText's own markup
    w = data.evaluation_windows(tokenizer, f"wikitext2:{wikitext_valid}", "eval", seq_len=128)
    assert w.shape[1] == 128 and len(w) > 50
    # a plain path works too and gives the same splits
    dd2 = data.load_corpus(str(wikitext_valid))
    assert dd2["reward"]["text"] == dd["reward"]["text"]


def test_wikitext_folder_maps_named_files(wikitext_valid, tmp_path):
    (tmp_path / "valid.txt").write_text(wikitext_valid.read_text()[:20000])
    (tmp_path / "test.txt").write_text(wikitext_valid.read_text()[20000:40000])
    dd = data.load_corpus(str(tmp_path))
    assert len(dd["reward"]) > 0 and len(dd["eval"]) > 0 and len(dd["train"]) == 0


@pytest.mark.parametrize("bad", ["nope", "", "wikitext3"])
def test_unknown_corpus(bad):
    with pytest.raises(ValueError, match="corpus"):
        data.load_corpus(bad)


def test_missing_local_file(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        data.load_corpus(str(tmp_path / "missing.txt"))


def test_bad_window_arguments(tokenizer):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        data.calibration_windows(tokenizer, n=0)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        data.calibration_windows(tokenizer, n=-3)
    with pytest.raises(ValueError, match="seq_len=1024 exceeds the model's context length"):
        data.calibration_windows(tokenizer, n=2, seq_len=1024, max_positions=512)
    with pytest.raises(ValueError, match="split must be one of"):
        data.token_stream(tokenizer, "stdlib", "validation")


# ----------------------------------------------------------------------------- the shipped WikiText-2
@pytest.fixture
def no_hub(monkeypatch):
    """``datasets.load_dataset`` that fails like an offline hub and records what it was asked for."""
    import datasets

    calls: list[tuple] = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("Couldn't reach 'Salesforce/wikitext' on the Hub\n(OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    return calls


def _first_title(text: str) -> str:
    return next(line.strip() for line in text.splitlines() if data._WIKI_TITLE.match(line))


@pytest.mark.parametrize(("split", "title"), [("reward", "= Homarus gammarus ="), ("eval", "= Robert <unk> =")])
def test_wikitext2_reward_and_eval_are_shipped_and_offline(split, title, no_hub):
    dd = data.load_corpus("wikitext2")
    assert set(dd) == set(data.SPLITS)
    ds = dd[split]
    assert len(ds) == 1  # the whole split, one contiguous document
    text = ds["text"][0]
    assert len(text) > 1_000_000 and not text.startswith("\ufeff")
    assert _first_title(text) == title
    assert "<unk>" in text  # the tokenised variant, wikitext-2-v1
    assert data.corpus_text("wikitext2", split) == text
    assert not no_hub  # reward / eval never touch the hub
    hits = data._read_packaged_xz.cache_info().hits
    data.load_corpus("wikitext2")[split]
    assert data._read_packaged_xz.cache_info().hits == hits + 1  # decoded once per process


@pytest.mark.parametrize("damage", ["truncated", "altered"])
def test_wikitext2_corrupt_packaged_file_is_one_line(damage, tmp_path, monkeypatch):
    import lzma

    good = (data.WIKITEXT2_DIR / "valid.txt.xz").read_bytes()
    bad = tmp_path / "valid.txt.xz"
    bad.write_bytes(good[: len(good) // 2] if damage == "truncated" else lzma.compress(b"\n = Not WikiText = \n"))
    monkeypatch.setattr(data, "WIKITEXT2_DIR", tmp_path)
    with pytest.raises(FFPruneError, match="reinstall") as info:
        data.load_corpus("wikitext2")["reward"]
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_wikitext2_train_is_hub_only(no_hub, monkeypatch):
    import datasets

    dd = data.load_corpus("wikitext2")
    with pytest.raises(FFPruneError, match="train split is not shipped.*wikitext2:/path") as info:
        dd["train"]
    assert "\n" not in str(info.value)
    assert no_hub == [("Salesforce/wikitext", "wikitext-2-v1")]  # the hub config of the shipped variant
    # when the hub answers, its empty rows become the files' blank lines again
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: {"text": ["", " = A = \n", "", " Text . \n"]})
    assert data.load_corpus("wikitext2")["train"]["text"] == [" \n = A = \n \n Text . \n"]


def test_wikitext2_cache_key_names_the_shipped_files():
    key = data._corpus_key("wikitext2")
    assert key.startswith("wikitext2-v1-bundled-") and key != "wikitext2"
    assert key == data._corpus_key("wikitext2")


def test_wikitext2_windows_with_the_bundled_tokenizer():
    from ffenv.lm.models import load_model

    _, tok = load_model("tiny-llama")
    w = data.evaluation_windows(tok, "wikitext2", "eval", seq_len=256)
    assert w.shape[1] == 256 and len(w) > 500 and w.dtype == torch.long
    c = data.calibration_windows(tok, "wikitext2", "reward", n=4, seq_len=256)
    assert c.shape == (4, 256)


def test_wikitext2_files_are_package_data():
    """Every shipped file matches a ``[tool.setuptools.package-data]`` pattern, so wheels and sdists carry it."""
    tomllib = pytest.importorskip("tomllib")
    root = Path(data.__file__).resolve().parents[2]
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    package = "ffenv.lm.corpora.wikitext2"
    assert package in config["packages"] and root.joinpath(*package.split(".")) == data.WIKITEXT2_DIR
    matched = {p for pattern in config["package-data"][package] for p in data.WIKITEXT2_DIR.glob(pattern)}
    shipped = set(data.WIKITEXT2_DIR.iterdir())
    assert {data.WIKITEXT2_DIR / name for name, _ in data.WIKITEXT2_FILES.values()} | {
        data.WIKITEXT2_DIR / "LICENSE", data.WIKITEXT2_DIR / "README.md"} == shipped
    assert shipped <= matched


# ----------------------------------------------------------------------------- bad local corpus files
_BAD_FILES = {
    "empty": (b"", "holds no text"),
    "whitespace": (b"  \n\n\t \r\n", "holds no text"),
    "utf16": (b"\xff\xfe\x00abc", "byte offset 0"),
    "binary": (b"fine text\n" + bytes(range(128, 256)), "byte offset 10"),
}


@pytest.mark.parametrize("kind", sorted(_BAD_FILES))
def test_bad_local_file_is_a_clear_error(kind, tmp_path):
    content, says = _BAD_FILES[kind]
    path = tmp_path / f"{kind}.txt"
    path.write_bytes(content)
    with pytest.raises(FFPruneError, match=says) as info:
        data.load_corpus(str(path))
    assert str(path) in str(info.value)
    if kind in ("utf16", "binary"):
        assert "must be UTF-8 text" in str(info.value)


@pytest.mark.parametrize("kind", sorted(_BAD_FILES))
def test_bad_file_in_a_folder_corpus_is_named(kind, tmp_path):
    content, says = _BAD_FILES[kind]
    (tmp_path / "a_good.txt").write_text("Some perfectly good text.\n\nAnother paragraph.\n", encoding="utf-8")
    bad = tmp_path / "sub" / f"{kind}.txt"
    bad.parent.mkdir()
    bad.write_bytes(content)
    with pytest.raises(FFPruneError, match=says) as info:
        data.load_corpus(str(tmp_path))
    assert str(bad) in str(info.value)
    # the same through the wikitext2: prefix
    with pytest.raises(FFPruneError, match=says):
        data.load_corpus(f"wikitext2:{tmp_path}")


def test_utf8_split_across_read_chunks_is_accepted(tmp_path):
    path = tmp_path / "accents.txt"
    path.write_text("é" * 1000 + "\n", encoding="utf-8")
    data._check_text_file(path, chunk_size=3)  # every chunk boundary splits a two-byte character
    path.write_bytes("é".encode() * 4 + b"\xe9")
    with pytest.raises(FFPruneError, match="byte offset 8"):
        data._check_text_file(path, chunk_size=3)


def bos_tokenizer():
    """The bundled tokenizer, made to put its BOS first as Llama-2's and Gemma's tokenizers do."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    from ffenv.lm.models import bundled_path

    tok = AutoTokenizer.from_pretrained(bundled_path("tiny-llama"))
    tok._tokenizer.post_processor = TemplateProcessing(single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, 0)])
    return tok


def test_windows_start_with_the_bos_a_tokenizer_puts_first_and_only_then():
    from transformers import AutoTokenizer

    from ffenv.lm.models import bundled_path

    plain, tok = AutoTokenizer.from_pretrained(bundled_path("tiny-llama")), bos_tokenizer()
    assert data.window_bos(plain) is None and data.window_bos(tok) == 0  # the zoo's (and SmolLM2's) add none
    stream = data.token_stream(tok, "stdlib", "eval")
    assert torch.equal(stream, data.token_stream(plain, "stdlib", "eval"))  # the stream itself never has one
    windows = data.evaluation_windows(tok, "stdlib", "eval", seq_len=32)
    assert windows.shape == (len(stream) // 31, 32) and (windows[:, 0] == 0).all()
    assert torch.equal(windows[:, 1:].reshape(-1), stream[: len(windows) * 31])  # then the stream, no token skipped
    unchanged = data.evaluation_windows(plain, "stdlib", "eval", seq_len=32)
    assert torch.equal(unchanged.reshape(-1), stream[: len(unchanged) * 32])  # without a BOS: cut as they are
    calib = data.calibration_windows(tok, "stdlib", "reward", n=4, seq_len=32, seed=0)
    assert calib.shape == (4, 32) and (calib[:, 0] == 0).all() and not (calib[:, 1:] == 0).all()
