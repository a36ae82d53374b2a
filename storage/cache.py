"""Where this machine keeps what it can always rebuild: downloads of remote artifacts (storage/store.py)
and a migrated Prefect database to copy into fresh homes (flows/server_db.py). Kept light: Prefect's
server process reads it."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "SCALELAW_CACHE"


def machine_cache() -> Path:
    """`$SCALELAW_CACHE`, else ~/.cache/scalelaw."""
    return Path(os.environ.get(CACHE_ENV, "~/.cache/scalelaw")).expanduser()
