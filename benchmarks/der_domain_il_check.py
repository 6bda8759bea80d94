"""Why Avalanche's DER collapses on Permuted/Rotated-MNIST at the DER paper's lr 0.2.

Three checks, each printed as a table:

1. ``alignment`` — Avalanche's ``ClassBalancedBufferWithLogits`` with a frozen
   model (lr 0): every stored logit row must equal ``model(x)`` of the sample it
   is stored with, in a class-IL stream (split-mnist) and a domain-IL stream
   ("control": the same comparison with the logits shifted by one row).
2. ``loss`` — Avalanche's ``DER`` on the domain stream: the largest value of
   each loss term per experience, the largest |logit|, non-finite steps, and the
   top Hessian eigenvalue of each term at the first experience boundary next to
   ``2 / lr`` (plain SGD is unstable along directions sharper than that).
   Avalanche ER (``ReplayPlugin``) at the same lr is the control.
3. ``timing`` — one DER loop (same model, data, buffer, loss, lr) run with the
   two ways of timing the logit targets: as in the authors' code (distil from
   the first minibatch on, logits stored when a sample enters the memory) and as
   in Avalanche (distil only from the next experience on, logits of the
   experience's final model), plus the mix of the two.

Example::

    python benchmarks/der_domain_il_check.py --data-root /work/shared/datasets \\
        --experiences 3 --max-train 20000
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ckd.benchmarking.methods import TrainSettings, make_strategy
from ckd.benchmarking.scoring import AccuracyEvaluator
from ckd.data.models import make_model
from ckd.data.streams import make_stream
from ckd.distillation.buffer import ReplayBuffer

MEM_SIZE = 500
BATCH_SIZE = 128
REPLAY_BATCH_SIZE = 128
ALPHA = 1.0
TIMINGS = {
    "authors": "distil from the first minibatch; logits stored when the sample enters memory",
    "late-onset": "distil from the next experience on; logits stored when the sample enters memory",
    "avalanche": "distil from the next experience on; logits of the experience's final model",
}


# ----------------------------------------------------------------- helpers


def top_hessian_eigenvalue(loss_fn: Callable[[], Tensor], model: nn.Module, iters: int = 30) -> float:
    """Largest eigenvalue of the Hessian of ``loss_fn()`` w.r.t. ``model``'s
    parameters, by power iteration on Hessian-vector products."""
    params = [p for p in model.parameters() if p.requires_grad]
    v = [torch.randn_like(p) for p in params]
    eigenvalue = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
        hv = torch.autograd.grad(sum((g * u).sum() for g, u in zip(grads, v)), params)
        eigenvalue = float(sum((h * u).sum() for h, u in zip(hv, v)))
        v = [h.detach() for h in hv]
    return eigenvalue


def average_accuracy(evaluator: AccuracyEvaluator, model: nn.Module, seen: int) -> float:
    """Class-IL accuracy averaged over the first ``seen`` test experiences."""
    accuracies, _ = evaluator.accuracies(model)
    return sum(accuracies[:seen]) / seen


def domain_stream(args: argparse.Namespace):
    return make_stream(
        args.stream,
        seed=args.seed,
        data_root=args.data_root,
        n_experiences=args.experiences,
        max_train_per_experience=args.max_train,
    )


def der_args(beta: float) -> dict:
    return {"mem_size": MEM_SIZE, "replay_batch_size": REPLAY_BATCH_SIZE, "alpha": ALPHA, "beta": beta}


# ------------------------------------------------------- 1. logit alignment


def buffer_logit_errors(strategy) -> tuple[Tensor, Tensor]:
    """``(M,)`` max |stored logits - model(x)| of each row of a DER strategy's
    buffer, and the same with the stored logits shifted by one row (a control:
    what a misalignment looks like)."""
    model = strategy.model.eval()
    errors, shifted = [], []
    with torch.no_grad():
        for x, _, _, stored in DataLoader(strategy.storage_policy.buffer, batch_size=1000):
            out = model(x)
            errors.append((out - stored).abs().amax(dim=1))
            shifted.append((out - stored.roll(1, dims=0)).abs().amax(dim=1))
    return torch.cat(errors), torch.cat(shifted)


def check_alignment(args: argparse.Namespace) -> None:
    print("\n== 1. logit/sample alignment in Avalanche's DER buffer (frozen model: lr 0) ==")
    print(f"{'stream':16s} {'exp':>3s} {'buffer':>6s} {'max |err|':>10s} {'misaligned':>10s} {'control':>8s}")
    streams = [
        ("split-mnist", make_stream("split-mnist", seed=args.seed, data_root=args.data_root,
                                    max_train_per_experience=args.max_train)),
        (args.stream, domain_stream(args)),
    ]
    for name, stream in streams:
        torch.manual_seed(args.seed)
        model = make_model("mlp", stream.input_shape, stream.n_classes)
        settings = TrainSettings(0.0, BATCH_SIZE, 1, 1000, "cpu")
        strategy = make_strategy("der", model, settings, der_args(beta=0.5), seed=args.seed)
        for i, experience in enumerate(stream.benchmark.train_stream):
            strategy.train(experience)
            errors, shifted = buffer_logit_errors(strategy)
            misaligned = (errors > 1e-4).float().mean()
            control = (shifted > 1e-4).float().mean()
            print(f"{name:16s} {i:3d} {errors.numel():6d} {errors.max():10.3g} {misaligned:10.1%} {control:8.1%}")


# ------------------------------------------------ 2. Avalanche DER loss terms


class LossTermRecorder(SupervisedPlugin):
    """Per experience: the largest value of each loss term and of |logit|, and
    the number of steps whose output was not finite. For DER strategies, also
    the top Hessian eigenvalue of each term on the first replayed minibatch."""

    def __init__(self) -> None:
        super().__init__()
        self.largest: dict[str, Tensor] = {}
        self.non_finite = torch.zeros((), dtype=torch.long)
        self.sharpness: dict[str, float] = {}

    def before_training_exp(self, strategy, **kwargs) -> None:
        self.largest = {}
        self.non_finite = torch.zeros((), dtype=torch.long)

    def after_forward(self, strategy, **kwargs) -> None:
        out = strategy.mb_output.detach()
        terms = {"ce_current": F.cross_entropy(out, strategy.mb_y)}
        if getattr(strategy, "replay_loader", None) is not None:
            m = strategy.batch_size_mem
            terms = {
                "ce_current": F.cross_entropy(out[m:], strategy.mb_y[m:]),
                "mse_replay": F.mse_loss(out[:m], strategy.batch_logits),
                "ce_replay": F.cross_entropy(out[:m], strategy.mb_y[:m]),
            }
            if not self.sharpness:
                self._measure_sharpness(strategy)
        terms["max|logit|"] = out.abs().max()
        for name, value in terms.items():
            self.largest[name] = torch.maximum(self.largest.get(name, value), value)
        self.non_finite += (~torch.isfinite(out).all()).long()

    def _measure_sharpness(self, strategy) -> None:
        """Hessian eigenvalues at the first DER step, before any update on the new experience."""
        m, model = strategy.batch_size_mem, strategy.model
        x, y, targets = strategy.mb_x, strategy.mb_y, strategy.batch_logits
        terms = {
            "ce_current": lambda: F.cross_entropy(model(x[m:]), y[m:]),
            "alpha*mse_replay": lambda: ALPHA * F.mse_loss(model(x[:m]), targets),
            "ce_replay": lambda: F.cross_entropy(model(x[:m]), y[:m]),
            "ER loss (mean CE over both)": lambda: F.cross_entropy(model(x), y),
        }
        self.sharpness = {name: top_hessian_eigenvalue(fn, model) for name, fn in terms.items()}


def run_avalanche(args: argparse.Namespace, method: str, lr: float, beta: float) -> None:
    stream = domain_stream(args)
    torch.manual_seed(args.seed)
    model = make_model("mlp", stream.input_shape, stream.n_classes)
    recorder = LossTermRecorder()
    method_args = (
        der_args(beta)
        if method == "der"
        else {"mem_size": MEM_SIZE, "replay_batch_size": REPLAY_BATCH_SIZE, "policy": "reservoir"}
    )
    settings = TrainSettings(lr, BATCH_SIZE, 1, 1000, "cpu")
    strategy = make_strategy(method, model, settings, method_args, seed=args.seed, extra_plugins=[recorder])
    evaluator = AccuracyEvaluator(stream, torch.device("cpu"), 1000)
    label = f"{method} lr={lr} beta={beta}" if method == "der" else f"ER lr={lr}"
    print(f"\n-- Avalanche {label} --")
    for i, experience in enumerate(stream.benchmark.train_stream):
        torch.manual_seed(args.seed * 1000 + i)
        strategy.train(experience)
        acc = average_accuracy(evaluator, strategy.model, i + 1)
        terms = "  ".join(f"{k}={float(v):.3g}" for k, v in recorder.largest.items())
        print(f"exp {i}: avg acc {acc:.3f} | largest {terms} | non-finite steps {int(recorder.non_finite)}")
    if recorder.sharpness:
        print(f"top Hessian eigenvalue at the first boundary (SGD is stable below 2/lr = {2 / lr:.0f}):")
        for name, value in recorder.sharpness.items():
            print(f"    {name:28s} {value:8.1f}")


def check_loss_terms(args: argparse.Namespace) -> None:
    print(f"\n== 2. loss terms of Avalanche's DER on {args.stream} ==")
    run_avalanche(args, "der", lr=args.lr, beta=0.5)
    run_avalanche(args, "der", lr=args.lr, beta=0.0)
    run_avalanche(args, "der", lr=args.lr / 2, beta=0.5)
    run_avalanche(args, "replay", lr=args.lr, beta=0.0)


# ----------------------------------------------------- 3. timing of targets


def replay_mse_sharpness(model: nn.Module, memory: ReplayBuffer) -> tuple[float, float]:
    """Top Hessian eigenvalue of ``alpha * MSE`` on one replay minibatch, and the
    root-mean-square of its target logits."""
    sample = memory.sample(REPLAY_BATCH_SIZE)
    sharpness = top_hessian_eigenvalue(lambda: ALPHA * F.mse_loss(model(sample.x), sample.logits), model)
    return sharpness, float(sample.logits.pow(2).mean().sqrt())


def train_der_loop(stream, timing: str, lr: float, beta: float, seed: int) -> list[float]:
    """DER(++) with a stream-wide reservoir memory (``ckd.distillation.buffer.ReplayBuffer``).

    Loss per step: ``CE(current) + alpha * MSE(replayed logits, stored logits)
    + beta * CE(replayed)``, one replay minibatch for both replay terms.
    ``timing`` (see ``TIMINGS``) decides which memory is replayed and which
    logits it holds; the memory itself is filled the same way in every mode.
    Prints one line per experience; returns the average accuracy after each.
    """
    torch.manual_seed(seed)
    model = make_model("mlp", stream.input_shape, stream.n_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    evaluator = AccuracyEvaluator(stream, torch.device("cpu"), 1000)
    every_class = torch.ones(stream.n_classes, dtype=torch.bool)
    memory = ReplayBuffer(MEM_SIZE, "reservoir", seed=seed)
    replayed = memory if timing == "authors" else None  # late modes replay a snapshot taken at the boundary
    averages = []
    for i, experience in enumerate(stream.benchmark.train_stream):
        torch.manual_seed(seed * 1000 + i)
        notes = ""
        if i == 1:
            sharpness, rms = replay_mse_sharpness(model, replayed)
            notes += f" | at start: target rms {rms:.2f}, eig(alpha*mse) {sharpness:.1f} (2/lr = {2 / lr:.0f})"
        largest_mse = torch.zeros(())
        for x, y, t in DataLoader(experience.dataset, batch_size=BATCH_SIZE, shuffle=True):
            out = model(x)
            loss = F.cross_entropy(out, y)
            if replayed is not None and not replayed.is_empty:
                sample = replayed.sample(REPLAY_BATCH_SIZE)
                replay_out = model(sample.x)
                mse = F.mse_loss(replay_out, sample.logits)
                largest_mse = torch.maximum(largest_mse, mse.detach())
                loss = loss + ALPHA * mse + beta * F.cross_entropy(replay_out, sample.y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            slots = memory.reservoir_add(x, y, t, experience=i)
            kept = slots >= 0
            memory.set_logits(slots[kept], out.detach()[kept], every_class)
        if i >= 1:
            notes += f" | at end: eig(alpha*mse) {replay_mse_sharpness(model, replayed)[0]:.1f}"
        if timing == "avalanche":
            own = (memory.experience == i).nonzero().squeeze(1)
            with torch.no_grad():
                memory.set_logits(own, model(memory.x[own]), every_class)
        if timing != "authors":
            replayed = copy.deepcopy(memory)
        acc = average_accuracy(evaluator, model, i + 1)
        averages.append(acc)
        print(f"exp {i}: avg acc {acc:.3f} | largest mse {float(largest_mse):.3g}{notes}", flush=True)
    return averages


def check_timing(args: argparse.Namespace) -> None:
    print(f"\n== 3. the same DER loop, two timings of the logit targets ({args.stream}, lr {args.lr}) ==")
    stream = domain_stream(args)
    for timing, description in TIMINGS.items():
        print(f"\n-- {timing}: {description} --")
        train_der_loop(stream, timing, args.lr, beta=0.5, seed=args.seed)


CHECKS = {"alignment": check_alignment, "loss": check_loss_terms, "timing": check_timing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=None, help="folder holding MNIST/ (torchvision layout)")
    parser.add_argument("--experiences", type=int, default=3, help="experiences of the domain stream")
    parser.add_argument("--max-train", type=int, default=20000, help="training samples per experience")
    parser.add_argument("--stream", default="permuted-mnist", choices=["permuted-mnist", "rotated-mnist"])
    parser.add_argument("--lr", type=float, default=0.2, help="SGD learning rate (DER paper: 0.2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checks", nargs="+", default=list(CHECKS), choices=list(CHECKS))
    args = parser.parse_args()
    if args.experiences < 2:
        parser.error(f"--experiences must be >= 2 (replay starts at the second), got {args.experiences}")
    torch.set_num_threads(1)
    start = time.perf_counter()
    with warnings.catch_warnings():
        # Avalanche's @deprecated re-enables its DeprecationWarning on every call,
        # so filters cannot hold it back; drop warnings while the checks run.
        warnings.showwarning = lambda *args, **kwargs: None
        for name in args.checks:
            CHECKS[name](args)
    print(f"\n({time.perf_counter() - start:.0f}s)")


if __name__ == "__main__":
    main()
