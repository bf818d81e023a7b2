"""The water engine: the only module that imports WNTR (EPANET); its errors become ours."""

from __future__ import annotations

import wntr  # noqa: F401
