"""How a run is scored: accuracy on every test experience from in-memory tensors, with the
EMA of the weights when the strategy carries one (the trained weights scored too), the
student against its teacher after each experience, and periodic evaluation."""

from __future__ import annotations

import math

import torch
from avalanche.core import SupervisedPlugin
from avalanche.models.dynamic_modules import MultiTaskModule
from avalanche.models.utils import avalanche_forward

from ckd.distillation.diagnostics import compare_with_teacher, find_distiller
from ckd.distillation.parts.weight_averaging import evaluation_model
from ckd.engines.amp import AMP_DTYPES

__all__ = ["AccuracyEvaluator", "PeriodicEvaluation", "Scores", "TeacherDiagnostics"]


class AccuracyEvaluator:
    """Accuracy of a model on every test experience of a stream, from in-memory tensors.

    Class-IL accuracy takes the argmax over all outputs; task-IL accuracy the
    argmax over the classes of the sample's own experience.
    """

    def __init__(self, stream, device: torch.device, batch_size: int, amp: str | None = None) -> None:

        self.device = device
        self.batch_size = batch_size
        self.autocast_dtype = AMP_DTYPES[amp] if amp is not None else None
        self.test_sets = [
            tuple(t.to(device) for t in stream.test_tensors(j)) for j in range(len(stream.benchmark.test_stream))
        ]
        n_out = stream.n_classes
        self.class_masks = torch.zeros(len(self.test_sets), n_out, dtype=torch.bool, device=device)
        for j, classes in enumerate(stream.classes_per_experience):
            self.class_masks[j, classes] = True

    @torch.inference_mode()
    def accuracies(self, model: torch.nn.Module) -> tuple[list[float], list[float]]:
        """Class-IL and task-IL accuracy per test experience. A multi-head model
        scores 0 on an experience whose task it has no head for yet."""

        was_training = model.training
        model.eval()
        class_il, task_il = [], []
        heads = set(model.known_train_tasks_labels) if isinstance(model, MultiTaskModule) else None
        for j, (x, y, t) in enumerate(self.test_sets):
            if heads is not None and not set(t.unique().tolist()) <= heads:
                class_il.append(0.0)
                task_il.append(0.0)
                continue
            correct = torch.zeros((), dtype=torch.long, device=self.device)
            correct_task = torch.zeros((), dtype=torch.long, device=self.device)
            for start in range(0, x.shape[0], self.batch_size):
                sl = slice(start, start + self.batch_size)
                with torch.autocast(self.device.type, self.autocast_dtype, enabled=self.autocast_dtype is not None):
                    logits = avalanche_forward(model, x[sl], t[sl]).float()
                correct += (logits.argmax(1) == y[sl]).sum()
                mask = self.class_masks[j, : logits.shape[1]]
                masked = logits.masked_fill(~mask, float("-inf"))
                correct_task += (masked.argmax(1) == y[sl]).sum()
            class_il.append(correct.item() / max(x.shape[0], 1))
            task_il.append(correct_task.item() / max(x.shape[0], 1))
        model.train(was_training)
        return class_il, task_il


class Scores:
    """The accuracy matrices of a run: the model it is scored with (an EMA of the
    weights when the strategy carries one) and, when that is not the trained model,
    the trained weights too, so every run can be compared both ways."""

    def __init__(self, evaluator: AccuracyEvaluator) -> None:
        self.evaluator = evaluator
        self.matrix: list[list[float]] = []
        self.task_matrix: list[list[float]] = []
        self.trained: tuple[list[list[float]], list[list[float]]] = ([], [])

    def add(self, strategy, repeat: int = 1) -> list[float]:
        """Score after an experience (``repeat`` rows for joint training); returns the scored row."""
        model, name = evaluation_model(strategy)
        row, task_row = self.evaluator.accuracies(model)
        self.matrix += [row] * repeat
        self.task_matrix += [task_row] * repeat
        if name != "model":
            trained_row, trained_task_row = self.evaluator.accuracies(strategy.model)
            self.trained[0].extend([trained_row] * repeat)
            self.trained[1].extend([trained_task_row] * repeat)
        return row

    @property
    def trained_weights(self) -> tuple[list[list[float]], list[list[float]]] | None:
        return self.trained if self.trained[0] else None

    def state_dict(self) -> dict:
        return {"matrix": self.matrix, "task_matrix": self.task_matrix, "trained": self.trained}

    def load_state_dict(self, state: dict) -> None:
        self.matrix, self.task_matrix, self.trained = state["matrix"], state["task_matrix"], state["trained"]


class TeacherDiagnostics(SupervisedPlugin):
    """At the end of each experience, before the distillation plugin replaces its teacher,
    compare the student with the teacher it was distilled from (that of the strategy's
    ``ckd.distillation.diagnostics.Distiller``): on the held-out sets of the experiences the teacher
    was trained on (``ckd.distillation.diagnostics.compare_with_teacher``) and, for a plugin that
    replays, on its buffer (``buffer_agreement``, ``buffer_kl``)."""

    def __init__(self, evaluator: AccuracyEvaluator) -> None:
        super().__init__()
        self.evaluator = evaluator
        self.records: list[dict | None] = []

    def after_training_exp(self, strategy, **kwargs) -> None:

        distiller = find_distiller(strategy.plugins)
        teacher = distiller.teacher if distiller is not None else None
        current = strategy.experience.current_experience
        if teacher is None or current == 0:
            self.records.append(None)
            return
        x, y, t = (torch.cat(parts) for parts in zip(*self.evaluator.test_sets[:current]))
        dtype = self.evaluator.autocast_dtype  # the run's scoring precision
        with torch.autocast(self.evaluator.device.type, dtype, enabled=dtype is not None):
            report = compare_with_teacher(strategy.model, teacher, x, t, y, distiller.temperature)
            buffer = getattr(distiller, "buffer", None)
            if buffer is not None and not buffer.is_empty:
                on_buffer = compare_with_teacher(strategy.model, teacher, buffer.x, buffer.task, buffer.y,
                                                 distiller.temperature)
                report["buffer_agreement"], report["buffer_kl"] = on_buffer["agreement"], on_buffer["kl"]
        # NaN (an empty teacher-right or teacher-wrong part) is null in the JSON.
        self.records.append({k: (None if math.isnan(v) else v) for k, v in report.items()})

    def state_dict(self) -> dict:
        return {"records": self.records}

    def load_state_dict(self, state: dict) -> None:
        self.records = state["records"]


class PeriodicEvaluation(SupervisedPlugin):
    """Evaluate on every test experience each ``every`` training iterations."""

    def __init__(self, evaluator: AccuracyEvaluator, every: int) -> None:
        super().__init__()
        self.evaluator = evaluator
        self.every = every
        self.iteration = 0
        self.points: list[tuple[int, int, list[float]]] = []

    def after_training_iteration(self, strategy, **kwargs) -> None:
        self.iteration += 1
        if self.iteration % self.every == 0:
            accuracies, _ = self.evaluator.accuracies(evaluation_model(strategy)[0])
            self.points.append((self.iteration, strategy.experience.current_experience, accuracies))

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "points": self.points}

    def load_state_dict(self, state: dict) -> None:
        self.iteration, self.points = state["iteration"], state["points"]

    def record(self) -> dict[str, list]:
        return {
            "every": self.every,
            "iteration": [p[0] for p in self.points],
            "experience": [p[1] for p in self.points],
            "accuracy": [p[2] for p in self.points],
        }
