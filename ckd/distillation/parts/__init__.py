"""Plugins that compose with the KD plugin (or stand alone): logit matching, distillation on
current data, feature and relation terms, weight aligning, EMA evaluation, the diagnostics metric."""
