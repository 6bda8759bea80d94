"""The ``ckd`` command: run, suite, sweep, summary, plot."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from ckd.common.errors import one_line

# Each command imports what it runs when it runs: starting the CLI, --help and the reading
# commands load neither torch nor Avalanche (tests/test_imports.py).

__all__ = ["main"]


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_sets(items: Sequence[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        out[key.replace("-", "_")] = _parse_value(value)
    return out


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="results", help="folder for result JSONs (default: results/)")
    p.add_argument("--data-root", default=None,
                   help="folder holding the datasets (MNIST/, cifar-10-batches-py/, cifar-100-python/, "
                        "tiny-imagenet-200/; else $CKD_DATA_ROOT)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--logger", nargs="+", default=[], metavar="NAME",
                   help="Avalanche loggers: text, csv, tensorboard, wandb (offline unless configured); "
                        "they write under OUT/logs/<run>/")


def _add_ray(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="every run a Ray task: alone, on a Ray instance started here for the runs; "
                        "'auto' or ray://HOST:10001, on that cluster (needs pip install -e \".[ray]\")")
    p.add_argument("--gpus-per-run", type=float, default=1.0,
                   help="with --ray and --device cuda: GPUs each run asks for, fractions share one (default 1)")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ckd", description=__doc__)
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", help="on an error, print the Python traceback")
    sub = parser.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", parents=[debug], help="run methods on a stream for some seeds")
    r.add_argument("--stream", default="split-digits", help="a stream name or package.module:function")
    r.add_argument("--method", nargs="+", default=["kd-replay"], help="one or more method names")
    r.add_argument("--seeds", nargs="+", type=int, default=[0])
    r.add_argument("--mem-size", type=int, default=None, help="replay memory size (methods with a buffer)")
    r.add_argument("--device", default="cpu")
    r.add_argument("--epochs", type=int, default=None)
    r.add_argument("--lr", type=float, default=None)
    r.add_argument("--batch-size", type=int, default=None)
    r.add_argument("--model", default=None,
                   help="mlp, cnn, resnet18, reduced-resnet18, reduced-resnet18-cosine or package.module:function (default: the stream's)")
    r.add_argument("--amp", default=None, choices=["bf16", "fp16"], help="mixed precision (default: float32)")
    r.add_argument("--amp-teachers", action=argparse.BooleanOptionalAction, default=None,
                   help="the kd-* teachers' forward passes under --amp too (default: yes)")
    r.add_argument("--no-augmentation", action="store_true", help="train without the stream's crop and flip")
    r.add_argument("--cuda-graphs", action="store_true",
                   help="replay the model's training forward and backward passes from CUDA graphs (--device cuda)")
    r.add_argument("--eval-ema", type=float, default=None, metavar="HALF_LIFE",
                   help="score an EMA of the weights with this half-life (a fraction of an experience; 0: the trained weights), for every method; the trained weights are always scored too (default: the stream's, 0.3 or 1.0)")
    r.add_argument("--no-checksum", action="store_true",
                   help="skip the MD5 checks of the dataset files (re-packed copies)")
    r.add_argument("--task-labels", action="store_true", help="task-incremental (split streams)")
    r.add_argument("--n-experiences", type=int, default=None)
    r.add_argument("--max-train", type=int, default=None, metavar="N",
                   help="at most N training samples per experience (a quick run)")
    r.add_argument("--max-test", type=int, default=None, metavar="N", help="at most N test samples per experience")
    r.add_argument("--eval-every", type=int, default=None, help="also evaluate every N iterations")
    r.add_argument("--loader", default=None, choices=["tensor", "avalanche"],
                   help="training data from in-memory tensors (default) or Avalanche's DataLoader")
    r.add_argument("--vectorize", action="store_true",
                   help="train the seeds of each method as one stacked model, in one pass (ckd.engines.vectorized)")
    r.add_argument("--label", default=None)
    r.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="method settings, e.g. --set alpha=0.5 temperature=4")
    r.add_argument("--from-result", default=None, metavar="FILE.json",
                   help="re-run exactly the configuration and seed of a result file")
    r.add_argument("--force", action="store_true", help="re-run even if a matching result exists")
    r.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default 1)")
    _add_common(r)

    s = sub.add_parser("suite", parents=[debug], help="run a TOML suite (resumable)")
    s.add_argument("suite")
    s.add_argument("--device", default=None)
    s.add_argument("--amp", default=None, choices=["bf16", "fp16"], help="mixed precision for every run")
    s.add_argument("--amp-teachers", action=argparse.BooleanOptionalAction, default=None,
                   help="every run's kd-* teachers' forward passes under --amp too (default: the suite's; yes)")
    s.add_argument("--cuda-graphs", action="store_true",
                   help="every run replays its model's training passes from CUDA graphs (--device cuda)")
    s.add_argument("--eval-ema", type=float, default=None, metavar="HALF_LIFE",
                   help="score every run with an EMA of the weights of this half-life (0: off; default: the suite's)")
    s.add_argument("--no-checksum", action="store_true", help="skip the MD5 checks of the dataset files")
    s.add_argument("--force", action="store_true")
    s.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    s.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default 1)")
    _add_common(s)
    _add_ray(s)

    w = sub.add_parser("sweep", parents=[debug], help="temperature x alpha sweep on a validation split, with the distiller's-dilemma figure")
    w.add_argument("--stream", default="split-digits")
    w.add_argument("--method", default="kd-replay")
    w.add_argument("--temperature", nargs="+", type=float, default=[0.5, 1.0, 2.0, 4.0, 8.0, 16.0])
    w.add_argument("--alpha", nargs="+", type=float, default=[1.0],
                   help="values of alpha (current_alpha for kd-lwf)")
    w.add_argument("--seeds", nargs="+", type=int, default=[0])
    w.add_argument("--validation-fraction", type=float, default=0.1,
                   help="share of each experience's training data held out to score the sweep (default 0.1)")
    w.add_argument("--device", default="cpu")
    w.add_argument("--epochs", type=int, default=None)
    w.add_argument("--lr", type=float, default=None)
    w.add_argument("--batch-size", type=int, default=None)
    w.add_argument("--eval-ema", type=float, default=None, metavar="HALF_LIFE",
                   help="score an EMA of the weights (0: off; default: the stream's)")
    w.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="other method settings")
    w.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default 1)")
    w.add_argument("--force", action="store_true")
    w.add_argument("--format", default="png", choices=["png", "pdf", "svg"])
    _add_common(w)
    _add_ray(w)
    w.add_argument("--scheduler", default=None, choices=["asha"],
                   help="with --ray: the grid runs as Ray Tune trials and ASHA stops poor settings early")

    m = sub.add_parser("summary", parents=[debug], help="mean ± std over seeds, as Markdown and CSV")
    m.add_argument("results")
    m.add_argument("--out", default=None, help="folder for summary.md/.csv (default: the results folder)")

    pl = sub.add_parser("plot", parents=[debug], help="forgetting curves, accuracy heatmaps, method comparison")
    pl.add_argument("results")
    pl.add_argument("--out", default="figures")
    pl.add_argument("--format", default="png", choices=["png", "pdf", "svg"])
    pl.add_argument("--labels", nargs="+", default=None, metavar="PATTERN",
                    help="only these settings (shell patterns on the label, e.g. '*@500')")
    return parser


def _print_outcome(outcome, prefix: str = "", debug: bool = False) -> None:
    c = outcome.config
    if outcome.stopped:
        print(f"{prefix}{c.stream:<16} {c.name:<20} seed {c.seed}: stopped early by the sweep's scheduler")
        return
    if not outcome.ok:
        print(f"ckd: error: {c.stream} {c.name} seed {c.seed}: {outcome.error}", file=sys.stderr)
        if debug:
            print(outcome.traceback, file=sys.stderr)
        return
    result = json.loads(outcome.path.read_text())
    status = "ran" if outcome.ran else "kept (config unchanged)"
    if result.get("diverged"):
        status += f"; diverged (non-finite parameters) in experience {result['diverged_at_experience']}"
    print(
        f"{prefix}{result['stream']:<16} {result['label']:<20} seed {result['seed']}: "
        f"accuracy {100 * result['final_average_accuracy']:.2f}%  "
        f"forgetting {100 * result['average_forgetting']:.2f}%  "
        f"time {result['wall_time_s']:.1f}s  [{status}] -> {outcome.path}"
    )


def _plan(args, configs=(), ray_address: str | None = None, vectorize: bool = False, tune: bool = False):
    """The :class:`ckd.benchmarking.orchestration.Plan` the arguments describe."""
    from ckd.benchmarking.orchestration import Plan

    return Plan(
        configs, args.out, jobs=args.jobs, ray_address=getattr(args, "ray", None) or ray_address, tune=tune,
        early_stopping=getattr(args, "scheduler", None), gpus_per_run=getattr(args, "gpus_per_run", 1.0),
        vectorize=vectorize,
        data_root=args.data_root, force=args.force, loggers=args.logger, progress=not args.quiet,
    )


def _run_plan(args, configs, **options) -> list:
    """Run the plan of ``args`` and ``configs`` (:func:`_plan` takes ``options``) through
    ``ckd.benchmarking.orchestration.run_plan``, printing each run as it finishes."""
    from ckd.benchmarking.orchestration import run_plan

    plan = _plan(args, configs, **options)
    done = []

    def report(outcome) -> None:
        done.append(outcome)
        prefix = f"[{len(done)}/{len(plan.configs)}] " if len(plan.configs) > 1 and not args.quiet else ""
        _print_outcome(outcome, prefix, args.debug)

    return run_plan(plan, report)


def _run_settings(args) -> tuple[dict[str, Any], dict[str, Any]]:
    """The method settings (``--set``, ``--mem-size``) and the run settings ``ckd run`` was given."""
    settings = _parse_sets(args.set)
    if args.mem_size is not None:
        settings["mem_size"] = args.mem_size
    common = {
        k: v for k, v in dict(
            epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, model=args.model, amp=args.amp,
            checksum=False if args.no_checksum else None, eval_ema_half_life=args.eval_ema,
            augmentation=False if args.no_augmentation else None, cuda_graphs=True if args.cuda_graphs else None,
            amp_teachers=args.amp_teachers, n_experiences=args.n_experiences, eval_every=args.eval_every, label=args.label,
            max_train_per_experience=args.max_train, max_test_per_experience=args.max_test,
            loader=args.loader,
        ).items() if v is not None
    }
    return settings, common


def _cmd_run(args) -> int:
    from ckd.benchmarking.run_config import config_from_result
    from ckd.benchmarking.suite import method_configs
    from ckd.reports.summary import format_markdown, summarize

    settings, common = _run_settings(args)
    if args.from_result:
        result = json.loads(Path(args.from_result).read_text())
        configs = [config_from_result(result, **({"device": args.device} if args.device != "cpu" else {}))]
    else:
        configs = method_configs(
            stream=args.stream, methods=args.method, seeds=args.seeds, settings=settings,
            device=args.device, task_labels=args.task_labels, **common,
        )
    outcomes = _run_plan(args, configs, vectorize=args.vectorize)
    if len(outcomes) > 1:
        print()
        print(format_markdown(summarize([json.loads(o.path.read_text()) for o in outcomes])))
    return 0


def _cmd_suite(args) -> int:
    from ckd.benchmarking.run_config import result_path
    from ckd.benchmarking.suite import load_suite, suite_ray_address, suite_vectorizes

    configs = load_suite(args.suite, device=args.device)
    overrides = dict(amp=args.amp, checksum=False if args.no_checksum else None, eval_ema_half_life=args.eval_ema,
                     cuda_graphs=True if args.cuda_graphs else None, amp_teachers=args.amp_teachers)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        from dataclasses import replace

        configs = [replace(c, **overrides) for c in configs]
    if args.dry_run:
        for c in configs:
            print(result_path(args.out, c))
        return 0
    ray_address = args.ray or suite_ray_address(args.suite)
    vectorize = suite_vectorizes(args.suite)
    if vectorize and ray_address is not None:
        raise ValueError(f"{args.suite} vectorizes its seeds in one process; run it without Ray")
    _run_plan(args, configs, ray_address=ray_address, vectorize=vectorize)
    return 0


def _cmd_sweep(args) -> int:
    from ckd.benchmarking.orchestration import make_scheduler
    from ckd.benchmarking.run_config import RunConfig
    from ckd.benchmarking.sweep import run_sweep
    from ckd.reports.sweeps import format_sweep

    common = dict(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, eval_ema_half_life=args.eval_ema)
    common = {k: v for k, v in common.items() if v is not None}
    base = RunConfig(
        stream=args.stream, method=args.method, device=args.device,
        validation_fraction=args.validation_fraction, method_args=_parse_sets(args.set), **common,
    )
    sweep = run_sweep(
        base, args.temperature, args.alpha, args.seeds, out_dir=args.out,
        scheduler=make_scheduler(_plan(args, tune=True)),
        fmt=args.format,
        on_outcome=lambda outcome: _print_outcome(outcome, debug=args.debug),
    )
    best = sweep.recommended
    print()
    print(format_sweep(sweep.rows))
    print(f"\nrecommended: temperature={best['temperature']:g} alpha={best['alpha']:g} "
          f"({best['accuracy']:.2f}% validation accuracy)")
    print(f"wrote {sweep.summary_path} and {sweep.figure_path}")
    return 0


def _cmd_summary(args) -> int:
    from ckd.reports.summary import format_markdown, load_results, summarize, write_summary

    results = load_results(args.results)
    if not results:
        print(f"ckd: no result JSON under {args.results}", file=sys.stderr)
        return 1
    print(format_markdown(summarize(results)))
    md, csv = write_summary(results, args.out or args.results)
    print(f"\nwrote {md} and {csv}")
    return 0


def _cmd_plot(args) -> int:
    from ckd.reports.plotting import plot_all

    paths = plot_all(args.results, args.out, fmt=args.format, labels=args.labels)
    if not paths:
        print(f"ckd: no result JSON under {args.results}", file=sys.stderr)
        return 1
    for p in paths:
        print(p)
    return 0


# Third-party warnings that say nothing about a ckd run: qpsolvers, imported by
# Avalanche's GEM plugin, warns at import that it found no solver (ckd uses none).
_KNOWN_WARNINGS = (
    ("no QP solver found", UserWarning),
)


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    for message, category in _KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    commands = {"run": _cmd_run, "suite": _cmd_suite, "sweep": _cmd_sweep, "summary": _cmd_summary, "plot": _cmd_plot}
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("ckd: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        print(f"ckd: error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
