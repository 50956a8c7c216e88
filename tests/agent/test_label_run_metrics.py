"""kubeport_agent_dynamic_label_runs_total{result}: every dynamic-label run the agent makes is counted as ok,
failed or refused (issue 11 §4). labels/ only calls back (``on_run``); the agent's default runner factory
(``counted_labels``) does the counting."""

from __future__ import annotations

import inspect

import trio
from prometheus_client import REGISTRY

from agent.clusters import Supervisor, counted_labels
from labels.runner import CommandSpec, DynamicLabels


def _runs(result: str) -> float:
    return REGISTRY.get_sample_value("kubeport_agent_dynamic_label_runs_total", {"result": result}) or 0.0


async def test_every_run_is_counted_by_result() -> None:
    before = {result: _runs(result) for result in ("ok", "failed", "refused")}
    labels = counted_labels(
        [
            CommandSpec(key="ok", command=("/bin/sh", "-c", "echo fine"), period=3600),
            CommandSpec(key="bad", command=("/bin/sh", "-c", "exit 3"), period=3600),
            CommandSpec(key="no", command=("rm", "-rf", "/"), period=3600, refusal="not on the allow-list"),
        ]
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(labels.serve)  # started = every label ran once
            nursery.cancel_scope.cancel()
    assert labels.results()["ok"] == "fine"
    assert _runs("ok") == before["ok"] + 1
    assert _runs("failed") == before["failed"] + 1
    assert _runs("refused") == before["refused"] + 1


def test_the_agent_counts_by_default() -> None:
    # The supervisor's default factory is the counting one (a plain DynamicLabels would count nothing).
    default = inspect.signature(Supervisor).parameters["label_runners"].default
    assert default is counted_labels
    assert isinstance(counted_labels([]), DynamicLabels)
