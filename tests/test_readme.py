"""The README's hand-written optimiser runs as printed and shows up in TensorBoard beside the built-in methods."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def own_optimiser_snippet() -> str:
    text = README.read_text()
    match = re.search(r"<!-- own-optimiser -->\n```python\n(.*?)```", text, re.S)
    assert match, "README lost its <!-- own-optimiser --> python block"
    return match.group(1)


def test_readme_own_optimiser_is_short_and_runs(tmp_path, monkeypatch, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code = own_optimiser_snippet()
    assert len(code.strip().splitlines()) <= 15
    small = code.replace("budget=100", "budget=4").replace(
        'gym.make("FFPrune-Llama-v0")', 'gym.make("FFPrune-Llama-v0", reward_windows=2, calib_samples=8, eval_samples=2)')
    assert small.count("budget=4") == 1 and small.count("reward_windows=2") == 1
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(small, "README own-optimiser", "exec"), namespace)
    env = namespace["env"]
    assert env.cost["episodes"] == 4 and env.cost["evaluations"] == 4 and env.best is not None
    acc = EventAccumulator(str(tmp_path / "runs/FFPrune-Llama-v0/my-random/seed0"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"by_evaluations/best_reward", "by_tokens/reward", "by_wall_ms/ppl"} <= tags
    assert [e.step for e in acc.Scalars("by_evaluations/reward")] == [1, 2, 3, 4]


def test_readme_suite_section_is_the_generated_one():
    """The README's suite results are `ffprune bench --suite core --readme README.md`'s output, not hand edits."""
    from ffprune.agents.experiments.suite import check_readme, readme_block

    text, pattern = check_readme(README, "core")
    assert pattern.search(text).group(0) == readme_block(README.parent / "docs" / "results" / "core", README, "core")
