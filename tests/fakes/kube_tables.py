"""Server-side printing: ``meta.k8s.io/v1`` Table responses, which ``kubectl get`` asks for.

Pure. kubectl sends ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io,...,application/json`` and prints
the Table's columns; without a Table it would print a bare list. The fake answers Tables like a real
server: the first acceptable media range wins; rows carry ``PartialObjectMetadata`` (``includeObject=
Metadata``, the default), the full object (``Object``) or nothing (``None``).

Simplified: columns for namespaces, pods, secrets, serviceaccounts and configmaps imitate the real
printers (NAME/STATUS/AGE, NAME/READY/STATUS/RESTARTS/AGE, ...); every other resource gets the real
default convertor's ``Name`` + ``Created At``. Ages are rounded like kubectl's short durations.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tests.fakes.kube_status import bad_request

Obj = dict[str, Any]
Column = tuple[str, str, Callable[[Obj, datetime], Any]]  # (name, type, cell)


def wants_table(accept: str | None) -> bool:
    """True when the first media range the fake can serve asks for a meta.k8s.io Table."""
    for entry in (accept or "").split(","):
        kind, *raw_params = (part.strip() for part in entry.split(";"))
        params = dict(p.partition("=")[::2] for p in raw_params)
        if kind.lower() not in ("application/json", "*/*", "application/*"):
            continue  # protobuf, yaml, ...: the fake speaks JSON only, try the next range
        if params.get("as") == "Table":
            return params.get("g") == "meta.k8s.io" and params.get("v") in ("v1", "v1beta1")
        if "as" not in params:
            return False
    return False


def short_age(created: str, now: datetime) -> str:
    try:
        then = datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except (TypeError, ValueError):
        return "<unknown>"
    seconds = max(0, int((now - then).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h"
    return f"{hours // 24}d"


def _meta(obj: Obj, key: str) -> Any:
    return obj.get("metadata", {}).get(key, "")


def _age(obj: Obj, now: datetime) -> str:
    return short_age(str(_meta(obj, "creationTimestamp")), now)


def _name(obj: Obj, _now: datetime) -> Any:
    return _meta(obj, "name")


def _count(value: Any) -> int:
    return len(value) if isinstance(value, dict | list) else 0


def _pod_ready(obj: Obj, _now: datetime) -> str:
    containers = obj.get("spec", {}).get("containers") if isinstance(obj.get("spec"), dict) else None
    return f"0/{_count(containers)}"


def _phase(obj: Obj, _now: datetime) -> Any:
    status = obj.get("status")
    return status.get("phase", "") if isinstance(status, dict) else ""


_COLUMNS: dict[str, list[Column]] = {
    "namespaces": [("Name", "string", _name), ("Status", "string", _phase), ("Age", "string", _age)],
    "pods": [
        ("Name", "string", _name),
        ("Ready", "string", _pod_ready),
        ("Status", "string", _phase),
        ("Restarts", "string", lambda o, n: "0"),
        ("Age", "string", _age),
    ],
    "secrets": [
        ("Name", "string", _name),
        ("Type", "string", lambda o, n: o.get("type", "")),
        ("Data", "string", lambda o, n: _count(o.get("data"))),
        ("Age", "string", _age),
    ],
    "serviceaccounts": [
        ("Name", "string", _name),
        ("Secrets", "string", lambda o, n: _count(o.get("secrets"))),
        ("Age", "string", _age),
    ],
    "configmaps": [
        ("Name", "string", _name),
        ("Data", "string", lambda o, n: _count(o.get("data")) + _count(o.get("binaryData"))),
        ("Age", "string", _age),
    ],
}
_DEFAULT: list[Column] = [
    ("Name", "string", _name),
    ("Created At", "date", lambda o, n: _meta(o, "creationTimestamp")),
]


def include_object(query: dict[str, list[str]]) -> str:
    value = (query.get("includeObject") or ["Metadata"])[-1]
    if value not in ("None", "Metadata", "Object"):
        raise bad_request(
            f'includeObject: Unsupported value: "{value[:40]}": supported values: "Metadata", "None", "Object"'
        )
    return value


def to_table(
    resource: str,
    objects: list[Obj],
    *,
    now: datetime,
    include: str,
    resource_version: str = "",
    with_columns: bool = True,
) -> Obj:
    columns = _COLUMNS.get(resource, _DEFAULT)
    rows = []
    for obj in objects:
        row: Obj = {"cells": [cell(obj, now) for _, _, cell in columns]}
        if include == "Metadata":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata", {}),
            }
        elif include == "Object":
            row["object"] = obj
        rows.append(row)
    definitions = [
        {
            "name": name,
            "type": kind,
            "format": "name" if name == "Name" else "",
            "description": "",
            "priority": 0,
        }
        for name, kind, _ in columns
    ]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version} if resource_version else {},
        "columnDefinitions": definitions if with_columns else [],
        "rows": rows,
    }
