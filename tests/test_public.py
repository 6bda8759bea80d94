"""The public face: ``from ckd import ...``, keyword-only construction, defaults defined once,
and the old flat module paths, which still work for one release with a DeprecationWarning."""

import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import ckd
from ckd.benchmarking.methods import METHOD_DEFAULTS
from ckd.distillation.ema import EMA_HALF_LIFE, EMAWeights
from ckd.distillation.parts.weight_averaging import EMAEvaluationPlugin
from ckd.distillation.teachers import (
    DEFAULT_TEACHER,
    TEACHER_NAMES,
    TEACHERS,
    CachedTeacher,
    EMATeacher,
    EnsembleTeacher,
    SnapshotTeacher,
    Teacher,
)

# Old path -> (a name it gave, the module that defines that name now).
OLD_PATHS = {
    "ckd.plugins": ("KDReplayPlugin", "ckd.distillation.plugin"),
    "ckd.config": ("KDReplayConfig", "ckd.distillation.config"),
    "ckd.teacher": ("EMAWeights", "ckd.distillation.ema"),
    "ckd.weight_averaging": ("EMAEvaluationPlugin", "ckd.distillation.parts.weight_averaging"),
    "ckd.runner": ("RunConfig", "ckd.benchmarking.run_config"),
    "ckd.streams": ("make_stream", "ckd.data.streams"),
    "ckd.vectorized": ("run_vectorized", "ckd.benchmarking.vectorized_runs"),
    "ckd.sweep": ("summarize_sweep", "ckd.reports.sweeps"),
    "ckd.summary": ("summarize", "ckd.reports.summary"),
    "ckd.models": ("last_linear", "ckd.distillation.layers"),
}


def test_every_public_name_is_listed_by_dir_and_loads_from_the_module_that_defines_it():
    assert set(ckd.__all__) <= set(dir(ckd))
    for name in ckd.__all__:
        if name == "__version__":
            continue
        value = getattr(ckd, name)
        assert value is getattr(importlib.import_module(value.__module__), name)
    assert {"KDReplayPlugin", "KDReplayConfig", "EMAEvaluationPlugin", "Teacher", "LogitMatchingPlugin"} <= set(ckd.__all__)
    with pytest.raises(AttributeError):
        ckd.NoSuchName  # noqa: B018


def test_importing_the_public_face_warns_about_nothing():
    code = "import warnings; warnings.simplefilter('error', DeprecationWarning); from ckd import KDReplayPlugin, Teacher"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_package_says_it_is_typed():
    assert (Path(ckd.__file__).parent / "py.typed").is_file()


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_an_old_path_warns_and_gives_the_same_object(old):
    name, new = OLD_PATHS[old]
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated.*{new.replace('.', '[.]')}"):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)


def test_the_warning_points_at_the_importing_line(tmp_path):
    script = tmp_path / "user.py"
    script.write_text("import warnings\nwarnings.simplefilter('always')\nfrom ckd.plugins import KDReplayPlugin\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    assert f"{script}:3: DeprecationWarning: ckd.plugins is deprecated" in out.stderr


@pytest.mark.parametrize("make", [
    lambda: SnapshotTeacher(True),
    lambda: CachedTeacher(True),
    lambda: EnsembleTeacher(2),
    lambda: EMATeacher(0.5),
    lambda: EMAEvaluationPlugin(0.5),
    lambda: EMAWeights(0.5),
    lambda: ckd.KDReplayConfig(100),
    lambda: ckd.CurrentDistillationPlugin(0.5),
])
def test_constructors_take_keywords_only(make):
    with pytest.raises(TypeError, match="positional"):
        make()


def test_the_ema_half_life_and_the_teacher_names_are_defined_once():
    for cls in (EMAWeights, EMATeacher, EMAEvaluationPlugin):
        assert inspect.signature(cls).parameters["half_life"].default is EMA_HALF_LIFE
    assert METHOD_DEFAULTS["kd-ema"]["ema_half_life"] is EMA_HALF_LIFE
    assert TEACHER_NAMES == tuple(TEACHERS) and DEFAULT_TEACHER in TEACHER_NAMES
    assert ckd.KDReplayConfig().teacher == DEFAULT_TEACHER


def test_a_users_teacher_subclasses_the_public_base():
    class Fixed(Teacher):
        name = "fixed"

        def soft_targets(self, sample, x):
            return x, None

    assert issubclass(SnapshotTeacher, Teacher) and isinstance(Fixed(), Teacher)
    assert importlib.import_module("ckd.distillation.teachers")._Teacher is Teacher  # the name before it was public


def test_all_lists_exactly_the_lazy_exports():
    assert sorted(ckd.__all__) == sorted([*ckd._EXPORTS, "__version__"])
