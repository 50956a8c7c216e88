"""The pieces of the wire codec every resource kind shares: envelope, metadata, timestamps, plain values.

Internal to the codec (``codec``, ``codec_access``); other code uses :mod:`registry.core.codec`.

Invariants:

* Every decoding failure is a BadParameter raised through ``Fields.fail``, so its message starts with the
  resource's subject (``kube_cluster "a"``; a bare ``token``: a token's name is its secret value and is
  never shown) and names the field path.
* Timestamps decode to aware UTC datetimes and encode as RFC 3339 UTC with a ``Z``
  (:mod:`registry.core.timefmt`); what ``format_rfc3339`` writes, ``decode_timestamp`` reads back to an equal
  datetime.
* ``plain`` returns only dict/list/str/number/bool/None, which both dumpers (YAML and JSON) can write.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

from labels import validate_labels
from registry.core.resources import ORIGIN_LABEL, ORIGIN_VALUES, Metadata
from registry.core.timefmt import RFC3339_RE, as_utc, format_rfc3339, parse_rfc3339
from registry.core.validation import Fields, check_name, describe, label_errors, quote

NAME_RE = re.compile(r"^[a-zA-Z0-9._-]+$")  # Teleport's kube cluster name rule; also roles, hosts, tokens


# -- decoding -----------------------------------------------------------------------------------------------


def _subject(kind: str, doc: Mapping[str, Any]) -> str:
    """How messages name the resource: ``kube_cluster "x"``, or the bare kind when the name is unusable."""
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if kind == "token" or not isinstance(name, str) or not name:
        return kind  # a token's name is its secret value: never shown
    return f"{kind} {quote(name)}"


def envelope(doc: Mapping[str, Any], kind: str, path: str = "", subject: str = "") -> tuple[Fields, str]:
    subject = subject or _subject(kind, doc)
    top = Fields(doc, subject=subject, path=path)
    top.reject_unknown(("kind", "version", "sub_kind", "metadata", "spec"))
    sub_kind = top.raw("sub_kind")
    if sub_kind not in (None, ""):
        top.fail(f"{top.at('sub_kind')} must be empty (got {describe(sub_kind)})")
    return top, subject


def check_version(top: Fields, supported: Sequence[str], default: str | None) -> str:
    version = top.raw("version")
    if version is None and default is not None:
        return default
    if version is None:
        top.fail(f"{top.at('version')} is required (use {supported[-1]})")
    if version not in supported:
        wanted = f"only {supported[0]}" if len(supported) == 1 else f"supported: {', '.join(supported)}"
        top.fail(f"unsupported version {describe(version)} ({wanted})")
    return str(version)


def decode_timestamp(fields: Fields, key: str) -> datetime | None:
    """An aware UTC datetime from an RFC 3339 string or a YAML timestamp (naive ones are UTC, as in YAML)."""
    value = fields.raw(key)
    if value is None:
        return None
    rule = "must be an RFC 3339 timestamp such as 2027-01-01T00:00:00Z"
    if isinstance(value, date) and not isinstance(value, datetime):
        fields.fail(f"{fields.at(key)} {rule}, with a time of day (got date {value})")
    if not isinstance(value, datetime) and not (isinstance(value, str) and RFC3339_RE.fullmatch(value)):
        fields.fail(f"{fields.at(key)} {rule} (got {describe(value)})")
    try:
        return as_utc(value) if isinstance(value, datetime) else parse_rfc3339(value)  # YAML may have parsed it
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        fields.fail(f"{fields.at(key)} is out of range (got {describe(str(value))})")
    except ValueError:
        fields.fail(f"{fields.at(key)} {rule} (got {describe(value)}: not a real date or time)")


def _labels(fields: Fields, key: str) -> dict[str, str]:
    with label_errors(fail=fields.fail):  # the library names the path (what=)
        return validate_labels(fields.raw(key) or {}, what=fields.at(key))


def decode_metadata(top: Fields, subject: str, *, pattern: re.Pattern[str] = NAME_RE, secret: bool = False) -> Metadata:
    meta = top.mapping("metadata")
    meta.reject_unknown(("name", "description", "labels", "expires", "revision", "id", "namespace"))
    name = check_name(meta.raw("name"), subject=subject, path=meta.at("name"), pattern=pattern, show=not secret)
    namespace = meta.raw("namespace")
    if namespace not in (None, "", "default"):
        meta.fail(f'{meta.at("namespace")} must be "default" (got {describe(namespace)})')
    # metadata.id: Teleport's legacy resource id (still shown by `tctl get` -> edit); accepted and ignored.
    labels = _labels(meta, "labels")
    origin = labels.get(ORIGIN_LABEL)
    if origin and origin not in ORIGIN_VALUES:
        meta.fail(f"{meta.at('labels')}.{ORIGIN_LABEL} must be one of {', '.join(ORIGIN_VALUES)} (got {quote(origin)})")
    revision = meta.raw("revision")
    if isinstance(revision, int) and not isinstance(revision, bool) and revision >= 0:
        revision = str(revision)  # an unquoted YAML revision; the server treats it as text anyway
    if revision is not None and (not isinstance(revision, str) or len(revision) > 64):
        meta.fail(f"{meta.at('revision')} must be the string the registry returned (got {describe(revision)})")
    return Metadata(
        name=name,
        description=meta.string("description", limit=4096),
        labels=labels,
        expires=decode_timestamp(meta, "expires"),
        revision=revision or "",
    )


# -- encoding -----------------------------------------------------------------------------------------------


def metadata_dict(metadata: Metadata, *, name: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": metadata.name if name is None else name}
    if metadata.description:
        out["description"] = metadata.description
    if metadata.labels:
        out["labels"] = dict(metadata.labels)
    if metadata.expires is not None:
        out["expires"] = format_rfc3339(metadata.expires)
    if metadata.revision:
        out["revision"] = metadata.revision
    return out


def plain(value: Any) -> Any:
    """Plain dict/list/str/number/bool/None for the dumpers (mappings, tuples and datetimes converted)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return format_rfc3339(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value
