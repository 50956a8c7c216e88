"""The agent: join, watch, reconcile, label, health-check and heartbeat, as one supervised task tree.

    Agent(config).serve()
      ├─ identity: the stored host certificate, or a join with the token (agent.identity)
      ├─ service labels: kubernetes_service.commands, run once before anything registers
      ├─ ClusterWatcher: list + watch kube_clusters (only when resources selectors are configured)
      ├─ reconcile loop: on every change (coalesced) and every RETRY_INTERVAL while something failed
      ├─ Supervisor: carries out the ClusterTable's decisions (agent.state): label runners, served clusters
      │  with health monitors
      └─ Announcer: kube_server heartbeats; deletes them all on a clean shutdown

Invariants: static clusters (kubeconfig_file) are loaded and validated once at start; an agent with
neither static clusters nor selectors never gets here (config validation refuses it); nothing the
registry or a cluster does can crash the tree — errors are logged, retried, and reported in heartbeats.
Label commands: ``allowed_label_commands`` is resolved against PATH when the Agent is built (an entry that
does not resolve is a BadParameter, so ``kubeport agent start`` refuses to start); the service's own
``commands`` are resolved against PATH (or, for ``./x``, the working directory) at start too, and logged;
every label process of the agent (service and cluster labels) shares one limiter of LABEL_CONCURRENCY.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import trio
import trio.lowlevel

from agent.access import TunnelPool, serve_access
from agent.clusters import Supervisor, counted_labels
from agent.config import AgentConfig
from agent.heartbeat import Announcer, ServiceInfo
from agent.identity import IDENTITY_FILE, ClientHolder, obtain_identity
from agent.label_commands import LabelCommandPolicy, resolve_service_command
from agent.static_clusters import load_static_clusters
from agent.watcher import ClusterWatcher
from labels.runner import LABEL_CONCURRENCY, CommandSpec
from registry import __version__
from registry.core.errors import KubeportError
from registry.core.resources import CommandLabel, KubeCluster
from registry.host.metrics import SERVED_CLUSTERS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentInfo:
    host_id: str
    nodename: str
    registry: str
    static_clusters: tuple[str, ...]


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        health_interval: float = 60.0,
        label_timeout: float = 30.0,
        freeze_gc: bool = False,
        serve_access: bool = True,
    ) -> None:
        """``freeze_gc``: the agent owns its process (the daemons set it), so it may tell the collector to
        stop scanning everything loaded at start-up. ``serve_access``: keep a tunnel to the registry's
        front door and forward kubectl traffic (``agent.access``)."""
        self.config = config
        self.access_enabled = serve_access
        self.freeze_gc = freeze_gc
        self.health_interval = health_interval
        self.label_timeout = label_timeout
        # Resolved now, against the PATH the agent starts with (never the working directory).
        self.label_policy = LabelCommandPolicy.from_entries(
            config.kube.allowed_label_commands, path_env=os.environ.get("PATH", os.defpath)
        )
        self.supervisor: Supervisor | None = None
        self.watcher: ClusterWatcher | None = None
        self.announcer: Announcer | None = None
        self.tunnels: TunnelPool | None = None  # one tunnel per live front door (agent.access)
        self._wake = trio.Event()
        # Set after the first attempt to publish this agent's kube_agent record: the registry accepts
        # heartbeats of static clusters only once that record declares them, so reconciling waits for it.
        self._described = trio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def readiness(self) -> str | None:
        """For /readyz: None when the agent holds an identity and its last heartbeats reached the registry."""
        await trio.lowlevel.checkpoint()
        if self.announcer is None:
            return "starting: joining the registry"
        if self.announcer.failing:
            return "heartbeats to the registry are failing"
        return None

    def statistics(self) -> dict[str, Any]:
        return {
            "served": len(self.supervisor.served) if self.supervisor else 0,
            "failed": dict(self.supervisor.failed) if self.supervisor else {},
            "watcher": self.watcher.statistics() if self.watcher else {},
            "heartbeats": self.announcer.statistics() if self.announcer else {},
            "tunnels": self.tunnels.statistics() if self.tunnels else {},
        }

    async def serve(self, *, task_status: trio.TaskStatus[AgentInfo] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        kube = config.kube
        static = load_static_clusters(kube.kubeconfig_file) if kube.kubeconfig_file else []
        identity = await obtain_identity(config)
        holder = ClientHolder(identity, config.data_dir / IDENTITY_FILE)
        me = identity.identity()
        assert me.host_id is not None, "agent certificates always carry a host id"
        service_commands = {
            c.name: CommandLabel(command=c.command, period=_go(c.period), schedule=c.schedule) for c in kube.commands
        }
        label_slots = trio.CapacityLimiter(LABEL_CONCURRENCY)
        path_env, cwd = os.environ.get("PATH", os.defpath), os.getcwd()
        service_labels = counted_labels(
            [
                CommandSpec(
                    key=c.name,
                    command=c.command,
                    period=c.period,
                    schedule=c.schedule,
                    timeout=self.label_timeout,
                    executable=resolve_service_command(c.name, c.command[0], path_env, cwd),
                )
                for c in kube.commands
            ],
            on_change=lambda: self.announcer.touch() if self.announcer else None,
            limiter=label_slots,
        )
        try:
            async with trio.open_nursery() as nursery:
                self.announcer = Announcer(
                    lambda: holder.client, host_id=me.host_id, ttl=config.heartbeat_ttl, clock=time.time
                )
                nursery.start_soon(self.announcer.serve)
                await nursery.start(service_labels.serve)
                self.supervisor = Supervisor(
                    nursery,
                    resources=kube.resources,
                    service=ServiceInfo(
                        host_id=me.host_id,
                        hostname=kube.public_addr,
                        labels=dict(kube.labels),
                        commands=service_commands,
                    ),
                    service_results=service_labels.results,
                    announcer=self.announcer,
                    wake=self.wake,
                    health_interval=self.health_interval,
                    label_timeout=self.label_timeout,
                    label_policy=self.label_policy,
                    label_limiter=label_slots,
                )
                self.watcher = ClusterWatcher(lambda: holder.client, on_change=self.wake)
                if kube.resources:
                    await nursery.start(self.watcher.serve)
                nursery.start_soon(holder.renew_forever)
                if self.access_enabled:
                    supervisor = self.supervisor
                    self.tunnels = await nursery.start(
                        lambda task_status: serve_access(
                            host_id=me.host_id or "",
                            table=supervisor,
                            client=lambda: holder.client,
                            identity=lambda: holder.identity,
                            task_status=task_status,
                        )
                    )
                nursery.start_soon(self._reconcile_loop, static)
                nursery.start_soon(self._describe_loop, holder, me.host_id, static)
                task_status.started(
                    AgentInfo(
                        host_id=me.host_id,
                        nodename=config.nodename,
                        registry=identity.registry or "",
                        static_clusters=tuple(c.name for c in static),
                    )
                )
        finally:
            with trio.CancelScope(shield=True):
                await holder.aclose()

    def describe(self, host_id: str, static: list[KubeCluster]) -> dict[str, Any]:
        """This agent's kube_agent record: what it selects and what failed (for kpctl kube explain)."""
        kube = self.config.kube
        return {
            "host_id": host_id,
            "nodename": self.config.nodename,
            "hostname": kube.public_addr,
            "version": __version__,
            "resources": _plain(list(kube.resources)),
            "labels": dict(kube.labels),
            "static_clusters": [c.name for c in static],
            "failed": dict(self.supervisor.failed) if self.supervisor else {},
            "label_errors": self.supervisor.label_errors() if self.supervisor else {},
            "expires_in": self.config.heartbeat_ttl,
        }

    async def _describe_loop(self, holder: ClientHolder, host_id: str, static: list[KubeCluster]) -> None:
        """Keep the kube_agent record current: sent on change (checked every second) and every ttl/3."""
        last: dict[str, Any] | None = None
        last_sent = float("-inf")
        try:
            while True:
                record = self.describe(host_id, static)
                if record != last or trio.current_time() - last_sent > self.config.heartbeat_ttl / 3:
                    try:
                        await holder.client.put_agent(record)
                        last, last_sent = record, trio.current_time()
                    except KubeportError as err:
                        log.warning("could not publish this agent's description: %s", err.message)
                    self._described.set()
                await trio.sleep(1.0)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(3), contextlib.suppress(KubeportError):
                await holder.client.delete_agent(host_id)

    async def _reconcile_loop(self, static: list[KubeCluster]) -> None:
        supervisor, watcher = self.supervisor, self.watcher
        assert supervisor is not None
        assert watcher is not None
        full = True
        frozen = False
        # Best effort: a registry that is down must not hold serving back (refused heartbeats are retried).
        with trio.move_on_after(5):
            await self._described.wait()
        while True:
            self._wake = trio.Event()
            names: set[str] | None = None
            if not full:
                from_watch, from_labels = watcher.take_changes(), supervisor.take_pending()
                names = None if from_watch is None or from_labels is None else from_watch | from_labels
            else:
                watcher.take_changes()
                supervisor.take_pending()
            try:
                if names is None or names:
                    supervisor.reconcile(watcher.clusters, static, names)
            except Exception:  # a bug must not take every served cluster down; it is logged and retried
                log.exception("reconcile pass failed")
            SERVED_CLUSTERS.set(len(supervisor.served))
            full = False
            if self.freeze_gc and not frozen and watcher.synced.is_set():
                # Everything loaded so far lives as long as the agent: keep it out of the GC's full scans
                # (at 10k clusters those paused the agent for ~0.6 s every few seconds).
                gc.freeze()
                frozen = True
            # Failed registrations are retried periodically even when nothing else happens.
            retry = supervisor.retry_delay()
            with trio.move_on_after(3600 if retry is None else retry) as timer:
                await self._wake.wait()
            if timer.cancelled_caught:
                supervisor.retry_failed()
            await trio.lowlevel.checkpoint()  # let a burst of events land before the next pass


def _plain(value: Any) -> Any:
    """Frozen config values (mapping proxies, tuples) as JSON-ready dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _go(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    from labels import format_go_duration

    return format_go_duration(seconds)
