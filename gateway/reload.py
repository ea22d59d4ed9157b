"""SIGHUP: which parts of a changed config the running daemon takes, and which wait for a restart.

Pure: compares two loaded configs. What is taken at once is what a site changes in the field
without touching the buses: the backend (URL, security, password and certificate files; the
link reconnects), the free-charging idTags, the outbox budget, the hard-reset command, and the
firmware and commissioning sections. Buses, connectors, profiles, uplinks, storage path, control
socket and the rest rebuild the daemon's tasks, so they are named and left for a restart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from gateway.settings import Config

# Config fields no running daemon reads (the file's own path; the simulator's settings).
_IGNORED = ("source", "simulator")


@dataclass(frozen=True)
class ReloadPlan:
    config: Config  # what the daemon runs with from now on: the old one with the reloadable parts taken
    applied: tuple[str, ...]  # the changed parts taken now, e.g. "backend"
    need_restart: tuple[str, ...]  # the changed parts kept as they were until a restart
    reconnect: bool  # the backend link must be made again with the new settings


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    applied: list[str] = []
    parts: dict[str, Any] = {}
    for name in ("backend", "authorization", "firmware", "commissioning"):
        if getattr(new, name) != getattr(old, name):
            applied.append(name)
            parts[name] = getattr(new, name)
    if new.storage.outbox_budget_mb != old.storage.outbox_budget_mb:
        applied.append("storage.outbox_budget_mb")
        parts["storage"] = dataclasses.replace(old.storage, outbox_budget_mb=new.storage.outbox_budget_mb)
    if new.ocpp.hard_reset_command != old.ocpp.hard_reset_command:
        applied.append("ocpp.hard_reset_command")
        parts["ocpp"] = dataclasses.replace(old.ocpp, hard_reset_command=new.ocpp.hard_reset_command)
    if _without_id_tags(new) == _without_id_tags(old) and new.connectors != old.connectors:
        applied.append("connectors[].id_tag")
        parts["connectors"] = new.connectors
    merged = dataclasses.replace(old, **parts)

    need_restart = []
    for f in dataclasses.fields(Config):
        if f.name not in _IGNORED and getattr(merged, f.name) != getattr(new, f.name):
            need_restart.append(f.name)
    return ReloadPlan(merged, tuple(applied), tuple(need_restart), reconnect=new.backend != old.backend)


def _without_id_tags(config: Config) -> tuple[object, ...]:
    return tuple(dataclasses.replace(c, id_tag=None) for c in config.connectors)
