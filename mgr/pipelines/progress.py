"""Live progress of a catalog job: files done / total, errors, files/s, audio-minutes/s, ETA.

On a terminal the line is rewritten in place (``\\r``) at most a few times a second;
otherwise (Ray job logs, a pipe, CI) one line is printed every ``interval`` seconds
(``$MGR_PROGRESS_SECONDS``, default 30) and once at the end. The driver feeds it the small
per-block totals the pipeline's last stage yields: nothing per file.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, TextIO

__all__ = ["Progress", "progress_interval"]


def progress_interval() -> float:
    """Seconds between progress lines when the output is not a terminal."""
    try:
        return max(0.0, float(os.environ.get("MGR_PROGRESS_SECONDS", "30")))
    except ValueError:
        return 30.0


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """One progress line for a job over ``total`` files.

    Parameters
    ----------
    verb : str
        What the job does to a file (``"labeled"``, ``"extracted"``).
    total : int
        Files to do in this run.
    stream : file, optional
        Where lines go (default ``sys.stderr``, so ``--json`` output stays clean).
    interval : float, optional
        Seconds between lines off a terminal (default :func:`progress_interval`).
    enabled : bool
        False prints nothing (``--json``, library use with ``log`` silenced).
    """

    def __init__(self, verb: str, total: int, *, stream: TextIO | None = None, interval: float | None = None,
                 enabled: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.verb, self.total = verb, int(total)
        self.stream = stream or sys.stderr
        self.interval = progress_interval() if interval is None else float(interval)
        self.enabled = enabled and self.total > 0
        self.clock = clock
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = clock()
        self.last = self.started
        self.files = self.errors = 0
        self.audio_s = 0.0
        self._open_line = False

    def update(self, *, files: int = 0, errors: int = 0, audio_s: float = 0.0) -> None:
        """Add one block's totals and print if it is time to."""
        self.files += int(files)
        self.errors += int(errors)
        self.audio_s += float(audio_s or 0.0)
        now = self.clock()
        every = 0.2 if self.tty else self.interval
        if self.enabled and now - self.last >= every:
            self.last = now
            self._emit(now)

    def line(self, now: float | None = None) -> str:
        """``labeled 120/400 files (30%), 2 errors, 3.1 files/s, 9.4 audio-min/s, ETA 1:30``."""
        elapsed = max(1e-9, (self.clock() if now is None else now) - self.started)
        rate = self.files / elapsed
        pct = 100.0 * self.files / self.total if self.total else 100.0
        eta = _clock((self.total - self.files) / rate) if rate > 0 and self.files < self.total else "-"
        return (f"{self.verb} {self.files}/{self.total} files ({pct:.0f}%), {self.errors} error(s), "
                f"{rate:.2f} files/s, {self.audio_s / 60.0 / elapsed:.2f} audio-min/s, ETA {eta}")

    def _emit(self, now: float) -> None:
        text = self.line(now)
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self._open_line = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """The final line (on a terminal: ends the line rewritten in place)."""
        if not self.enabled:
            return
        self._emit(self.clock())
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False
