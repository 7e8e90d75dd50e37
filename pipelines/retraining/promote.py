"""Moving the `champion` alias: promote a validated version, reject one, roll back to the previous champion.

Every move is recorded three ways: tags on the versions involved (who, when, why), the
`previous_champion` alias (so a rollback is one command), and one run per move in the
`<experiment>-alias-moves` experiment, so the MLflow UI lists the whole history of the alias.
"""

from __future__ import annotations

import getpass
import time
from dataclasses import dataclass

import mlflow
from fraudloop.models import registry
from fraudloop.models.aliases import PREVIOUS_CHAMPION
from fraudloop.models.settings import settings


@dataclass(frozen=True)
class Move:
    action: str  # promote | rollback
    from_version: str | None
    to_version: str
    actor: str
    reason: str
    at: str


def default_actor() -> str:
    try:
        return settings().actor or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def record_change(reg: registry.RegistryConfig, experiment_suffix: str, run_name: str, tags: dict[str, str],
                  texts: dict[str, str] | None = None) -> None:
    """One finished run in `<experiment>-<suffix>` per change (who, when, why as tags; files as artifacts): the
    MLflow UI lists the whole history."""
    client = registry.client(reg)
    run = client.create_run(registry.side_experiment(reg, experiment_suffix), run_name=run_name,
                            tags={**tags, "reason": tags.get("reason", "")[:4900]})
    for name, text in (texts or {}).items():
        client.log_text(run.info.run_id, text, name)
    client.set_terminated(run.info.run_id)


def _record(reg: registry.RegistryConfig, move: Move) -> None:
    record_change(reg, "alias-moves", f"{move.action} v{move.to_version}", {
        "action": move.action, "from_version": move.from_version or "none", "to_version": move.to_version,
        "actor": move.actor, "reason": move.reason, "at": move.at, "model": reg.model_name})


def _move_champion(reg: registry.RegistryConfig, version: str, action: str, actor: str, reason: str) -> Move:
    old = registry.alias_version(reg, registry.CHAMPION)
    move = Move(action, old, version, actor, reason, now())
    registry.set_alias(reg, registry.CHAMPION, version)
    if old is not None:
        registry.set_alias(reg, PREVIOUS_CHAMPION, old)
        registry.tag_version(reg, old, {"replaced_at": move.at, "replaced_by": version})
    done = {"promote": "promoted", "rollback": "restored"}[action]
    registry.tag_version(reg, version, {f"{done}_at": move.at, f"{done}_by": actor, f"{done}_because": reason[:4900],
                                        "replaced_version": old or "none"})
    _record(reg, move)
    return move


def promote(reg: registry.RegistryConfig, version: str, reason: str, actor: str | None = None) -> Move:
    """Point `champion` at `version`; refused unless it passed validation against the champion it would replace.

    A pass is evidence against one champion only: if the alias has moved since (another promotion, a
    rollback), the version must be validated again.
    """
    tags = registry.version_info(reg, version).tags
    status = tags.get("validation_status", "not validated")
    if status != "passed":
        raise ValueError(f"version {version} cannot be promoted: validation status is '{status}'")
    champion = registry.alias_version(reg, registry.CHAMPION)
    if champion == version:
        raise ValueError(f"version {version} is already the champion")
    against = tags.get("validated_against", "none")
    if against != (champion or "none"):
        now = f"version {champion}" if champion else "no champion"
        raise ValueError(f"version {version} cannot be promoted: it was validated against "
                         f"{'version ' + against if against != 'none' else 'no champion'}, and the champion is now "
                         f"{now}; validate it again")
    return _move_champion(reg, version, "promote", actor or default_actor(), reason)


def reject(reg: registry.RegistryConfig, version: str, reason: str) -> None:
    """Leave the champion where it is and say why on the challenger."""
    registry.tag_version(reg, version, {"rejected_at": now(), "rejection_reason": reason[:4900]})


def rollback(reg: registry.RegistryConfig, reason: str, actor: str | None = None) -> Move:
    """Put the previous champion back; the version rolled back from becomes `previous_champion` (undo = rollback)."""
    previous = registry.alias_version(reg, PREVIOUS_CHAMPION)
    if previous is None:
        raise ValueError(f"no '{PREVIOUS_CHAMPION}' alias on {reg.model_name}: nothing to roll back to")
    current = registry.alias_version(reg, registry.CHAMPION)
    move = _move_champion(reg, previous, "rollback", actor or default_actor(), reason)
    if current is not None:
        registry.tag_version(reg, current, {"rolled_back_at": move.at, "rollback_reason": reason})
    return move


def history(reg: registry.RegistryConfig) -> list[dict[str, str]]:
    """Alias moves, newest first."""
    registry.client(reg)
    experiment = mlflow.get_experiment_by_name(f"{reg.experiment}-alias-moves")
    if experiment is None:
        return []
    runs = mlflow.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"],
                              output_format="list")
    return [dict(run.data.tags) for run in runs]
