"""Time in this project is epoch seconds (UTC); these are its units, defined once."""

from __future__ import annotations

HOUR = 3_600
DAY = 86_400
