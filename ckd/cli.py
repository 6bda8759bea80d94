"""The ``ckd`` command: run, suite, sweep, summary, plot."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

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
            raise SystemExit(f"ckd: --set expects key=value, got {item!r}")
        out[key.replace("-", "_")] = _parse_value(value)
    return out


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="results", help="folder for result JSONs (default: results/)")
    p.add_argument("--data-root", default=None, help="folder holding MNIST/ and FashionMNIST/ (else $CKD_DATA_ROOT)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ckd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run methods on a stream for some seeds")
    r.add_argument("--stream", default="split-digits")
    r.add_argument("--method", nargs="+", default=["kd-replay"], help="one or more method names")
    r.add_argument("--seeds", nargs="+", type=int, default=[0])
    r.add_argument("--mem-size", type=int, default=None, help="replay memory size (methods with a buffer)")
    r.add_argument("--device", default="cpu")
    r.add_argument("--epochs", type=int, default=None)
    r.add_argument("--lr", type=float, default=None)
    r.add_argument("--batch-size", type=int, default=None)
    r.add_argument("--model", default=None, choices=["mlp", "cnn"])
    r.add_argument("--task-labels", action="store_true", help="task-incremental (split streams)")
    r.add_argument("--n-experiences", type=int, default=None)
    r.add_argument("--eval-every", type=int, default=None, help="also evaluate every N iterations")
    r.add_argument("--label", default=None)
    r.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="method settings, e.g. --set alpha=0.5 temperature=4")
    r.add_argument("--from-result", default=None, metavar="FILE.json",
                   help="re-run exactly the configuration and seed of a result file")
    r.add_argument("--force", action="store_true", help="re-run even if a matching result exists")
    _add_common(r)

    s = sub.add_parser("suite", help="run a TOML suite (resumable)")
    s.add_argument("suite")
    s.add_argument("--device", default=None)
    s.add_argument("--force", action="store_true")
    s.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    s.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default 1)")
    _add_common(s)

    w = sub.add_parser("sweep", help="temperature x alpha sweep on a validation split, with the distiller's-dilemma figure")
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
    w.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="other method settings")
    w.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default 1)")
    w.add_argument("--force", action="store_true")
    w.add_argument("--format", default="png", choices=["png", "pdf", "svg"])
    _add_common(w)

    m = sub.add_parser("summary", help="mean ± std over seeds, as Markdown and CSV")
    m.add_argument("results")
    m.add_argument("--out", default=None, help="folder for summary.md/.csv (default: the results folder)")

    pl = sub.add_parser("plot", help="forgetting curves, accuracy heatmaps, method comparison")
    pl.add_argument("results")
    pl.add_argument("--out", default="figures")
    pl.add_argument("--format", default="png", choices=["png", "pdf", "svg"])
    pl.add_argument("--labels", nargs="+", default=None, metavar="PATTERN",
                    help="only these settings (shell patterns on the label, e.g. '*@500')")
    return parser


def _print_result(path: Path, ran: bool) -> None:
    result = json.loads(path.read_text())
    status = "ran" if ran else "kept (config unchanged)"
    print(
        f"{result['stream']:<16} {result['label']:<20} seed {result['seed']}: "
        f"accuracy {100 * result['final_average_accuracy']:.2f}%  "
        f"forgetting {100 * result['average_forgetting']:.2f}%  "
        f"time {result['wall_time_s']:.1f}s  [{status}] -> {path}"
    )


def _cmd_run(args) -> int:
    from ckd.methods import resolve_method_args
    from ckd.runner import RunConfig, config_from_result, run_to_file

    if args.from_result:
        result = json.loads(Path(args.from_result).read_text())
        overrides = {"device": args.device} if args.device != "cpu" else {}
        configs = [config_from_result(result, **overrides)]
    else:
        sets = _parse_sets(args.set)
        fields = {
            k: v for k, v in dict(
                epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, model=args.model,
                n_experiences=args.n_experiences, eval_every=args.eval_every, label=args.label,
            ).items() if v is not None
        }
        configs = []
        defaults = {method: resolve_method_args(method) for method in args.method}
        if len(args.method) > 1:
            unknown = sorted(set(sets) - set().union(*defaults.values()))
            if unknown:
                raise ValueError(f"no method among {args.method} has the setting(s) {unknown}")
        for method in args.method:
            method_args = dict(sets)
            if args.mem_size is not None:
                method_args["mem_size"] = args.mem_size
            if len(args.method) > 1:  # shared settings go to the methods that have them
                method_args = {k: v for k, v in method_args.items() if k in defaults[method]}
            for seed in args.seeds:
                configs.append(RunConfig(
                    stream=args.stream, method=method, seed=seed, device=args.device,
                    task_labels=args.task_labels, method_args=method_args, **fields,
                ))
    paths = []
    for config in configs:
        path, ran = run_to_file(config, args.out, args.data_root, progress=not args.quiet, skip_existing=not args.force)
        _print_result(path, ran)
        paths.append(path)
    if len(paths) > 1:
        from ckd.summary import format_markdown, summarize

        print()
        print(format_markdown(summarize([json.loads(p.read_text()) for p in paths])))
    return 0


def _cmd_suite(args) -> int:
    from ckd.runner import result_path
    from ckd.suite import load_suite

    configs = load_suite(args.suite, device=args.device)
    if args.dry_run:
        for c in configs:
            print(result_path(args.out, c))
        return 0
    _run_all(configs, args)
    return 0


def _run_all(configs, args) -> list[Path]:
    """Run (or keep) every config, ``args.jobs`` at a time; the result paths in order."""
    from ckd.runner import run_to_file

    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if args.jobs == 1:
        paths = []
        for k, config in enumerate(configs, 1):
            if not args.quiet:
                print(f"[{k}/{len(configs)}]", end=" ", flush=True)
            path, ran = run_to_file(config, args.out, args.data_root, progress=not args.quiet, skip_existing=not args.force)
            _print_result(path, ran)
            paths.append(path)
        return paths
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context, initializer=_die_with_parent) as pool:
        futures = {
            pool.submit(run_to_file, c, args.out, args.data_root, False, not args.force): k
            for k, c in enumerate(configs)
        }
        paths: list[Path | None] = [None] * len(configs)
        for future in as_completed(futures):
            path, ran = future.result()
            _print_result(path, ran)
            paths[futures[future]] = path
    return paths


def _cmd_sweep(args) -> int:
    from ckd.plotting import plot_distillers_dilemma
    from ckd.runner import RunConfig, write_json_atomic
    from ckd.sweep import format_sweep, recommend, summarize_sweep, sweep_configs

    fields = {k: v for k, v in dict(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size).items() if v is not None}
    base = RunConfig(
        stream=args.stream, method=args.method, device=args.device,
        validation_fraction=args.validation_fraction, method_args=_parse_sets(args.set), **fields,
    )
    configs = sweep_configs(base, args.temperature, args.alpha, args.seeds)
    paths = _run_all(configs, args)
    results = [json.loads(p.read_text()) for p in paths]
    rows = summarize_sweep(results)
    best = recommend(rows)
    out = Path(args.out)
    write_json_atomic(out / "sweep.json", {
        "stream": args.stream, "method": args.method, "validation_fraction": args.validation_fraction,
        "rows": rows, "recommended": {"temperature": best["temperature"], "alpha": best["alpha"]},
    })
    figure = plot_distillers_dilemma(results, out / f"distillers_dilemma.{args.format}")
    print()
    print(format_sweep(rows))
    print(f"\nrecommended: temperature={best['temperature']:g} alpha={best['alpha']:g} "
          f"({best['accuracy']:.2f}% validation accuracy)")
    print(f"wrote {out / 'sweep.json'} and {figure}")
    return 0


def _die_with_parent() -> None:
    """A killed suite must not leave its workers running (Linux: PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def _cmd_summary(args) -> int:
    from ckd.summary import format_markdown, load_results, summarize, write_summary

    results = load_results(args.results)
    if not results:
        print(f"ckd: no result JSON under {args.results}", file=sys.stderr)
        return 1
    print(format_markdown(summarize(results)))
    md, csv = write_summary(results, args.out or args.results)
    print(f"\nwrote {md} and {csv}")
    return 0


def _cmd_plot(args) -> int:
    from ckd.plotting import plot_all

    paths = plot_all(args.results, args.out, fmt=args.format, labels=args.labels)
    if not paths:
        print(f"ckd: no result JSON under {args.results}", file=sys.stderr)
        return 1
    for p in paths:
        print(p)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        commands = {"run": _cmd_run, "suite": _cmd_suite, "sweep": _cmd_sweep, "summary": _cmd_summary, "plot": _cmd_plot}
        return commands[args.command](args)
    except (ValueError, FileNotFoundError) as err:
        print(f"ckd: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
