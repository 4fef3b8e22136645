"""The fault suite: real gateway processes, the in-process SMSC simulator, real Postgres (fixtures from
tests/conftest.py). Every test here is marked `chaos` (select with ``-m chaos``, skip with ``-m "not chaos"``).

`tests/` is not a package: pytest puts tests/ (rootdir conftest) and tests/chaos/ on sys.path, so modules
here import `gw`, `pg` and `harness` directly. bench/chaos.py adds the same two folders itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _folder in (_HERE.parent, _HERE):  # also when this folder is run on its own (-p no:cacheprovider tests/chaos)
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))
