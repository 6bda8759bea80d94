"""What every layer may use: one-line errors and atomic file writes. Imports nothing of ckd."""
