"""``ff-keras audit DIR``: the composition audit of an annotate run (three estimators with bootstrap
CIs), or ``--store-val-confusion`` for a model; the body is ``ff_keras.cli.annotate.audit_main``."""

from __future__ import annotations

from ff_keras.cli.annotate import audit_main as main

__all__ = ["main"]
