"""The old flat module paths (``ckd.plugins``, ``ckd.runner``, ...) for one more release."""

from __future__ import annotations

import warnings


def warn_moved(old: str, *new: str) -> None:
    """Warn, at the importer's line, that module ``old`` now lives at ``new``."""
    warnings.warn(f"{old} is deprecated and will be removed in the next release: import from "
                  f"{' / '.join(new)} instead", DeprecationWarning, stacklevel=3)
