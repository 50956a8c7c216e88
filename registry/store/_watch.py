"""Watch fan-out and resumable watch iteration, shared by every backend.

Theory of operation. A backend publishes each committed write to the :class:`Hub` *in revision order*
(it publishes synchronously, right after the commit, before anything else can write). Each watcher owns a
bounded buffer; publishing never blocks: a watcher whose buffer is full is cut off (its buffer is closed
and marked overflowed). Memory per watcher is therefore bounded and writers never wait on readers.

A :class:`WatchIterator` subscribes to the hub *before* it reads history, so every event is in at least
one of the two sources; it remembers the last revision it delivered and drops anything at or below it, so
none is delivered twice. Revisions are global and history is contiguous, so "history after N, then live
events above the last one delivered" has no gap.

* Catch-up reads history in pages. If the live buffer overflows during catch-up, the iterator subscribes
  afresh and keeps paging: history covers everything the lost buffer held, and a long catch-up under a
  steady write load must not fail just because it is long.
* Once live, an overflow ends the iteration with Compacted after the buffered events have been delivered;
  the client resumes from the last revision it saw, which history normally still covers.
* When the hub closes (the store is closed) iteration simply ends.
* A live event carries the trio time its change was published (``Event.published``), so the API can
  measure watch lag without an extra await; events from history carry None.
* A live change is turned into its :class:`Event` once, at publish, and that one object goes to every
  subscription: 100 watchers cost one JSON decode of the value, not 100. Consumers treat an event's
  record (its ``value`` dict included) as read-only, as the Store contract says of every record.
* ``WatchIterator.take_ready`` hands out the events already buffered without waiting (the registry's
  watch route writes them in one go); it keeps the same order, dedup and ``last`` as iteration.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import trio

from registry.store._plan import Change, fell_behind
from registry.store.base import Event

# (kinds, after, limit) -> up to `limit` changes of `kinds` with revision > after, in order; raises
# Compacted when `after` is older than the history floor or newer than the store.
ReadHistory = Callable[[frozenset[str], int, int], Awaitable[Sequence[Change]]]


class Subscription:
    """One watcher's bounded live buffer."""

    def __init__(self, kinds: frozenset[str], buffer: int) -> None:
        self.kinds = kinds
        self.overflowed = False
        # each change as its event, shared by every subscription (it carries its publish time)
        self.send, self.receive = trio.open_memory_channel[Event](buffer)


class Hub:
    """Fans committed changes out to subscriptions without ever blocking the writer."""

    def __init__(self, buffer: int) -> None:
        self.buffer = buffer
        self._subs: set[Subscription] = set()
        self.closed = False
        self.overflows = 0

    def __len__(self) -> int:
        return len(self._subs)

    def subscribe(self, kinds: frozenset[str]) -> Subscription:
        sub = Subscription(kinds, self.buffer)
        if self.closed:
            sub.send.close()
        else:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        sub.send.close()
        sub.receive.close()

    def publish(self, changes: Sequence[Change]) -> None:
        """Deliver ``changes`` (in revision order) to every interested subscription, never waiting."""
        if not self._subs:
            return
        now = trio.current_time()  # one clock read per commit, carried to the watch line (watch lag)
        # Decoded once per change, lazily (a change of a kind nobody watches is never decoded).
        events: list[Event | None] = [None] * len(changes)
        for sub in list(self._subs):
            for index, change in enumerate(changes):
                if change.item.kind not in sub.kinds:
                    continue
                event = events[index]
                if event is None:
                    event = events[index] = change.to_event(now)
                try:
                    sub.send.send_nowait(event)
                except trio.WouldBlock:
                    sub.overflowed = True
                    self.overflows += 1
                    self._subs.discard(sub)
                    sub.send.close()
                    break

    def cut_all(self) -> None:
        """End every current subscription as if it fell behind: each watcher gets Compacted and relists
        (for a backend that learns its history was lost under it, e.g. etcd compacted past its feed)."""
        for sub in list(self._subs):
            sub.overflowed = True
            self.overflows += 1
            sub.send.close()
        self._subs.clear()

    def close(self) -> None:
        self.closed = True
        for sub in self._subs:
            sub.send.close()
        self._subs.clear()


class WatchIterator:
    """Yields events with revision > ``last``: history pages first, then live events."""

    def __init__(
        self,
        hub: Hub,
        kinds: frozenset[str],
        read_history: ReadHistory,
        *,
        last: int,
        catching_up: bool,
        page_size: int,
    ) -> None:
        self._hub = hub
        self._kinds = kinds
        self._read_history = read_history
        self._page_size = page_size
        self.last = last  # the last revision delivered (or the starting point)
        self._catching_up = catching_up
        self._pending: deque[Change] = deque()
        self._sub = hub.subscribe(kinds)

    def close(self) -> None:
        self._hub.unsubscribe(self._sub)

    async def fetch_page(self) -> None:
        """Read the next history page; switch to live events once history is exhausted."""
        if self._sub.overflowed and not self._hub.closed:
            self._hub.unsubscribe(self._sub)
            self._sub = self._hub.subscribe(self._kinds)
        page = await self._read_history(self._kinds, self.last, self._page_size)
        self._pending.extend(page)
        # A short page means history has been read up to the store revision at that moment; anything
        # newer was published after our subscription began, so the live buffer has it.
        if len(page) < self._page_size and not self._sub.overflowed:
            self._catching_up = False

    def __aiter__(self) -> WatchIterator:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._pending:
                change = self._pending.popleft()
                self.last = change.revision
                return change.to_event()
            if self._catching_up:
                if self._hub.closed:
                    raise StopAsyncIteration  # the store closed during catch-up
                await self.fetch_page()
                continue
            try:
                event = await self._sub.receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                if self._sub.overflowed:
                    raise fell_behind(self.last, self._hub.buffer) from None
                raise StopAsyncIteration from None
            revision = event.record.revision  # a change's revision (a DELETE's record carries it too)
            if revision <= self.last:
                continue  # already delivered from history
            self.last = revision
            return event

    def take_ready(self, limit: int) -> list[Event]:
        """Up to ``limit`` more events that are already here (history read, live buffer), without waiting:
        a watcher that fell behind a burst catches up in one write instead of one per event. Stops short of
        anything that needs a wait or ends the stream (a history page to read, overflow, close): the next
        ``__anext__`` handles those exactly as before."""
        ready: list[Event] = []
        while len(ready) < limit:
            if self._pending:
                change = self._pending.popleft()
                self.last = change.revision
                ready.append(change.to_event())
                continue
            if self._catching_up:
                break
            try:
                event = self._sub.receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break  # an empty buffer; or an end __anext__ raises when it finds it again
            revision = event.record.revision
            if revision <= self.last:
                continue  # already delivered from history
            self.last = revision
            ready.append(event)
        return ready


@asynccontextmanager
async def open_watch(
    hub: Hub,
    kinds: frozenset[str],
    read_history: ReadHistory,
    current_revision: Callable[[], int],
    *,
    since: int | None,
    page_size: int,
) -> AsyncIterator[AsyncIterator[Event]]:
    """The body of every backend's ``watch``: subscribe, then check/read history, then hand out events.

    ``current_revision`` must be the revision of the last *published* change, read without a checkpoint
    after subscribing, so that since=None starts exactly where the live buffer does.
    """
    if since is None:
        iterator = WatchIterator(hub, kinds, read_history, last=0, catching_up=False, page_size=page_size)
        iterator.last = current_revision()
    else:
        iterator = WatchIterator(hub, kinds, read_history, last=since, catching_up=True, page_size=page_size)
    try:
        if since is not None:
            # The first page is read on entry so a too-old (or too-new) `since` fails before any event.
            await iterator.fetch_page()
        yield iterator
    finally:
        iterator.close()
