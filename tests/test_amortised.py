"""``ffprune amortised``: one target-conditioned policy per family and mode, allocating at the suite's targets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from ffenv.errors import FFPruneError
from ffenv.io import read_json
from ffprune.agents.cli import amortised as cli
from ffprune.agents.cli import main
from ffprune.agents.experiments import amortised
from ffprune.agents.experiments.amortised import PROTOCOL, AmortisedSpec, run_amortised
from ffprune.agents.experiments.search import SearchSpec
from ffprune.agents.results import seed_file

SUITE = Path(__file__).resolve().parents[1] / "docs" / "results" / "core"
ENV_KW = {"reward_windows": 4, "calib_samples": 8, "eval_samples": 8}


def test_the_protocol_never_trains_on_a_test_target_and_the_cli_defaults_are_the_modules():
    for proto in PROTOCOL.values():
        assert not set(proto.train_targets) & set(proto.test_targets)
        assert min(proto.train_targets) < min(proto.test_targets) and max(proto.test_targets) < max(proto.train_targets)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args([])  # the command line reads the library's defaults (ffprune.agents.defaults)
    assert (args.modes, args.budget, args.refine) == (",".join(PROTOCOL), amortised.TRAIN_BUDGET, amortised.REFINE)


@pytest.mark.parametrize("kwargs, match", [({"families": ["gpt"]}, "families must be among"),
                                           ({"modes": ["semi"]}, "modes must be among"),
                                           ({"budget": 0}, "budget"), ({"refine": -1}, "refine")])
def test_bad_arguments_fail_before_any_work(tmp_path, kwargs, match):
    with pytest.raises(FFPruneError, match=match):
        run_amortised(out=tmp_path / "a", suite_out=SUITE, **kwargs)
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_policies_allocate_at_the_suite_targets_and_are_compared_with_the_per_target_cells(tmp_path, capsys):
    out = tmp_path / "am"
    spec = AmortisedSpec(modes=["unstructured"], seeds=1, budget=12, refine=2, env_kwargs=ENV_KW)
    run_amortised(spec, out=out, suite_out=SUITE, progress=False)
    analysis = json.loads((out / "amortised.json").read_text())
    rows = {(r["task"], r["approach"]): r for r in analysis["rows"]}
    for family in ("llama", "mistral", "opt"):
        zero, refined = rows[f"{family}-u0.7", "zero-shot"], rows[f"{family}-u0.7", "refine 2"]
        assert zero["evaluations_here"] == 0 and refined["evaluations_here"] == 2
        assert zero["evaluations_per_family"] == 12 and refined["evaluations_per_family"] == 12 + 2
        assert rows[f"{family}-u0.7", "fastforward"]["evaluations_per_family"] == 100  # one target per family here
        cell = read_json(seed_file(out / f"{family}-u0.7" / "refine0", 0))
        assert cell["env_kwargs"]["target_sparsity"] == 0.7 and cell["best"]["sparsity"] == pytest.approx(0.7, abs=0.01)
        policy = read_json(seed_file(out / "policies" / f"{family}-unstructured", 0))
        assert set(policy["best_by_target"]) == {f"{t:g}" for t in PROTOCOL["unstructured"].train_targets}
    for source in ("llama", "opt", "llama+opt"):
        assert rows["mistral-u0.7", f"zero-shot, policy of {source}"]["evaluations_per_family"] == 0
    both = read_json(seed_file(out / "policies" / "llama+opt-unstructured", 0))
    assert both["warm_start"].endswith("llama-unstructured/seed0.policy.pt") and both["env_id"] == "FFPrune-OPT-Unstructured-v0"
    assert [g["task"] for g in analysis["goals"]] == ["llama-u0.7", "mistral-u0.7", "opt-u0.7"]
    policy_file = out / "policies" / "opt-unstructured" / "seed0.policy.pt"
    trained = policy_file.read_bytes()
    policy_file.unlink()  # policies are not committed: a finished training without its policy is trained again
    amortised.train_job(SearchSpec("FFPrune-OPT-Unstructured-v0", budget=12, seed=0, env_kwargs=ENV_KW,
                                   train_targets=PROTOCOL["unstructured"].train_targets),
                        policy_file.with_suffix("").with_suffix(".json"))
    assert policy_file.exists() and policy_file.stat().st_size == len(trained)
    before = (out / "amortised.md").read_text()
    assert main(["amortised", "--modes", "unstructured", "--seeds", "1", "--budget", "12", "--refine", "2",
                 "--out", str(out), "--suite-out", str(SUITE), "--report-only"]) == 0
    assert (out / "amortised.md").read_text() == before and "zero-shot" in capsys.readouterr().out
