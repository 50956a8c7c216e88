"""The fake API server's object store: versioned objects, optimistic concurrency and watch fan-out.

Objects are keyed by (resource type, namespace, name); the resource type carries the API group, so the key
is the brief's (group, resource, namespace, name). Like etcd behind a real apiserver, one global counter
versions every write: each create/update/delete bumps it and stamps ``metadata.resourceVersion`` (a decimal
string); a list's ``metadata.resourceVersion`` is the counter at the time of the list.

Invariants:
- a stored object is never mutated in place (writes replace it), so watch events share snapshots safely;
  objects handed to callers are deep copies;
- server-owned metadata (uid, resourceVersion, creationTimestamp, namespace) is always set by the store;
  an update that changes nothing keeps the resourceVersion and fires no event (as the real server);
- namespaced objects can only be created in an existing namespace; deleting a namespace deletes its
  contents first (immediately: the fake has no Terminating phase), each with its own DELETED event;
- a watch from resourceVersion N replays the retained history after N, then follows live changes; history
  older than the retention window answers 410 Expired; a watcher that falls more than
  ``WATCH_BUFFER`` events behind is dropped (its stream ends, as a real server drops slow watchers).

Everything here is synchronous and must run in the trio thread that serves the fake.
"""

from __future__ import annotations

import copy
import secrets
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import trio

from tests.fakes.kube_discovery import NAMESPACES, ResourceType
from tests.fakes.kube_objects import check_body_shape, check_name, check_namespace, default_and_validate
from tests.fakes.kube_patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from tests.fakes.kube_select import Selector
from tests.fakes.kube_status import (
    STALE_OBJECT,
    KubeStatusError,
    already_exists,
    bad_request,
    conflict,
    expired,
    invalid,
    not_found,
)

WATCH_BUFFER = 1000
_SERVER_METADATA = ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "selfLink")
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the apiserver's: no vowels, no look-alikes

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"

Obj = dict[str, Any]


def timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED | MODIFIED | DELETED
    resource: ResourceType
    obj: Obj  # snapshot, never mutated
    old: Obj | None  # the previous version for MODIFIED/DELETED
    revision: int


class Subscription:
    """One watcher: the events it must see first (``initial``), then live ones via :meth:`receive`."""

    def __init__(self, store: KubeStore, resource: ResourceType, namespace: str | None, selector: Selector):
        self._store = store
        self.resource = resource
        self.namespace = namespace
        self.selector = selector
        self.initial: list[tuple[str, Obj]] = []
        self._send, self._receive = trio.open_memory_channel[tuple[str, Obj]](WATCH_BUFFER)

    def translate(self, event: WatchEvent) -> tuple[str, Obj] | None:
        """What this watcher sees of ``event``: label/field selector transitions become ADDED/DELETED."""
        if event.resource is not self.resource:
            return None
        if self.namespace is not None and event.obj["metadata"].get("namespace", "") != self.namespace:
            return None
        now_matches = self.selector.matches(event.obj)
        if event.type == "DELETED":
            return ("DELETED", event.obj) if now_matches else None
        was_matching = event.old is not None and self.selector.matches(event.old)
        if event.type == "ADDED" or not was_matching:
            return ("ADDED", event.obj) if now_matches else None
        return ("MODIFIED", event.obj) if now_matches else ("DELETED", event.obj)

    def deliver(self, event: WatchEvent) -> None:
        seen = self.translate(event)
        if seen is None:
            return
        try:
            self._send.send_nowait(seen)
        except trio.WouldBlock:
            self.close()  # too slow: end its stream rather than buffer without bound
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self.close()

    async def receive(self) -> tuple[str, Obj]:
        """The next live event; raises trio.EndOfChannel when the watcher was dropped."""
        return await self._receive.receive()

    def close(self) -> None:
        self._store._subscribers.discard(self)
        self._send.close()


class KubeStore:
    def __init__(self, *, now: Callable[[], datetime] | None = None, history_limit: int = 10_000) -> None:
        self._now = now or (lambda: datetime.now(UTC))
        self._objects: dict[ResourceType, dict[tuple[str, str], Obj]] = {}
        self._revision = 1
        self._history: deque[WatchEvent] = deque(maxlen=history_limit)
        self._subscribers: set[Subscription] = set()
        self._listeners: list[Callable[[WatchEvent], None]] = []

    # ------------------------------------------------------------------------------------------- reads

    @property
    def revision(self) -> int:
        return self._revision

    def peek(self, rt: ResourceType, namespace: str, name: str) -> Obj | None:
        """The stored object itself (read-only!), or None. For in-process readers such as RBAC."""
        return self._objects.get(rt, {}).get((namespace if rt.namespaced else "", name))

    def iter_objects(self, rt: ResourceType, namespace: str | None = None) -> Iterator[Obj]:
        """Stored objects (read-only!) in key order; ``namespace=None`` means all namespaces."""
        table = self._objects.get(rt, {})
        for key in sorted(table):
            if namespace is None or key[0] == namespace:
                yield table[key]

    def get(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        found = self.peek(rt, namespace, name)
        if found is None:
            raise not_found(rt.name, rt.group, name)
        return copy.deepcopy(found)

    def list_objects(self, rt: ResourceType, namespace: str | None, selector: Selector) -> tuple[list[Obj], int]:
        items = [copy.deepcopy(o) for o in self.iter_objects(rt, namespace) if selector.matches(o)]
        return items, self._revision

    # ------------------------------------------------------------------------------------------ writes

    def create(self, rt: ResourceType, namespace: str, body: Any) -> Obj:
        obj = check_body_shape(rt, copy.deepcopy(body))
        check_namespace(rt, obj, namespace)
        meta = obj["metadata"]
        name = meta.get("name", "")
        if not name:
            prefix = meta.get("generateName", "")
            if not prefix:
                cause = ("metadata.name", "FieldValueRequired", "Required value: name or generateName is required")
                raise invalid(rt.kind, rt.group, "", [cause])
            name = prefix + "".join(secrets.choice(_GENERATE_ALPHABET) for _ in range(5))
        check_name(rt, name)
        namespace = namespace if rt.namespaced else ""
        if rt.namespaced and self.peek(NAMESPACES, "", namespace) is None:
            raise not_found(NAMESPACES.name, "", namespace)
        if self.peek(rt, namespace, name) is not None:
            raise already_exists(rt.name, rt.group, name)
        for key in _SERVER_METADATA:
            meta.pop(key, None)
        meta["name"] = name
        if rt.namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = timestamp(self._now())
        obj = default_and_validate(rt, {"kind": rt.kind, "apiVersion": rt.api_version, **obj}, None)
        self._write(rt, namespace, name, obj, None)
        return copy.deepcopy(obj)

    def update(self, rt: ResourceType, namespace: str, name: str, body: Any) -> Obj:
        obj = check_body_shape(rt, copy.deepcopy(body))
        check_namespace(rt, obj, namespace)
        return self._replace(rt, namespace, name, obj)

    def patch(self, rt: ResourceType, namespace: str, name: str, patch_type: str, patch: Any) -> Obj:
        current = self.get(rt, namespace, name)
        try:
            if patch_type == JSON_PATCH:
                patched = json_patch(current, patch)
            elif not isinstance(patch, dict):
                raise bad_request("the body of a merge patch must be a JSON object")
            elif patch_type == STRATEGIC_MERGE_PATCH:
                patched = strategic_merge_patch(current, patch)
            else:
                patched = merge_patch(current, patch)
        except PatchError as exc:
            if exc.malformed:
                raise bad_request(str(exc)) from None
            raise KubeStatusError(422, "Invalid", str(exc)) from None
        obj = check_body_shape(rt, patched)
        check_namespace(rt, obj, namespace)
        return self._replace(rt, namespace, name, obj)

    def _replace(self, rt: ResourceType, namespace: str, name: str, obj: Obj) -> Obj:
        meta = obj["metadata"]
        body_name = meta.get("name", "")
        if body_name and body_name != name:
            raise bad_request(f"the name of the object ({body_name}) does not match the name on the URL ({name})")
        namespace = namespace if rt.namespaced else ""
        old = self.peek(rt, namespace, name)
        if old is None:
            raise not_found(rt.name, rt.group, name)
        wanted_rv = meta.get("resourceVersion", "")
        if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
            raise conflict(rt.name, rt.group, name, STALE_OBJECT)
        for key in _SERVER_METADATA:
            meta.pop(key, None)
        meta["name"] = name
        if rt.namespaced:
            meta["namespace"] = namespace
        for key in ("uid", "creationTimestamp"):
            meta[key] = old["metadata"][key]
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        obj = default_and_validate(rt, {**obj, "kind": rt.kind, "apiVersion": rt.api_version}, old)
        if obj == old:
            return copy.deepcopy(old)  # a no-op write: no new version, no event
        self._write(rt, namespace, name, obj, old)
        return copy.deepcopy(obj)

    def delete(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        *,
        precondition_uid: str | None = None,
        precondition_rv: str | None = None,
    ) -> Obj:
        namespace = namespace if rt.namespaced else ""
        old = self.peek(rt, namespace, name)
        if old is None:
            raise not_found(rt.name, rt.group, name)
        meta = old["metadata"]
        if precondition_uid and precondition_uid != meta["uid"]:
            why = f"Precondition failed: UID in precondition: {precondition_uid}, UID in object meta: {meta['uid']}"
            raise conflict(rt.name, rt.group, name, why)
        if precondition_rv and precondition_rv != meta["resourceVersion"]:
            why = (
                f"Precondition failed: ResourceVersion in precondition: {precondition_rv}, "
                f"ResourceVersion in object meta: {meta['resourceVersion']}"
            )
            raise conflict(rt.name, rt.group, name, why)
        if rt is NAMESPACES:
            for other in list(self._objects):
                if other.namespaced:
                    for obj in list(self.iter_objects(other, name)):
                        self.delete(other, name, obj["metadata"]["name"])
        event = self._write(rt, namespace, name, None, old)
        return copy.deepcopy(event.obj)

    def delete_collection(self, rt: ResourceType, namespace: str | None, selector: Selector) -> list[Obj]:
        doomed = [o for o in self.iter_objects(rt, namespace) if selector.matches(o)]
        return [self.delete(rt, o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in list(doomed)]

    def _write(self, rt: ResourceType, namespace: str, name: str, obj: Obj | None, old: Obj | None) -> WatchEvent:
        self._revision += 1
        table = self._objects.setdefault(rt, {})
        if obj is None:
            assert old is not None
            del table[(namespace, name)]
            # The DELETED event carries the deletion's resourceVersion, as the real server's does.
            snapshot = {**old, "metadata": {**old["metadata"], "resourceVersion": str(self._revision)}}
            event = WatchEvent("DELETED", rt, snapshot, old, self._revision)
        else:
            obj["metadata"]["resourceVersion"] = str(self._revision)
            table[(namespace, name)] = obj
            event = WatchEvent("ADDED" if old is None else "MODIFIED", rt, obj, old, self._revision)
        self._history.append(event)
        for subscriber in list(self._subscribers):
            subscriber.deliver(event)
        for listener in list(self._listeners):
            listener(event)
        return event

    # ------------------------------------------------------------------------------------------- watch

    def add_listener(self, listener: Callable[[WatchEvent], None]) -> None:
        """Call ``listener`` synchronously after every write (controllers of the fake use this)."""
        self._listeners.append(listener)

    def watch(self, rt: ResourceType, namespace: str | None, selector: Selector, since: int | None) -> Subscription:
        """Subscribe. ``since=None`` starts with ADDED events for every current match (as resourceVersion
        "" or "0" does); ``since=N`` replays retained history after N first."""
        subscription = Subscription(self, rt, namespace, selector)
        if since is None:
            subscription.initial = [("ADDED", o) for o in self.iter_objects(rt, namespace) if selector.matches(o)]
        else:
            oldest = self._history[0].revision if self._history else self._revision + 1
            retained_all = len(self._history) < (self._history.maxlen or 0)
            if since < oldest - 1 and not retained_all:
                raise expired(since, oldest)
            for event in self._history:
                if event.revision > since:
                    seen = subscription.translate(event)
                    if seen is not None:
                        subscription.initial.append(seen)
        self._subscribers.add(subscription)
        return subscription

    def statistics(self) -> dict[str, int]:
        return {
            "revision": self._revision,
            "objects": sum(len(t) for t in self._objects.values()),
            "watchers": len(self._subscribers),
            "history": len(self._history),
        }
