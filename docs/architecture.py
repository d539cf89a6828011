"""Draw ``docs/architecture.png``: ffprune's layers and subpackages along the data flow.

    python docs/architecture.py                # rewrites docs/architecture.png
    python docs/architecture.py --out x.png    # somewhere else

The picture reads bottom-up like a house: the shared foundation (configuration, errors, I/O, the bundled
zoo), then the data flow corpus → model → importance → projector → pruning → evaluation → reward →
wrappers → batching → methods → engine → experiments / tools → CLI, one row per stage, each box naming its
subpackage and modules. The colour is the top-level layer; a layer imports only the layers below it
(``ffenv`` ← ``baselines`` ← ``agents`` ← CLI, checked by ``tests/test_layering.py``). Keep the rows in
step with the package tree when a module moves (the README's map and ``docs/architecture.md`` list the same).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402
from matplotlib.text import Text  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "architecture.png"

#: fill colour per top-level layer (imports point from a later layer to an earlier one only)
LAYERS: dict[str, str] = {
    "ffenv": "#dbe8f7",
    "ffprune.baselines": "#dcefd8",
    "ffprune.agents": "#fbe5cc",
    "ffprune.agents.cli": "#f6d5d5",
}
EDGES: dict[str, str] = {
    "ffenv": "#3a6ea5",
    "ffprune.baselines": "#3f8a3a",
    "ffprune.agents": "#c07a22",
    "ffprune.agents.cli": "#b04040",
}

#: (stage, [(layer, subpackage, modules), ...]) from the bottom row to the top one; ``None``: the foundation
ROWS: list[tuple[str | None, list[tuple[str, str, str]]]] = [
    (None, [("ffenv", "ffenv/", "config.py (EnvConfig) · registration.py (ids, resolve_config) · errors.py · io.py · "
                                "zoo/ (bundled tiny models)")]),
    ("corpus", [("ffenv", "ffenv/lm/", "data.py: corpora, train / reward / eval splits, token windows, on-disk cache")]),
    ("model", [("ffenv", "ffenv/lm/", "models.py (load, Block views, load_pruned) · sources.py (real models, GGUF) · "
                                        "pruned_modeling.py · forking.py")]),
    ("importance (once)", [("ffenv", "ffenv/pruning/", "importance.py: Wanda |W|·‖X‖₂ from one calibration pass")]),
    ("projector", [("ffenv", "ffenv/pruning/", "projector.py: any raw action → an allocation meeting the budget")]),
    ("pruning", [("ffenv", "ffenv/pruning/", "engines.py (Structured / UnstructuredPruner) · calib.py (Calib)")]),
    ("evaluation", [("ffenv", "ffenv/lm/", "perplexity.py: exact token-weighted mean NLL"),
                    ("ffenv", "ffenv/surrogate/", "or predicted: records.py (evaluation sets) · model.py (MLP "
                                                  "ensemble)")]),
    ("reward", [("ffenv", "ffenv/envs/", "prune_env.py (FFPruneEnv) · sequential_env.py (multi-step twin) · "
                                         "measurement.py (real / surrogate) · backend.py (cache) · features.py")]),
    ("wrappers", [("ffenv", "ffenv/wrappers/", "curriculum.py · accounting.py (SearchAccounting) · logger.py · "
                                               "common.py")]),
    ("batching", [("ffenv", "ffenv/envs/ + ffenv/vector/", "population.py · vector_env.py (FFPruneVectorEnv) · "
                                                           "factory.py (gym entry point) · ray_workers.py")]),
    ("methods", [("ffprune.baselines", "baselines/", "allocators.py · heuristics.py · search.py"),
                 ("ffprune.agents", "agents/methods/", "registry.py · fastforward.py · sb3.py · amc.py")]),
    ("engine", [("ffprune.agents", "agents/experiments/ + results.py + defaults.py",
                  "engine.py (CellSpec · CellStore · run_jobs · Report) · ray_tasks · search · bench · suite · reports · "
                  "rlstats")]),
    ("experiments / tools", [("ffprune.agents", "agents/experiments/",
                              "claim · amortised · tune · fidelity · allocate · surrogate_record · "
                              "surrogate_validate · surrogate_rank · surrogate_study"),
                             ("ffprune.agents", "agents/tools/", "export · hf_folder · specs · speed · timing · "
                                                                "zeroshot · zoo_train")]),
    ("CLI", [("ffprune.agents.cli", "agents/cli/", "ffprune: one module per subcommand (search, allocate, bench, suite, claim, "
                                                   "amortised, tune, surrogate, export, eval, models, fetch, fidelity, methods, "
                                                   "bench-env)")]),
]


def draw(out: str | Path = DEFAULT_OUT) -> Path:
    """Draw the picture into ``out`` (PNG) and return its path."""
    out = Path(out)
    n = len(ROWS)
    row_h, gap = 0.62, 0.26
    width, left, stage_w, box_x0 = 13.6, 0.95, 1.95, 3.15
    box_x1 = width - 0.15
    top = n * (row_h + gap) - gap  # the top edge of the highest row
    fig = Figure(figsize=(width, (top + 1.35) * 0.62), dpi=110)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(-0.2, top + 1.15)
    ax.axis("off")
    renderer = FigureCanvasAgg(fig).get_renderer()

    def fit(text: Text, right: float) -> None:
        """Shrink ``text`` until it ends left of ``right`` (data units): a long module list stays inside its box."""
        limit = ax.transData.transform((right, 0))[0]
        while text.get_window_extent(renderer).x1 > limit and text.get_fontsize() > 6:
            text.set_fontsize(text.get_fontsize() - 0.1)

    for i, (stage, boxes) in enumerate(ROWS):
        y = i * (row_h + gap)
        ax.add_patch(FancyBboxPatch((left, y), stage_w, row_h, boxstyle="round,pad=0.02,rounding_size=0.12",
                                    facecolor="white", edgecolor="#444444" if stage else "#aaaaaa", linewidth=1.3,
                                    linestyle="-" if stage else "--"))
        ax.text(left + stage_w / 2, y + row_h / 2, stage or "shared by all", ha="center", va="center",
                fontsize=11 if stage else 9.5, fontweight="bold" if stage else "normal",
                fontstyle="normal" if stage else "italic", color="#000000" if stage else "#666666")
        ax.plot([left + stage_w + 0.03, box_x0 - 0.03], [y + row_h / 2] * 2, linestyle=":", color="#999999", linewidth=1)
        room = box_x1 - box_x0 - 0.15 * (len(boxes) - 1)
        share = [max(len(modules), 60) for _layer, _package, modules in boxes]  # a long module list gets a wider box
        x = box_x0
        for j, (layer, package, modules) in enumerate(boxes):
            box_w = room * share[j] / sum(share)
            if j:
                x += room * share[j - 1] / sum(share) + 0.15
            ax.add_patch(FancyBboxPatch((x, y), box_w, row_h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                        facecolor=LAYERS[layer], edgecolor=EDGES[layer], linewidth=1.2,
                                        linestyle="-" if stage else "--"))
            ax.text(x + 0.12, y + row_h * 0.70, package, ha="left", va="center", fontsize=9.5, fontweight="bold",
                    family="monospace", color=EDGES[layer])
            text = ax.text(x + 0.12, y + row_h * 0.28, modules, ha="left", va="center", fontsize=8.6)
            fit(text, x + box_w - 0.06)
    for i in range(1, n - 1):  # the data flow: each stage feeds the next one up
        y0, y1 = i * (row_h + gap) + row_h, (i + 1) * (row_h + gap)
        ax.add_patch(FancyArrowPatch((left + stage_w / 2, y0), (left + stage_w / 2, y1), arrowstyle="-|>",
                                     mutation_scale=14, color="#222222", linewidth=1.6))

    def bracket(first: int, last: int, label: str, colour: str) -> None:
        y0, y1 = first * (row_h + gap), last * (row_h + gap) + row_h
        ax.plot([0.75, 0.6, 0.6, 0.75], [y0, y0, y1, y1], color=colour, linewidth=2)
        ax.text(0.33, (y0 + y1) / 2, label, rotation=90, ha="center", va="center", fontsize=10.5, color=colour,
                fontweight="bold")

    bracket(0, 9, "ffenv: what gym.make needs", EDGES["ffenv"])
    bracket(10, 12, "ffprune.*", EDGES["ffprune.agents"])
    ax.text(left, top + 0.78, "ffprune: layers and data flow (read bottom-up; arrows: the data)", fontsize=13,
            fontweight="bold", va="center")
    ax.text(box_x1, top + 0.78, "a layer imports only the layers below it (tests/test_layering.py)", ha="right",
            va="center", fontsize=9.5, color="#333333")
    x = left
    for name in LAYERS:  # the legend: one swatch per top-level layer
        ax.add_patch(FancyBboxPatch((x, top + 0.22), 0.3, 0.24, boxstyle="square,pad=0", facecolor=LAYERS[name],
                                    edgecolor=EDGES[name]))
        ax.text(x + 0.4, top + 0.34, name, ha="left", va="center", fontsize=9, family="monospace", color=EDGES[name])
        x += 0.4 + 0.075 * len(name) + 0.45
    fig.savefig(out, metadata={"Software": None})
    return out


def main(argv: list[str] | None = None) -> int:
    """``python docs/architecture.py [--out PATH]``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="PNG to write (default: docs/architecture.png)")
    args = ap.parse_args(argv)
    print(f"written: {draw(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
