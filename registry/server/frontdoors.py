"""Front-door records: every registry process with a front door announces it in the shared store, and every
registry process tells agents (``/v1/ping`` ``kube_front_doors``) which front doors are alive.

Several registries may share one store (``--store etcd://``). Each one that runs a front door writes one
``frontdoor`` record (an internal kind: no API route reads or writes it) named by a random id chosen at
start, holding the address agents dial (``--kube-public-addr``, else the listen address), with a TTL of
:data:`FRONTDOOR_TTL`. The record is renewed every ``ttl / 3`` seconds and deleted on a clean shutdown; a
registry that was killed leaves a record that expires within its TTL.

:class:`FrontDoorDirectory` is the one place that reads and writes these records. It keeps the list of
live addresses in memory, reloaded whenever a front-door record changes (a watch on the kind) and at least
every ``ttl / 3`` seconds, so the public ``/v1/ping`` never touches the store (an unauthenticated caller
cannot make the registry read its store) and a new front door is listed by every registry at once.

Invariants:

* The list is sorted and free of duplicates (front doors behind one load balancer share an address).
* This process's own front doors are always in its list, even when the store cannot be read.
* A record read back is checked before it is listed (an address must parse as ``HOST:PORT`` with a port,
  at most :data:`MAX_FRONT_DOORS` are listed): whatever another writer put there cannot break a ping.
* Until the store was read once, ``known`` is False and ping lists nothing (not a partial list).
* A failing store is logged and retried at the next tick; the last good list stays.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable
from typing import Any

import trio

from registry.core.errors import BadParameter, KubeportError
from registry.core.netaddr import parse_hostport
from registry.store import Record, Store

log = logging.getLogger(__name__)

FRONTDOOR_KIND = "frontdoor"
FRONTDOOR_TTL = 30.0  # seconds a record lives without renewal: how long a killed front door stays listed
MAX_FRONT_DOORS = 64  # listed at most (each agent keeps one tunnel per listed front door)
MAX_ADDRESS_LENGTH = 262  # a 253-character DNS name, a colon, a port, and IPv6 brackets


def frontdoor_value(door_id: str, address: str) -> dict[str, Any]:
    """The stored value of one front door's record."""
    return {"id": door_id, "addr": address}


def checked_address(value: object) -> str | None:
    """The front-door address in a stored value, or None when it is not a dialable ``HOST:PORT``."""
    if not isinstance(value, dict):
        return None
    address = value.get("addr")
    if not isinstance(address, str) or not address or len(address) > MAX_ADDRESS_LENGTH:
        return None
    try:
        parse_hostport(address, default_port=0, what="front door address", default_host=None, min_port=1)
    except BadParameter:
        return None
    return address


def live_addresses(values: Iterable[object], own: Iterable[str] = ()) -> tuple[str, ...]:
    """Sorted, deduplicated addresses from stored values plus this process's own (always kept), at most
    :data:`MAX_FRONT_DOORS`; malformed values are skipped."""
    found = {a for a in (checked_address(v) for v in values) if a is not None}
    mine = set(own)
    others = sorted(found - mine)
    return tuple(sorted(mine | set(others[: max(0, MAX_FRONT_DOORS - len(mine))])))


class FrontDoorDirectory:
    """The live front doors of every registry sharing ``store`` (module docstring)."""

    def __init__(self, store: Store, *, clock: Callable[[], float], ttl: float | None = None) -> None:
        ttl = FRONTDOOR_TTL if ttl is None else ttl
        if not ttl > 0:
            raise BadParameter(f"front door ttl must be a positive number of seconds, got {ttl!r}")
        self.store = store
        self.clock = clock
        self.ttl = ttl
        self.addresses: tuple[str, ...] = ()
        # Whether the store has been read once: until then the list may lack other registries' front doors,
        # and ping leaves it out (an agent must not drop a tunnel because a registry just started).
        self.known = False
        self._own: dict[str, str] = {}  # id -> address of the front doors this process runs
        self._refreshes = 0
        self._failures = 0

    @property
    def interval(self) -> float:
        return self.ttl / 3

    def statistics(self) -> dict[str, int]:
        return {
            "front_doors": len(self.addresses),
            "own": len(self._own),
            "refreshes_total": self._refreshes,
            "failures_total": self._failures,
        }

    async def announce(self, address: str) -> str:
        """Start announcing a front door of this process at ``address``; returns its record id. The record
        is written at once (a store error is logged; the next refresh retries it)."""
        door_id = secrets.token_hex(8)
        self._own[door_id] = address
        self.addresses = tuple(sorted(set(self.addresses) | {address}))  # listed now, whatever the store says
        await self.refresh()
        log.info("announcing the front door %s as %s (ttl %.0f s)", address, door_id, self.ttl)
        return door_id

    async def withdraw(self, door_id: str) -> None:
        """Stop announcing ``door_id`` and delete its record (best effort: it expires anyway)."""
        address = self._own.pop(door_id, None)
        if address is None:
            return
        if address not in self._own.values():
            self.addresses = tuple(a for a in self.addresses if a != address)
        try:
            await self.store.delete(FRONTDOOR_KIND, door_id)
        except KubeportError as err:
            log.warning("could not delete the front door record %s (it expires in %.0f s): %s", door_id, self.ttl, err)

    async def refresh(self) -> None:
        """Renew this process's records, then read every live record into :attr:`addresses`."""
        self._refreshes += 1
        expires = self.clock() + self.ttl
        try:
            for door_id, address in list(self._own.items()):
                await self.store.put(FRONTDOOR_KIND, door_id, frontdoor_value(door_id, address), expires=expires)
        except KubeportError as err:
            self._failures += 1
            log.warning("cannot renew this registry's front door record (will retry): %s", err)
        await self.reload()

    async def reload(self) -> None:
        """Read every live record into :attr:`addresses` (the last good list stays when the store fails)."""
        try:
            records: list[Record] = await self.store.list(FRONTDOOR_KIND, limit=4 * MAX_FRONT_DOORS)
        except KubeportError as err:
            self._failures += 1
            log.warning("cannot read the list of front doors (keeping the last one): %s", err)
            self.addresses = tuple(sorted(set(self.addresses) | set(self._own.values())))
            return
        self.addresses = live_addresses((r.value for r in records), self._own.values())
        self.known = True

    async def _follow(self) -> None:
        """Reload on every change of any front-door record (another registry's announce, renewal, withdrawal
        or expiry), so a new front door is listed at once, not at the next tick."""
        while True:
            try:
                async with self.store.watch([FRONTDOOR_KIND]) as events:
                    await self.reload()  # after the watch started: no change between the two is missed
                    async for _ in events:
                        await self.reload()
                return  # the store closed
            except KubeportError as err:
                log.debug("front door watch interrupted (the periodic refresh goes on): %s", err)
                await trio.sleep(self.interval)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Refresh every ``ttl / 3`` seconds until cancelled; a clean shutdown withdraws this process's
        records."""
        try:
            await self.refresh()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._follow)
                task_status.started()
                while True:
                    await trio.sleep(self.interval)
                    await self.refresh()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(3):
                for door_id in list(self._own):
                    await self.withdraw(door_id)
