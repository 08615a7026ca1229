"""Error types shared by the library and the command line, each with a meaningful exit code.

Callers catch `SeglocError` to tell a user-facing problem (bad input, missing dependency) from a
bug; the CLI maps each class to its exit code so scripts can react without parsing messages.
"""

from __future__ import annotations


class SeglocError(Exception):
    """A problem the user can fix; the message says what and how."""

    exit_code = 1


class InputError(SeglocError, ValueError):
    """Bad input data: corrupt or foreign file, wrong image encoding, NaN pose, bad parameters."""

    exit_code = 4


class DependencyError(SeglocError, ImportError):
    """A required library or build artefact is missing or broken; the message names the fix."""

    exit_code = 3


class CheckFailed(SeglocError):
    """A run completed but its result failed a stated check (e.g. a benchmark floor)."""

    exit_code = 5


EXIT_OK = 0
EXIT_INTERRUPTED = 130


def require(module: str, fix: str = "run `make setup` (or `make test`) to (re)install the venv"):
    """Import `module` or raise a DependencyError naming the fix, instead of a bare traceback."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # also catches broken shared libraries below the module
        raise DependencyError(f"cannot import {module!r} ({exc}); {fix}") from exc
