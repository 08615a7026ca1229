"""Progress bars that show on a terminal and stay quiet in logs.

Long work shows progress (tqdm), but a bar redrawn with carriage returns floods a log file or CI
output with thousands of updates (`make demo > log`). Every bar in segloc goes through
`progress_bar`, which draws only when stderr is a terminal; ruff's banned-api rule keeps direct
`tqdm` imports out of the rest of the code.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm import tqdm  # noqa: TID251 - the one place that may


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs) -> tqdm:
    """tqdm(iterable, **kwargs), drawn only if `enabled` and stderr is a terminal."""
    stream = kwargs.get("file") or sys.stderr
    on_terminal = bool(getattr(stream, "isatty", lambda: False)())
    return tqdm(iterable, disable=not (enabled and on_terminal), **kwargs)
