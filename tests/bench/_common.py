"""What the benchmark scripts share: where the real recordings are."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def music_dir() -> Path:
    """../shared/data/music beside the repository (the real recordings), or exit saying so."""
    for cand in (ROOT.parent / "shared" / "data" / "music", Path("/work/shared/data/music")):
        if cand.is_dir():
            return cand
    sys.exit("needs ../shared/data/music (real recordings)")
