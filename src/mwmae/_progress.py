"""Progress bars that suit where they are written: redrawn bars on a terminal, plain lines in a log.

`progress_bar(...)` takes tqdm's arguments and returns a tqdm bar. On a terminal it is tqdm's
own bar. Off a terminal (a file, a pipe, CI) a redrawn bar would write every redraw into the log
(`make demo > log` used to write 650 KB of them), so the bar writes a plain line instead, at most
every `LINE_INTERVAL_S` seconds, and a last one when it closes. `MWMAE_PROGRESS=bars` or `lines`
forces either.
"""

from __future__ import annotations

import io
import os
import sys
import time
from typing import Any

from tqdm import tqdm as _TerminalBar
from tqdm.auto import tqdm as _AutoBar

LINE_INTERVAL_S = 10.0


class LineProgress(_TerminalBar):
    """A tqdm bar that prints one plain line (no carriage returns) per `mininterval` seconds
    at most, and the final state when it closes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("mininterval", LINE_INTERVAL_S)
        kwargs["dynamic_ncols"] = False
        self._last_line = -float("inf")
        super().__init__(*args, **kwargs)

    def refresh(self, nolock: bool = False, lock_args: Any = None) -> bool:
        # set_postfix / set_description refresh at once: keep to the interval here too.
        if self.disable or time.monotonic() - self._last_line < self.mininterval:
            return False
        return super().refresh(nolock=nolock, lock_args=lock_args)

    def set_description_str(self, desc: str | None = None, refresh: bool = True) -> None:
        # A new stage name is worth a line at once (the interval is for counts and postfixes).
        if self.disable:  # a disabled tqdm bar has no description to change
            return
        changed = (desc or "") != (self.desc or "")
        super().set_description_str(desc, refresh=False)
        if changed and refresh:
            self.display()

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.set_description_str(desc + ": " if desc else "", refresh)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        text = self.__str__() if msg is None else msg
        if not text.strip():  # tqdm clears a bar with an empty message: nothing to clear
            return False
        self._last_line = time.monotonic()
        self.fp.write(text.replace("\r", "") + "\n")
        self.fp.flush()
        return True

    def close(self) -> None:
        if getattr(self, "disable", True):
            return
        if self.leave is not False:  # the final state, whatever the interval
            self._ema_dt = lambda: None  # the overall rate, as tqdm shows it at the end
            self.display()
        fp, self.fp = self.fp, io.StringIO()  # tqdm's own closing output goes nowhere
        try:
            super().close()
        finally:
            self.fp = fp


def _lines(file: Any) -> bool:
    forced = os.environ.get("MWMAE_PROGRESS", "").lower()
    if forced in ("bars", "lines"):
        return forced == "lines"
    stream = file if file is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return not (callable(isatty) and isatty())


def progress_bar(*args: Any, **kwargs: Any) -> _TerminalBar:
    """A tqdm bar (same arguments) that writes plain lines when its file is not a terminal."""
    if _lines(kwargs.get("file")):
        return LineProgress(*args, **kwargs)
    return _AutoBar(*args, **kwargs)
