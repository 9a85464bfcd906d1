"""The independent references the cross-check tests compare against: sed_eval (the event
metrics), heareval 2021.1.3 (its own PARAM_GRID and fold assignment) and hearvalidator
2021.0.2 (the HEAR API checker). `make install` installs them (the `test` extra in
pyproject.toml, and heareval/hearvalidator with --no-deps in the Makefile), so they run in every
fresh clone's `make test`.

A missing reference FAILS its test: a cross-check that silently skips checks nothing. A
developer whose environment lacks them on purpose sets MWMAE_SKIP_MISSING_REFERENCES=1 to skip
them instead; it is ignored where CI is set (CI runs `.ci/run` with CI=true), so CI can never
skip them.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

SKIP_ENV = "MWMAE_SKIP_MISSING_REFERENCES"


def reference(module: str) -> ModuleType:
    """Import `module` (an independent reference); fail the test when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if os.environ.get(SKIP_ENV) == "1" and not os.environ.get("CI"):
            pytest.skip(f"independent reference {module} missing ({SKIP_ENV}=1)")
        pytest.fail(
            f"independent reference {module} is missing ({exc}); `make install` installs it "
            f"(the test extra plus the Makefile's --no-deps line); set {SKIP_ENV}=1 to skip it "
            "where it is absent on purpose (never in CI)",
            pytrace=False,
        )
