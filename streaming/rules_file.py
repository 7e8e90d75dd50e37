"""The rules file the scorer serves, reloaded between batches without a restart.

Loaded at start (a file that cannot be used stops the start with its one-line reason: a scorer must not come up
without the block list it was given). From then on it is checked every few seconds between batches; a changed
file is parsed and compiled once, and replaces the set in force only if it is valid. An invalid or vanished
file is refused with its reason and the set in force keeps deciding. Write a new version by renaming a complete
file over the old one (a ConfigMap update does that), so a half-written file is never read.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from fraudloop.streaming.rules import NO_RULES, RulesError, RuleSet, parse

log = logging.getLogger(__name__)
LOADED, REFUSED = "loaded", "refused"


class RulesFile:
    def __init__(self, path: str, check_every: float = 2.0) -> None:
        self.path, self.check_every = path, check_every
        self.events: list[tuple[str, str, str]] = []  # (loaded | refused, version, detail) not yet reported
        self.current: RuleSet = NO_RULES
        self._stamp = self._stat()
        self._checked = time.monotonic()
        if path:
            if self._stamp is None:
                raise FileNotFoundError(f"rules file {path} not found")
            self.current = self._read()
            log.info("rules version %s: %d rules, lists of %d cards and %d terminals", self.current.version,
                     len(self.current.rules), len(self.current.allow_cards | self.current.block_cards),
                     len(self.current.allow_terminals | self.current.block_terminals))

    def refresh(self, force: bool = False) -> RuleSet:
        """Between batches: the set in force, a new valid version of the file swapped in first."""
        now = time.monotonic()
        if not self.path or (not force and now - self._checked < self.check_every):
            return self.current
        self._checked = now
        stamp = self._stat()
        if stamp == self._stamp:
            return self.current
        self._stamp = stamp
        try:
            if stamp is None:
                raise RulesError(f"rules file {self.path} is gone")
            rules = self._read()
        except Exception as error:  # noqa: BLE001 - whatever is wrong with the file, the set in force serves on
            log.error("rules file refused, version %s keeps deciding: %s", self.current.version, error)
            self.events.append((REFUSED, self.current.version, str(error)))
            return self.current
        if rules.digest != self.current.digest:
            log.info("rules version %s replaces %s", rules.version, self.current.version)
            self.current = rules
            self.events.append((LOADED, rules.version, ""))
        return self.current

    def take_events(self) -> list[tuple[str, str, str]]:
        events, self.events = self.events, []
        return events

    def _read(self) -> RuleSet:
        try:
            text = Path(self.path).read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise RulesError(f"{self.path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
        return parse(text, self.path)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size, info.st_ino
