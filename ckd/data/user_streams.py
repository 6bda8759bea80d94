"""A user's benchmark as a stream: an Avalanche benchmark, or a ``package.module:function`` that returns one."""

from __future__ import annotations

from pathlib import Path

from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.utils import (
    ConstantSequence,
    DataAttribute,
    TaskLabels,
)
from torch import Tensor

from ckd.data.stream import Stream, StreamOptions, annotate
from ckd.data.user_code import call_with_accepted, load_callable

__all__ = ["stream_from_benchmark", "user_stream"]


def stream_from_benchmark(benchmark, name: str) -> Stream:
    """A :class:`Stream` around a user's Avalanche classification benchmark.

    Any benchmark of Avalanche's public API whose train and test streams have one
    experience each per step: ``class_incremental_benchmark``, ``nc_benchmark``,
    ``benchmark_from_datasets`` (with or without ``with_classes_timeline``). Samples
    are ``(x, y)`` or ``(x, y, task)``, ``x`` a tensor after the dataset's transforms.
    Experiences are rebuilt so that every sample carries its task label (0 when the
    dataset has none) and every experience the class and task attributes the plugins
    read. Classes per experience: the experience's ``classes_in_this_experience``,
    else the set of its targets; ``n_classes``: the benchmark's ``n_classes``, else
    the largest class + 1; input shape: that of the first training sample. Scenario:
    ``task-il`` if an experience has a task label other than 0, ``domain-il`` if every
    experience holds the same classes, else ``class-il``. A benchmark that lacks
    something a run needs is refused with one line that says what.
    """
    train_stream, test_stream = benchmark.train_stream, benchmark.test_stream
    n_train, n_test = len(train_stream), len(test_stream)
    if n_train == 0:
        raise ValueError(f"stream {name!r}: the benchmark has no training experience")
    if n_test != n_train:
        raise ValueError(
            f"stream {name!r}: {n_train} training experiences but {n_test} test experience(s); ckd scores "
            "every training experience on a test experience of its own (ni_benchmark has one test set for "
            "all: build per-experience test sets, e.g. with benchmark_from_datasets)"
        )
    train = [_labelled_experience(e, f"training experience {i}", name) for i, e in enumerate(train_stream)]
    test = [_labelled_experience(e, f"test experience {i}", name) for i, e in enumerate(test_stream)]
    classes = [c for _, c, _ in train]
    tasks = [t for _, _, t in train]
    largest = max(max(c) for _, c, _ in train + test)
    n_classes = max(int(getattr(benchmark, "n_classes", None) or 0), largest + 1)
    rebuilt = benchmark_from_datasets(train=[d for d, _, _ in train], test=[d for d, _, _ in test])
    annotate(rebuilt, classes, tasks)
    if any(tasks):
        scenario = "task-il"
    elif len(classes) > 1 and all(c == classes[0] for c in classes):
        scenario = "domain-il"
    else:
        scenario = "class-il"
    return Stream(
        name=name,
        scenario=scenario,
        benchmark=rebuilt,
        n_classes=n_classes,
        input_shape=tuple(train[0][0].train()[0][0].shape),
        classes_per_experience=classes,
    )


def _labelled_experience(experience, where: str, name: str):
    """``(dataset, classes, task)`` of a user's experience: its dataset with a task label
    in every sample (0 when it has none), its sorted classes and its one task label."""

    def refuse(problem: str) -> ValueError:
        return ValueError(f"stream {name!r}: {where} {problem}")

    dataset = experience.dataset
    if not callable(getattr(dataset, "update_data_attribute", None)) or not hasattr(dataset, "targets"):
        raise refuse(
            f"holds a {type(dataset).__name__}, not an Avalanche classification dataset with targets "
            "(wrap it with avalanche.benchmarks.utils.as_classification_dataset)"
        )
    if len(dataset) == 0:
        raise refuse("has no samples")
    fields = dataset[0]
    n_fields = len(fields) if isinstance(fields, (tuple, list)) else 1
    labels = getattr(dataset, "targets_task_labels", None)
    if n_fields == 2:  # (x, y): add the task label to every sample
        values = labels.data if labels is not None else ConstantSequence(0, len(dataset))
        dataset = dataset.update_data_attribute("targets_task_labels", TaskLabels(values))
    elif n_fields == 3 and labels is None:  # (x, y, task) with no task attribute: read the third field once
        values = [int(item[2]) for item in dataset.eval()]
        dataset = dataset.update_data_attribute(
            "targets_task_labels", DataAttribute(values, "targets_task_labels", use_in_getitem=False)
        )
    elif n_fields != 3:
        raise refuse(f"yields samples of {n_fields} field(s); ckd reads (x, y) or (x, y, task label)")
    tasks = sorted(int(t) for t in dataset.targets_task_labels.uniques)
    if len(tasks) != 1:
        raise refuse(f"holds task labels {tasks}; ckd needs one task label per experience")
    for mode in (dataset.train(), dataset.eval()):
        x = mode[0][0]
        if not isinstance(x, Tensor):
            raise refuse(
                f"yields inputs of type {type(x).__name__}, not tensors: give its dataset a transform "
                "that makes tensors (torchvision's ToTensor)"
            )
    known = getattr(experience, "classes_in_this_experience", None)
    classes = sorted({int(c) for c in (known if known is not None else dataset.targets)})
    if classes[0] < 0:
        raise refuse(f"has class {classes[0]}; classes must be integers >= 0")
    return dataset, classes, tasks[0]


def user_stream(name: str, root: Path, options: StreamOptions) -> Stream:
    """The stream ``package.module:function`` returns (a :class:`Stream` or an Avalanche benchmark).

    It gets ``seed``, ``data_root`` and ``checksum`` if it declares them, and each
    other option the user set (``n_experiences=4``...), which it must declare.
    """
    from dataclasses import asdict


    function = load_callable(name, "stream")
    always = {"seed": options.seed, "data_root": root, "checksum": options.checksum}
    unset = asdict(StreamOptions())
    chosen = {k: v for k, v in asdict(options).items() if k not in always and v != unset[k]}
    built = call_with_accepted(function, name, {**always, **chosen}, always)
    if isinstance(built, Stream):
        return built
    if not hasattr(built, "train_stream") or not hasattr(built, "test_stream"):
        raise ValueError(f"stream {name!r} returned {type(built).__name__}, not an Avalanche benchmark or a ckd Stream")
    return stream_from_benchmark(built, name)
