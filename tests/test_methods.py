import json
from pathlib import Path

import pytest

from ckd.benchmarking.methods import LEGACY_KD_ARGS, METHOD_DEFAULTS, make_strategy, resolve_method_args
from ckd.benchmarking.run_config import config_from_result

RESULTS = sorted(Path(__file__).parents[1].joinpath("benchmarks", "results").rglob("*__seed*.json"))


def test_every_committed_result_maps_to_a_config_that_runs_the_same_parts():
    assert len(RESULTS) > 100
    for path in RESULTS:
        result = json.loads(path.read_text())
        config = config_from_result(result)
        recorded = dict(result["config"]["method_args"])
        resolved = config.resolved()["method_args"]
        # EMA scoring, once a kd-* method setting (absent: off), is the run's setting now.
        ema = result["config"].get("eval_ema_half_life", recorded.pop("eval_ema_half_life", 0.0))
        assert config.eval_ema_half_life == ema, path.name
        # What the result recorded is kept; what it did not record takes the value it had then.
        assert {k: resolved[k] for k in recorded} == recorded, path.name
        if config.method.startswith("kd-"):
            for key in set(resolved) - set(recorded):
                expected = LEGACY_KD_ARGS.get(key, METHOD_DEFAULTS[config.method][key])
                assert resolved[key] == expected, (path.name, key)


def _plugins(method, **overrides):
    from torch import nn

    from ckd.benchmarking.methods import TrainSettings

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    args = resolve_method_args(method, overrides)
    strategy = make_strategy(method, model, TrainSettings(0.1, 10, 1, 100, "cpu"), args)
    return [type(p).__name__ for p in strategy.plugins if type(p).__module__.startswith("ckd")], strategy


@pytest.mark.parametrize(
    "method, overrides, parts, teacher",
    [
        ("kd-replay", {}, ["KDReplayPlugin"], "SnapshotTeacher"),
        ("kd-ema", {}, ["KDReplayPlugin"], "EMATeacher"),
        ("kd-multi-teacher", {}, ["KDReplayPlugin"], "EnsembleTeacher"),
        ("kd-replay-cached", {}, ["KDReplayPlugin"], "CachedTeacher"),
        ("kd-replay", {"teacher": "own"}, ["KDReplayPlugin"], "OwnExperienceTeacher"),
        (
            "kd-replay-lwf",
            {"current_classes_only": True, "logit_weight": 0.5, "weight_aligning": True},
            ["WeightAligningPlugin", "KDReplayPlugin", "LogitMatchingPlugin", "AsymmetricCrossEntropyPlugin",
             "CurrentDistillationPlugin"],
            "SnapshotTeacher",
        ),
        ("kd-lwf", {}, ["CurrentDistillationPlugin"], None),
    ],
)
def test_methods_compose_the_parts_their_settings_name(method, overrides, parts, teacher):
    names, strategy = _plugins(method, **overrides)
    assert [n for n in names if n != "_ProgressPlugin"] == parts
    kd = next((p for p in strategy.plugins if type(p).__name__ == "KDReplayPlugin"), None)
    assert (type(kd.teacher_part).__name__ if kd else None) == teacher


@pytest.mark.parametrize("known", [True, False])
def test_the_current_rows_distil_from_the_kd_teacher_on_its_known_classes_or_on_every_output(known):
    names, strategy = _plugins("kd-replay", teacher="ema", current_alpha=0.3, current_known_classes_only=known)
    kd, current = (next(p for p in strategy.plugins if type(p).__name__ == n)
                   for n in ("KDReplayPlugin", "CurrentDistillationPlugin"))
    assert current.kd is kd and current.alpha == 0.3 and current.known_classes_only is known
    assert type(kd.teacher_part).__name__ == "EMATeacher"


def test_eval_ema_is_a_run_setting_not_a_method_setting():
    with pytest.raises(ValueError, match="eval_ema_half_life is a run setting"):
        resolve_method_args("kd-replay", {"eval_ema_half_life": 0.3})
