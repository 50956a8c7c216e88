"""Decide what an agent should serve: (served, static, dynamic, matcher) -> ordered actions.

Pure and synchronous: no clock, no network, no logging. The agent's cluster table (``agent.state``) calls
it on every reconcile pass with the candidates it built from the watched ``kube_cluster`` resources, and
turns the actions it returns into its own (connect, refresh, disconnect) for the supervisor to carry out.

Rules (kubeport's issue text; where it departs from Teleport's reconciler it says so):

* Everything is keyed by cluster name. ``desired`` is the dynamic candidates by name, then the static ones
  written over them: a static cluster from the agent's own kubeconfig always wins a name clash (Teleport
  builds the map the other way round and then refuses the update by origin; the outcome for a fresh agent is
  the same, but ours also lets a static cluster take over a name a dynamic one held).
* Static candidates are never matched against the ``resources`` selectors (as in Teleport).
* A served name missing from ``desired`` is unregistered (``"deleted"``).
* A desired name not served is registered if it is static or the matcher accepts its labels.
* A served name whose desired candidate has another origin: a static desire replaces the served dynamic
  one (an :class:`Update`); a dynamic desire never displaces a served static cluster (no action).
* Same origin, and content or labels differ: :class:`Update` if static or still matching, otherwise
  unregister (``"labels no longer match"``). Equal candidates produce nothing.

Invariants: the result is deterministic (unregisters, then updates, then registers, each sorted by name),
names are unique across the result, and applying the result to ``current`` yields exactly the clusters
that should be served.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Origin = Literal["static", "dynamic"]

# Reasons carried by Unregister, so the supervisor can log and audit why a cluster went away.
REASON_DELETED = "deleted"
REASON_NO_MATCH = "labels no longer match"


@dataclass(frozen=True)
class Candidate:
    """One cluster the agent could serve. Equality ignores ``payload`` (it is carried, never compared)."""

    name: str
    origin: Origin
    # Anything whose equality means "same cluster" (the caller passes e.g. a fingerprint of the resource).
    content: Hashable
    # The labels matched against the ``resources`` selectors.
    labels: Mapping[str, str]
    payload: Any = field(compare=False, default=None)


@dataclass(frozen=True)
class Register:
    candidate: Candidate


@dataclass(frozen=True)
class Update:
    old: Candidate
    new: Candidate


@dataclass(frozen=True)
class Unregister:
    name: str
    reason: str


Action = Register | Update | Unregister


def plan(
    current: Mapping[str, Candidate],
    static: Iterable[Candidate],
    dynamic: Iterable[Candidate],
    matcher: Callable[[Mapping[str, str]], bool],
) -> list[Action]:
    """The actions that turn ``current`` (what is served now) into what should be served.

    Within ``static`` or ``dynamic`` a repeated name keeps the last candidate given.
    """
    desired: dict[str, Candidate] = {c.name: c for c in dynamic}
    # Written second so a static cluster shadows a same-named dynamic resource.
    desired.update((c.name, c) for c in static)

    unregisters: list[Unregister] = [Unregister(name, REASON_DELETED) for name in current if name not in desired]
    updates: list[Update] = []
    registers: list[Register] = []

    for name, new in desired.items():
        old = current.get(name)
        if old is None:
            if new.origin == "static" or matcher(new.labels):
                registers.append(Register(new))
        elif old.origin != new.origin:
            # Only a static desire may take a name over; a dynamic resource never evicts a static cluster.
            if new.origin == "static":
                updates.append(Update(old, new))
        elif old != new:
            if new.origin == "static" or matcher(new.labels):
                updates.append(Update(old, new))
            else:
                unregisters.append(Unregister(name, REASON_NO_MATCH))

    unregisters.sort(key=lambda a: a.name)
    updates.sort(key=lambda a: a.new.name)
    registers.sort(key=lambda a: a.candidate.name)
    return [*unregisters, *updates, *registers]
