"""The ``ffprune`` command line: thin calls of library functions (the top of ``ffenv`` ← baselines ← agents ← CLI).

Bad input (:class:`ffenv.FFPruneError`, an unknown gymnasium id) is one line on stderr and exit code 2;
anything else is a bug and shows its traceback.

    ffprune --version
    ffprune models                      # bundled models and their dense perplexity
    ffprune bench-env --env FFPrune-Llama-v0
    ffprune search --env FFPrune-Llama-v0 --agent fastforward --budget 200 --out r.json
    ffprune bench --env FFPrune-Llama-v0 --budget 200 --seeds 3 --out bench/llama
    ffprune export r.json --out pruned/llama [--calibrate]
    ffprune eval pruned/llama --tasks ffprune_nextline
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

import ffenv
from ffenv.errors import FFPruneError
from ffenv.io import atomic_write_json
from ffenv.lm.data import evaluation_windows
from ffenv.lm.models import BUNDLED_MODELS, bundled_card, load_model, weights_fingerprint
from ffenv.lm.perplexity import perplexity
from ffprune.agents.experiments.bench import run_bench
from ffprune.agents.experiments.search import run_search
from ffprune.agents.experiments.suite import SUITES, check_readme, run_suite, update_readme
from ffprune.agents.methods.registry import METHODS
from ffprune.agents.tools.export import export_result
from ffprune.agents.tools.speed import bench_env
from ffprune.agents.tools.zeroshot import run_tasks

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def _command(name: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    def deco(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = fn
        return fn
    return deco


def parse_env_kwargs(pairs: list[str] | None) -> dict[str, Any]:
    """``["model=tiny-opt", "reward_windows=8"]`` → kwargs (values parsed as JSON when possible)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise FFPruneError(f"--env-kwarg / --agent-kwarg expect KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@_command("models")
def cmd_models(args: argparse.Namespace) -> int:
    """List the bundled models with their shape and dense perplexity (from their model cards)."""
    header = (f"{'name':<14}{'class':<20}{'params':>10}{'layers':>8}{'heads':>7}{'kv':>4}{'MB':>7}"
              f"{'calib ppl':>11}{'eval ppl':>10}")
    print(header)
    for name in BUNDLED_MODELS:
        c = bundled_card(name)
        print(f"{name:<14}{c['architecture']:<20}{c['parameters']:>10,}{c['layers']:>8}{c['heads']:>7}{c['kv_heads']:>4}"
              f"{c['size_on_disk_bytes'] / 1e6:>7.1f}{c['dense_ppl']['calib']:>11.2f}{c['dense_ppl']['eval']:>10.2f}")
    if args.measure:
        print("\nmeasured now (seq_len 256, all windows):")
        for name in BUNDLED_MODELS:
            model, tok = load_model(name)
            ppl = {s: perplexity(model, evaluation_windows(tok, "stdlib", s, seq_len=256)) for s in ("calib", "eval")}
            print(f"{name:<14} calib {ppl['calib']:.2f}  eval {ppl['eval']:.2f}")
    return 0


@_command("bench-env")
def cmd_bench_env(args: argparse.Namespace) -> int:
    """Median step time vs. median dense forward over the same reward tokens."""
    targets = tuple(args.target) if args.target else None
    result = bench_env(args.env, repeats=args.repeats, seed=args.seed, targets=targets, calibrate=not args.no_calibrate,
                       **parse_env_kwargs(args.env_kwarg))
    print(json.dumps(result, indent=2))
    return 0


@_command("search")
def cmd_search(args: argparse.Namespace) -> int:
    """One search with one agent; writes the result JSON atomically and can resume."""
    try:
        result = run_search(args.env, agent=args.agent, budget=args.budget, seed=args.seed, logdir=args.logdir,
                            out=args.out, target=args.target, warm_start=args.warm_start, resume=args.resume,
                            env_kwargs=_env_kwargs(args), curriculum=not args.no_curriculum,
                            warmup_fraction=args.warmup_fraction, agent_kwargs=parse_env_kwargs(args.agent_kwarg),
                            progress=not args.quiet, calibrate=args.calibrate)
    except KeyboardInterrupt:
        return 130
    best, cost = result["best"], result["cost"]
    print(f"{result['env_id']} {result['agent']} seed {result['seed']}: target {result['env_kwargs']['target_sparsity']}"
          f" realized sparsity {best['sparsity']:.4f}")
    print(f"  best reward {best['reward']:.4f} | calib ppl {best['calib_ppl']:.2f} (dense {best['dense_calib_ppl']:.2f})"
          f" | held-out eval ppl {best['eval_ppl']:.2f} (dense {best['dense_eval_ppl']:.2f})")
    if "eval_ppl_calib" in best:
        print(f"  after post-pruning calibration: held-out eval ppl {best['eval_ppl_calib']:.2f}")
    print(f"  cost: {cost['evaluations']} evaluations, {cost['tokens']:,} tokens, {cost['seconds']:.1f} s;"
          f" best found after {cost['evaluations_to_best']} evaluations")
    if args.out:
        print(f"  result: {args.out}")
    return 0


@_command("export")
def cmd_export(args: argparse.Namespace) -> int:
    """A finished search's best allocation as a pruned Hugging Face folder (checked by reloading it)."""
    facts = export_result(args.result, args.out, calibrate=args.calibrate, calib_alpha=args.calib_alpha,
                          force=args.force, speed=not args.no_speed, dtype=args.dtype)
    fig = facts["figures"]
    print(f"{args.out}: {facts['mode']} {facts['base_model']} at sparsity {facts['allocation']['sparsity']:.4f}"
          f"{' + calib' if facts['calibrated'] else ''}")
    print(f"  parameters {fig['params']['dense']:,} -> {fig['params']['pruned']:,};"
          f" weight files {facts['weights_bytes']:,} bytes")
    print(f"  held-out ppl {fig['eval_ppl']['pruned']:.4f} (dense {fig['eval_ppl']['dense']:.4f}); reloaded "
          f"{facts['reloaded']['eval_ppl']:.4f}")
    if "tokens_per_s" in fig:
        tps = fig["tokens_per_s"]
        print(f"  forward tokens/s {tps['dense']:,.0f} -> {tps['pruned']:,.0f} ({fig['speed_setup']})")
    return 0


@_command("eval")
def cmd_eval(args: argparse.Namespace) -> int:
    """Zero-shot tasks (lm-evaluation-harness) on an exported, bundled, local or hub model."""
    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    summary = run_tasks(model, tokenizer, args.tasks, limit=args.limit, batch_size=args.batch_size, seed=args.seed,
                        num_fewshot=args.num_fewshot, include_path=args.include_path)
    summary = {"model": args.model, "weights": weights_fingerprint(args.model), **summary}
    for name, m in summary["tasks"].items():
        acc = "n/a" if m.get("acc") is None else f"{m['acc']:.4f} ± {m.get('acc_stderr') or 0:.4f}"
        norm = "n/a" if m.get("acc_norm") is None else f"{m['acc_norm']:.4f}"
        print(f"{name}: acc {acc} | acc_norm {norm} | n {m.get('n')}")
    if args.out:
        atomic_write_json(args.out, summary)
        print(f"written: {args.out}")
    return 0


@_command("bench")
def cmd_bench(args: argparse.Namespace) -> int:
    """Every RL agent and baseline on one env (or every task of a suite); tables, plots and TensorBoard runs."""
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    if args.suite and (args.env is not None or args.target is not None):
        raise FFPruneError("--suite runs its own tasks (envs and targets); drop --env / --target")
    if args.readme is not None and not args.suite:
        raise FFPruneError("--readme writes a suite's section; it needs --suite")
    if args.readme is not None:
        check_readme(args.readme, args.suite)  # before hours of search, not after
    out = args.out or (f"docs/results/{args.suite}" if args.suite else "bench")
    kwargs = {"calibrate": not args.no_calibrate, "calib_alpha": args.calib_alpha, "workers": args.workers,
              "ray_address": args.ray_address, "progress": not args.quiet}
    try:
        if args.suite:
            run_suite(args.suite, out, args.budget, args.seeds, methods, _env_kwargs(args, workers=False) or None, **kwargs)
        else:
            run_bench(args.env or "FFPrune-Llama-v0", 200 if args.budget is None else args.budget,
                      3 if args.seeds is None else args.seeds, methods, out, args.target, _env_kwargs(args, workers=False),
                      **kwargs)
    except KeyboardInterrupt:
        cells = f"{out}/<task>/cells" if args.suite else f"{out}/cells"
        print(f"\ninterrupted; run the same command again to resume (finished cells in {cells} are kept)")
        return 130
    if args.suite:
        print((Path(out) / "suite.md").read_text())
        if args.readme is not None:
            update_readme(args.readme, out, args.suite)
            print(f"updated: the suite:{args.suite} section of {args.readme}")
        print(f"written: {out}/suite.md, suite.json, scores.csv, aggregate.png, profiles.png and one bench folder per task")
    else:
        print((Path(out) / "results.md").read_text())
        print(f"written: {out}/results.csv, results.md, curves.png, allocations.png; TensorBoard: {out}/tb")
    return 0


def _env_kwargs(args: argparse.Namespace, workers: bool = True) -> dict[str, Any]:
    """``--env-kwarg`` pairs plus the flags that are env settings (``--reward``; ``--workers``/``--ray-address``)."""
    kwargs = parse_env_kwargs(args.env_kwarg)
    if args.reward is not None:
        kwargs["reward"] = args.reward
    if workers and args.workers:
        kwargs["workers"] = args.workers
    if workers and args.ray_address is not None:
        kwargs["ray_address"] = args.ray_address
    return kwargs


def _scale_out_arguments(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--workers", type=int, default=0, help=f"{what} on this many Ray workers (a local Ray instance "
                   "with N CPUs, or N GPUs with --env-kwarg device=cuda); 0: in this process (default)")
    p.add_argument("--ray-address", help="an existing Ray cluster ('auto', 'ray://host:10001') instead of a local one")
    p.add_argument("--reward", choices=("plain", "calibrated"),
                   help="what the search optimises: plain held-in ppl ratio (default) or the ratio after Calib")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ffprune", description="FastForward Pruning benchmark")
    ap.add_argument("--version", action="version", version=f"ffprune {ffenv.__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("models", help="list the bundled models and their dense perplexity")
    p.add_argument("--measure", action="store_true", help="also re-measure the perplexities now")
    p = sub.add_parser("bench-env", help="time env.step against one dense forward of the reward tokens")
    p.add_argument("--env", default="FFPrune-Llama-v0")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", type=float, action="append", help="target sparsity to time (repeatable; default: "
                   "the env's, plus 0.5 for structured envs)")
    p.add_argument("--no-calibrate", action="store_true", help="skip timing the calibrated evaluation")
    p.add_argument("--env-kwarg", action="append", metavar="KEY=VALUE", help="override an env kwarg")
    p = sub.add_parser("search", help="search an allocation with one agent")
    p.add_argument("--env", default="FFPrune-Llama-v0")
    p.add_argument("--agent", default="fastforward", metavar="METHOD",
                   help=f"a registered method {list(METHODS)} or another stable-baselines3 algorithm (a2c, td3...)")
    p.add_argument("--budget", type=int, default=200, help="episodes (one evaluation each; heuristics use one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--logdir", default="runs", help="TensorBoard root: <logdir>/<env>/<agent>/seed<k>")
    p.add_argument("--out", help="result JSON (checkpoint beside it as <out>.ckpt)")
    p.add_argument("--target", type=float, help="target sparsity (default: the env's)")
    p.add_argument("--warm-start", help="policy file of an earlier fastforward search")
    p.add_argument("--resume", action="store_true", help="continue from <out>.ckpt")
    p.add_argument("--no-curriculum", action="store_true", help="final target and full fidelity from the start")
    p.add_argument("--warmup-fraction", type=float, default=0.4, help="share of the budget the curricula span")
    p.add_argument("--env-kwarg", action="append", metavar="KEY=VALUE", help="override an env kwarg")
    p.add_argument("--agent-kwarg", action="append", metavar="KEY=VALUE", help="override an agent setting")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--calibrate", action="store_true",
                   help="also report the held-out ppl after post-pruning calibration (structured envs)")
    _scale_out_arguments(p, "population evaluations")
    p = sub.add_parser("export", help="write a search result's pruned model as a Hugging Face folder")
    p.add_argument("result", help="result JSON of a finished `ffprune search --out`")
    p.add_argument("--out", required=True, help="output folder (must be absent or empty unless --force)")
    p.add_argument("--calibrate", action="store_true", help="fold post-pruning calibration into the kept weights "
                   "(structured envs)")
    p.add_argument("--calib-alpha", type=float, help="ridge penalty of the calibration (default: the env's)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--no-speed", action="store_true", help="skip the dense vs pruned forward timing")
    p.add_argument("--dtype", help="storage dtype (float32, bfloat16, float16; default: the source checkpoint's when it "
                   "stores the pruned weights exactly, else the compute dtype)")
    p = sub.add_parser("eval", help="zero-shot tasks (lm-evaluation-harness; pip install -e \".[eval]\") on a model")
    p.add_argument("model", help="an `ffprune export` folder, a bundled name, a local checkpoint or a hub id")
    p.add_argument("--tasks", default="ffprune_nextline", help="comma-separated lm-eval tasks (default: "
                   "ffprune_nextline, built offline from the corpus; e.g. arc_easy,arc_challenge,hellaswag,piqa,winogrande)")
    p.add_argument("--limit", type=int, help="first N documents of each task (default: all)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-fewshot", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--include-path", help="folder of extra lm-eval task YAML files")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", help="write the summary JSON here")
    p = sub.add_parser("bench", help="all agents and baselines on one env (or a suite): tables, plots, TensorBoard")
    p.add_argument("--env", help="the env (default FFPrune-Llama-v0)")
    p.add_argument("--suite", choices=sorted(SUITES), help="run every task of a benchmark suite instead of one env "
                   "(default --out docs/results/<suite>; its own budget and seeds unless given)")
    p.add_argument("--readme", help="with --suite: rewrite this file's '<!-- suite:NAME -->' section from the results")
    p.add_argument("--budget", type=int, help="episodes per search (heuristics use one; default 200, or the suite's)")
    p.add_argument("--seeds", type=int, help="seeds 0..K-1 per method (default 3, or the suite's)")
    p.add_argument("--methods", help=f"comma-separated subset of {list(METHODS)} (default: all that fit the env's mode)")
    p.add_argument("--target", type=float, help="target sparsity (default: the env's)")
    p.add_argument("--out", help="output folder (resumes what is already there; default bench)")
    p.add_argument("--no-calibrate", action="store_true", help="skip the post-pruning calibration column")
    p.add_argument("--calib-alpha", type=float, default=0.9, help="ridge penalty of the calibration")
    p.add_argument("--env-kwarg", action="append", metavar="KEY=VALUE", help="override an env kwarg")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _scale_out_arguments(p, "(method, seed) cells")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ffprune`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (FFPruneError, gym.error.Error) as err:  # bad input: one clear line, no traceback
        known = f" (ffprune ids: {', '.join(ffenv.env_ids())})" if isinstance(err, gym.error.Error) else ""
        print(f"ffprune {args.command}: error: {err}{known}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
