"""The zoo training script: an interrupted run resumes to the same weights; early stopping on ``calib``."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import ffprune.agents.tools.zoo_train as zoo_train
from ffenv.errors import FFPruneError


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    torch.set_num_threads(2)
    kw = dict(arch="llama", minutes=None, steps=4, seed=3, batch_size=2, seq_len=32, eval_every=2)
    full = zoo_train.train(out=tmp_path / "full", **kw)
    assert [h["step"] for h in full["history"]] == [2, 4]
    assert not (tmp_path / "full" / "train_state.pt").exists()  # removed once the run is complete
    best = min(full["history"], key=lambda h: h["calib_ppl"])
    assert full["selected_step"] == best["step"]
    assert full["tokens_seen"] == best["step"] * 2 * 32

    real_ppl, calls = zoo_train.perplexity, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # Ctrl-C during the second measurement: the state of step 2 is on disk
            raise KeyboardInterrupt
        return real_ppl(*args, **kwargs)

    monkeypatch.setattr(zoo_train, "perplexity", interrupted)
    with pytest.raises(KeyboardInterrupt):
        zoo_train.train(out=tmp_path / "cut", **kw)
    assert (tmp_path / "cut" / "train_state.pt").exists()
    monkeypatch.setattr(zoo_train, "perplexity", real_ppl)
    resumed = zoo_train.train(out=tmp_path / "cut", resume=True, **kw)
    assert resumed["history"][-1]["calib_ppl"] == full["history"][-1]["calib_ppl"]
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "cut" / "training.json").read_text())["selected_step"] == full["selected_step"]


def test_resume_refuses_another_runs_state(tmp_path):
    kw = dict(arch="llama", minutes=None, steps=2, batch_size=2, seq_len=32, eval_every=1)
    (tmp_path / "run").mkdir()
    torch.save({"arch": "opt", "seed": 0, "batch_size": 2, "lr": 3e-3}, tmp_path / "run" / "train_state.pt")
    with pytest.raises(ValueError, match="another run"):
        zoo_train.train(out=tmp_path / "run", seed=0, resume=True, **kw)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="arch"):
        zoo_train.train("gpt9", steps=2)
    with pytest.raises(ValueError, match="exactly one of minutes or steps"):
        zoo_train.train("llama", minutes=1.0, steps=2)
    with pytest.raises(ValueError, match=r"^train: \['step'\] are not training settings; settings: \['arch', 'minutes'"):
        zoo_train.train("llama", step=2)
    assert zoo_train.TrainSpec("llama", steps=2) == zoo_train.TrainSpec(arch="llama", steps=2)
    with pytest.raises(ValueError, match="eval_every"):
        zoo_train.train("llama", steps=2, eval_every=0)


@pytest.mark.parametrize("content", ["garbage", "truncated", "not-a-dict", "empty-dict"])
def test_resume_from_a_corrupt_state_is_a_clear_error(tmp_path, content):
    kw = dict(arch="llama", minutes=None, steps=2, batch_size=2, seq_len=32, eval_every=1)
    state_file = tmp_path / "run" / "train_state.pt"
    state_file.parent.mkdir()
    says = "is corrupt"
    if content == "garbage":
        state_file.write_bytes(b"\x00not a torch checkpoint\xff" * 8)
    elif content == "truncated":  # a kill mid-write by a writer that was not atomic
        torch.save({"arch": "llama", "seed": 0, "batch_size": 2, "lr": 3e-3, "model": torch.zeros(4096)}, state_file)
        state_file.write_bytes(state_file.read_bytes()[:2000])
    elif content == "not-a-dict":
        torch.save([1, 2, 3], state_file)
        says = "is not an ffprune checkpoint"
    else:
        torch.save({}, state_file)
    with pytest.raises(FFPruneError) as info:
        zoo_train.train(out=tmp_path / "run", seed=0, resume=True, **kw)
    message = str(info.value)
    assert str(state_file) in message
    assert says in message.replace(str(state_file), "<state>")  # the test's tmp_path holds "corrupt" too
    assert "without --resume" in message
