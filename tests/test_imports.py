"""Layering: reading results (summaries, plots, sweeps) and starting the CLI load nothing that trains."""

import json
import subprocess
import sys

import pytest

TRAINING = ("avalanche", "torch", "ckd.benchmarking.runner", "ckd.benchmarking.methods", "ckd.distillation", "ckd.engines",
            "ckd.data")


READING = ["ckd", "ckd.reports.summary", "ckd.reports.plotting", "ckd.reports.sweeps", "ckd.benchmarking.sweep", "ckd.cli",
           "ckd.common.files", "ckd.common.errors"]


@pytest.mark.parametrize("module", READING + ["ckd.summary", "ckd.plotting", "ckd.sweep", "ckd.files"])
def test_reading_modules_do_not_import_the_training_stack(module):
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                           check=True).stdout))
    assert module in loaded  # the probe itself works
    assert not {name for name in loaded if name.split(".")[0] in TRAINING or name.startswith(TRAINING)}


def test_the_probe_sees_the_training_stack_when_it_is_imported():
    code = "import json, sys, ckd.benchmarking.runner; print(json.dumps(sorted(sys.modules)))"
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                           check=True).stdout))
    assert {"avalanche", "torch", "ckd.benchmarking.runner"} <= loaded


def test_the_ema_evaluation_does_not_load_the_kd_plugin():
    code = "import json, sys, ckd.distillation.parts.weight_averaging; print(json.dumps(sorted(sys.modules)))"
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                           check=True).stdout))
    assert "ckd.distillation.parts.weight_averaging" in loaded and "ckd.distillation.plugin" not in loaded
