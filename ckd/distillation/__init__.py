"""The distillation core: loss math, the replay buffer, teachers, the config, the KD plugin
and its parts (``ckd.distillation.parts``). Imports nothing of ckd above ``ckd.common``."""
