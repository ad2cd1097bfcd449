"""Where edgec keeps what it reuses between runs: tuning databases, device sysroots.

$EDGEC_CACHE, else $XDG_CACHE_HOME/edgec, else ~/.cache/edgec.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    if os.environ.get("EDGEC_CACHE"):
        return Path(os.environ["EDGEC_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgec"
