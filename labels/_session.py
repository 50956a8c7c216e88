"""Find and kill every process a label command left behind (Linux ``/proc``; stdlib only, no trio).

A label command runs in its own session (the runner starts it with ``start_new_session``), so its pid is
also its session id and process group id, and the runner does not reap it until this module is done: the
pid cannot be reused meanwhile. Killing the process group is not enough: a grandchild can call
``setsid`` (new session, new group) and, once its parent exits, is re-parented to init, out of reach of
``killpg`` and of the parent chain. So :func:`hunt` takes the union of

* the run's **session and process group** (``sid`` or ``pgrp`` equal to the leader's pid),
* every **descendant** (``ppid`` chain) of the leader or of a member,
* every process whose **environment carries the run's marker** (``KUBEPORT_LABEL_RUN=<random>``, set by
  the runner for the command; children inherit it through ``setsid`` and re-parenting alike), and the
  sessions and groups those lead,

stops each member with SIGSTOP as it is found (a stopped process cannot fork), scans again until a scan
finds nobody new, then SIGKILLs them all. Signals go through a pidfd opened on the pid and checked against
the process start time seen in the scan, so a pid that died and was reused meanwhile is never signalled.
The leader itself is the runner's child and is signalled by the runner.

Reaping: the runner reaps its own child. Killed grandchildren become zombies of their parent; when that
parent dies too, they are re-parented to init (or the nearest subreaper), which reaps them; kubeport does
not make the agent a subreaper (it would have to reap every orphan of the whole process, registry
included in the all-in-one, racing the libraries that wait for their own children).

Limits, stated honestly (cgroups would close them, and kubeport does not require them):

* a descendant that leaves the session **and** clears or rewrites its environment (``env -i``, or
  ``execve`` with a fresh environment) **and** whose parent exits before the scan is untraceable;
* a process that asks another service to start something (``systemd-run``, ``at``, ``ssh localhost``)
  is not a descendant at all;
* processes running as another user (setuid programs) are neither readable nor killable;
* the cheap scan after a normal exit (``full=False``) only reads processes whose pid was allocated after
  the command started (``/proc/loadavg`` names the last pid allocated): a host that cycles through its
  whole pid space during one run could hide a leftover from it. Timeouts, overflows and cancellation
  scan every process.

This is why registry-stored label commands need an explicit grant on the agent
(``allowed_label_commands``) and on the registry: the clean-up bounds accidents, it is no sandbox.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

MARKER_ENV = "KUBEPORT_LABEL_RUN"
# Rounds of "scan, stop what is new" before giving up on a stable picture (each round stops everything it
# found, so only a process forking faster than we scan needs more than two).
MAX_ROUNDS = 20

_PROC = "/proc"
# Up to this many pids allocated since a run started are probed one by one instead of listing /proc.
_PROBE_WINDOW = 512


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/PID/stat`` this module needs. ``starttime`` is in clock ticks since boot."""

    pid: int
    state: str
    ppid: int
    pgrp: int
    session: int
    starttime: int


def parse_stat(raw: bytes) -> ProcStat | None:
    """Parse ``/proc/PID/stat`` (pure). The command name may hold spaces and parentheses, so the fields
    are read after the *last* ``)``. None for anything malformed."""
    head, sep, rest = raw.rpartition(b")")
    if not sep:
        return None
    pid_text = head.split(b"(", 1)[0].strip()
    fields = rest.split()
    try:
        # Fields after the name: state(3) ppid(4) pgrp(5) session(6) ... starttime(22), 1-based.
        return ProcStat(
            pid=int(pid_text),
            state=fields[0].decode("ascii", "replace"),
            ppid=int(fields[1]),
            pgrp=int(fields[2]),
            session=int(fields[3]),
            starttime=int(fields[19]),
        )
    except (ValueError, IndexError):
        return None


def members(
    snapshot: Mapping[int, ProcStat],
    leader: int,
    marked: Callable[[int], bool],
    others: Collection[int] = (),
) -> set[int]:
    """The pids in ``snapshot`` that belong to the run led by ``leader`` (pure apart from ``marked``).

    Closure over "same session or group as a member, or child of a member"; processes still outside are
    asked ``marked(pid)`` (the environment check) once, and the closure is taken again with those that are.
    ``others``: leaders of other runs still going; a process in one of their sessions descends from that
    leader (a session is only ever inherited or newly created), so it is never asked.
    """
    found = {leader}
    asked: set[int] = {pid for pid, stat in snapshot.items() if stat.session in others}
    while True:
        grew = True
        while grew:
            grew = False
            for pid, stat in snapshot.items():
                if pid not in found and (stat.session in found or stat.pgrp in found or stat.ppid in found):
                    found.add(pid)
                    grew = True
        extra = {pid for pid in snapshot if pid not in found and pid not in asked and marked(pid)}
        asked.update(pid for pid in snapshot if pid not in found)
        if not extra:
            return found
        found |= extra


def last_pid() -> int | None:
    """The pid most recently allocated in this pid namespace (``/proc/loadavg``), None if unreadable."""
    try:
        with open(f"{_PROC}/loadavg", "rb") as handle:
            return int(handle.read().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def _in_window(pid: int, since: int, now: int) -> bool:
    if now >= since:
        return since < pid <= now
    return pid > since or pid <= now  # the counter wrapped around pid_max


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:  # gone, or another user's process
        return None


def _scan(pids: Iterable[int]) -> dict[int, ProcStat]:
    snapshot: dict[int, ProcStat] = {}
    for pid in pids:
        raw = _read(f"{_PROC}/{pid}/stat")
        stat = parse_stat(raw) if raw is not None else None
        if stat is not None:
            snapshot[pid] = stat
    return snapshot


def _candidate_pids(since: int | None, skip: Collection[int] = ()) -> list[int]:
    """Pids to look at: those allocated after ``since`` (probed directly while that window is small, which
    beats listing /proc on a busy host), else every process in /proc."""
    now = last_pid() if since is not None else None
    if since is not None and now is not None and 0 <= now - since <= _PROBE_WINDOW:
        return [pid for pid in range(since + 1, now + 1) if pid not in skip]
    pids: list[int] = []
    try:
        names = os.listdir(_PROC)
    except OSError:
        return pids
    for name in names:
        if name.isdigit():
            pid = int(name)
            if pid not in skip and (since is None or now is None or _in_window(pid, since, now)):
                pids.append(pid)
    return pids


def _has_marker(pid: int, needle: bytes) -> bool:
    raw = _read(f"{_PROC}/{pid}/environ")
    return raw is not None and needle in b"\0" + raw


def _signal(pid: int, starttime: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to ``pid`` only if it is still the process seen in the scan (same start time)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except OSError:  # no pidfd support (Linux < 5.3): a recheck, then a plain kill (a tiny reuse race)
        current = _scan([pid]).get(pid)
        if current is None or current.starttime != starttime:
            return False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
            return True
        return False
    try:
        current = _scan([pid]).get(pid)  # the pidfd pins this pid: a match now means the same process
        if current is None or current.starttime != starttime:
            return False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            signal.pidfd_send_signal(fd, sig)
            return True
        return False
    finally:
        os.close(fd)


def hunt(leader: int, marker: str, *, since: int | None, others: Collection[int] = ()) -> int:
    """Stop, then kill, every process of the run led by ``leader`` except the leader itself.

    ``since``: the last pid allocated before the leader was started, to scan only younger processes (the
    cheap scan after a normal exit); None scans every process. ``others``: the unreaped leaders of the
    caller's other runs (their pids cannot be reused meanwhile): neither they nor their sessions are
    looked into, which keeps the scan cheap while many labels run at once. Returns how many processes
    were killed. Never signals this process, pid 1, or the leader (the caller's child, which the caller
    kills).
    """
    needle = f"\0{MARKER_ENV}={marker}\0".encode()
    me = os.getpid()
    skip = {me, 1, *others} - {leader}
    # Sessions that cannot hold the run's processes: the other runs', and this process's own (its threads
    # and other children live there; the run's processes are all in sessions the leader's line created).
    others = (set(others) | {os.getsid(0)}) - {leader}
    stopped: dict[int, int] = {}
    for _ in range(MAX_ROUNDS):
        snapshot = _scan(_candidate_pids(since, skip))
        found = members(snapshot, leader, lambda pid: _has_marker(pid, needle), others)
        new = [
            pid
            for pid in found
            if pid != leader and pid in snapshot and pid not in stopped and snapshot[pid].state not in ("Z", "X")
        ]
        if not new:
            break
        for pid in new:
            if _signal(pid, snapshot[pid].starttime, signal.SIGSTOP):
                stopped[pid] = snapshot[pid].starttime
    killed = 0
    for pid, starttime in stopped.items():
        killed += _signal(pid, starttime, signal.SIGKILL)
    return killed
