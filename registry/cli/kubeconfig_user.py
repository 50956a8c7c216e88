"""The user's kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``): kubeport's entries in it, and nothing else.

``kubeport kube login`` adds one cluster and one context per kube cluster, named
``<registry cluster>-<kube cluster>`` (tsh's names), and one user entry ``kubeport-<registry cluster>``
whose credentials come from the exec plugin ``kubeport kube credentials --cluster <registry cluster>``
(``client.authentication.k8s.io/v1``, ``interactiveMode: Never``, ``provideClusterInfo: false``): the
plugin answers with the *current* login's certificate, so a new ``kubeport login`` refreshes every context
without rewriting this file, and an expired login makes kubectl print the plugin's "run kubeport login".

kubectl's merge rules (client-go ``clientcmd``), as far as a writer needs them:

* ``$KUBECONFIG`` is a list of paths (``os.pathsep``); kubectl writes new entries to the *first* file, so
  do we (:func:`kubeconfig_path`). Without ``$KUBECONFIG``: ``~/.kube/config``.
* Entries are matched by name. Ours carry a marker (:data:`EXTENSION`, in the entry's ``extensions``,
  which kubectl keeps when it rewrites the file); the user entry is ours when its exec plugin is ours
  (:func:`is_our_user`). An entry of the same name that is not ours is never replaced: the login is
  refused, naming it. Every other entry, and every key we do not know, is kept as it was.
* The file is locked the way kubectl locks it (``<file>.lock``, created exclusively, removed after), then
  read, changed and written atomically with mode 0600 (``registry.host.files.write_secret_file``).

Refused with one clear message, and never rewritten: a symlink (an atomic replace would silently turn it
into a regular file; the target may belong to someone else), anything but a regular file, a file we cannot
read, one over :data:`MAX_KUBECONFIG_BYTES`, and one that is not a kubeconfig (bad YAML, wrong shapes).

Which command the plugin entry runs (:func:`plugin_command`): when kubeport runs as its console script,
that script's absolute path (kubectl's ``PATH`` may not have it, as tsh writes its own path); otherwise
(``python -m``, tests) this interpreter with ``-m registry.cli.entry kubeport`` and ``PYTHONPATH`` set to the
source tree that is running, so the entry runs the same code that wrote it. ``$KUBEPORT_HOME``, when set,
is recorded in the entry's env (tsh records ``TELEPORT_HOME`` the same way), so kubectl's plugin finds the
login whatever environment kubectl runs in.
"""

from __future__ import annotations

import contextlib
import copy
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from registry.core.errors import BadParameter, NotFound, TooLarge
from registry.core.validation import load_yaml
from registry.host.files import ensure_private_dir, write_secret_file

MAX_KUBECONFIG_BYTES = 8 * 1024 * 1024
EXEC_API_VERSION = "client.authentication.k8s.io/v1"
EXTENSION = "kubeport"  # the marker's name in ``extensions`` of our clusters and contexts
PLUGIN_ARGS = ("kube", "credentials", "--cluster")
LOCK_WAIT_SECONDS = 5.0
_KINDS = (("clusters", "cluster"), ("contexts", "context"), ("users", "user"))


def kubeconfig_path(env: Mapping[str, str] | None = None) -> Path:
    """Where kubectl writes: the first non-empty entry of ``$KUBECONFIG``, else ``~/.kube/config``."""
    env = os.environ if env is None else env
    for part in env.get("KUBECONFIG", "").split(os.pathsep):
        if part.strip():
            return Path(part).expanduser()
    return Path(env.get("HOME") or Path.home()) / ".kube" / "config"


def user_entry_name(registry_cluster: str) -> str:
    return f"kubeport-{registry_cluster}"


def context_name(registry_cluster: str, kube_cluster: str) -> str:
    """tsh's context name: ``<registry cluster>-<kube cluster>``."""
    return f"{registry_cluster}-{kube_cluster}"


def plugin_command(registry_cluster: str) -> tuple[str, list[str], list[dict[str, str]]]:
    """``(command, args, env)`` of the exec plugin entry (module docstring)."""
    args = [*PLUGIN_ARGS, registry_cluster]
    env: list[dict[str, str]] = []
    if os.environ.get("KUBEPORT_HOME"):
        env.append({"name": "KUBEPORT_HOME", "value": str(Path(os.environ["KUBEPORT_HOME"]).expanduser().resolve())})
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is not None and script.name == "kubeport" and script.is_file():
        return str(script.resolve()), args, env
    source_root = Path(__file__).resolve().parents[2]  # .../registry/cli/kubeconfig_user.py -> the tree
    env.append({"name": "PYTHONPATH", "value": str(source_root)})
    return sys.executable, ["-m", "registry.cli.entry", "kubeport", *args], env


def exec_stanza(registry_cluster: str) -> dict[str, Any]:
    command, args, env = plugin_command(registry_cluster)
    stanza: dict[str, Any] = {
        "apiVersion": EXEC_API_VERSION,
        "command": command,
        "args": args,
        "interactiveMode": "Never",
        "provideClusterInfo": False,
        "installHint": "kubeport is needed for this context: install it, then run kubeport login",
    }
    if env:
        stanza["env"] = env
    return stanza


# -- reading and checking ------------------------------------------------------------------------------------


def empty_config() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [],
        "contexts": [],
        "users": [],
        "current-context": "",
    }


def read_kubeconfig(path: Path) -> dict[str, Any]:
    """The kubeconfig at ``path`` as a mapping (an empty one when missing or empty); BadParameter/TooLarge
    for anything we must not rewrite (module docstring)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return empty_config()
    except OSError as exc:
        raise BadParameter(f"cannot read the kubeconfig {path}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(info.st_mode):
        raise BadParameter(
            f"the kubeconfig {path} is a symbolic link: kubeport does not write through links (the target may "
            "be shared or someone else's); point KUBECONFIG at a regular file"
        )
    if not stat.S_ISREG(info.st_mode):
        raise BadParameter(f"the kubeconfig {path} is not a regular file")
    if info.st_size > MAX_KUBECONFIG_BYTES:
        raise TooLarge(f"the kubeconfig {path} is {info.st_size} bytes; the limit is {MAX_KUBECONFIG_BYTES}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise BadParameter(f"cannot read the kubeconfig {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_KUBECONFIG_BYTES + 1)
    if len(data) > MAX_KUBECONFIG_BYTES:
        raise TooLarge(f"the kubeconfig {path} is over {MAX_KUBECONFIG_BYTES} bytes")
    return parse_kubeconfig(data, source=str(path))


def parse_kubeconfig(data: bytes, *, source: str) -> dict[str, Any]:
    def bad(why: str) -> BadParameter:
        return BadParameter(f"the kubeconfig {source} is not one kubeport can update ({why}); fix or move it first")

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise bad("not UTF-8 text") from None
    try:
        # The project's strict loader: depth bounded before parsing, no anchors/aliases, no duplicate keys.
        documents = load_yaml(text, source="it") if text.strip() else [None]
    except BadParameter as exc:
        raise bad(exc.message) from None
    if len(documents) != 1:
        raise bad("more than one YAML document")
    doc = documents[0]
    if doc is None:
        return empty_config()
    if not isinstance(doc, dict):
        raise bad("not a mapping")
    for key, inner in _KINDS:
        items = doc.get(key)
        if items is None:
            doc[key] = []
            continue
        if not isinstance(items, list):
            raise bad(f"{key} is not a list")
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise bad(f"an entry of {key} has no name")
            if item.get(inner) is not None and not isinstance(item.get(inner), dict):
                raise bad(f"{key} entry {item['name']!r}: {inner} is not a mapping")
    current = doc.get("current-context")
    if current is not None and not isinstance(current, str):
        raise bad("current-context is not a string")
    return doc


class _NoAliasDumper(yaml.SafeDumper):
    """Never writes anchors/aliases (shared objects are written out in full): kubeport's own reader refuses
    them, and kubectl never writes them either."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def write_kubeconfig(path: Path, doc: Mapping[str, Any]) -> None:
    ensure_private_dir(path.parent)
    text = yaml.dump(dict(doc), Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=False)
    write_secret_file(path, text.encode())


@contextlib.contextmanager
def locked(path: Path, *, wait: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
    """kubectl's lock: ``<file>.lock`` created exclusively, removed when done (polled, bounded by ``wait``)."""
    ensure_private_dir(path.parent)
    lock = path.with_name(path.name + ".lock")
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
            break
        except FileExistsError:
            if time.monotonic() >= deadline:
                raise BadParameter(
                    f"the kubeconfig {path} is locked ({lock} exists): another kubectl or kubeport is writing it; "
                    "remove the lock file if no such program runs"
                ) from None
            time.sleep(0.05)  # a bounded poll of another process's lock, as kubectl does
        except OSError as exc:
            raise BadParameter(f"cannot lock the kubeconfig {path}: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


def update(path: Path, change: Callable[[dict[str, Any]], Any]) -> Any:
    """Lock, read, ``change`` the document in place, write atomically 0600; returns what ``change`` returns.
    Nothing is written when ``change`` raises."""
    with locked(path):
        doc = read_kubeconfig(path)
        before = copy.deepcopy(doc)
        result = change(doc)
        if doc != before or not path.exists():
            write_kubeconfig(path, doc)
        return result


# -- our entries ---------------------------------------------------------------------------------------------


def _marker(entry: Mapping[str, Any], inner: str) -> Mapping[str, Any] | None:
    body = entry.get(inner)
    extensions = body.get("extensions") if isinstance(body, Mapping) else None
    for item in extensions if isinstance(extensions, list) else ():
        if isinstance(item, Mapping) and item.get("name") == EXTENSION and isinstance(item.get("extension"), Mapping):
            return item["extension"]  # type: ignore[no-any-return]
    return None


def is_our_user(entry: Mapping[str, Any], registry_cluster: str | None = None) -> bool:
    """A user entry whose exec plugin is ``... kube credentials --cluster <registry_cluster>`` (any cluster
    when None), whatever the command path."""
    body = entry.get("user")
    exec_ = body.get("exec") if isinstance(body, Mapping) else None
    args = exec_.get("args") if isinstance(exec_, Mapping) else None
    if not isinstance(args, list) or len(args) < len(PLUGIN_ARGS) + 1:
        return False
    tail = args[-(len(PLUGIN_ARGS) + 1) :]
    if tuple(tail[:-1]) != PLUGIN_ARGS:
        return False
    return registry_cluster is None or tail[-1] == registry_cluster


def _ours(entry: Mapping[str, Any], inner: str, registry_cluster: str) -> bool:
    marker = _marker(entry, inner)
    return marker is not None and marker.get("registry_cluster") == registry_cluster


@dataclass(frozen=True)
class KubeEntry:
    """One kube cluster to write: its name, the front door URL for it, and the CA (base64) to trust."""

    kube_cluster: str
    server: str
    ca_data: str


def _find(items: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((item for item in items if item.get("name") == name), None)


def _put(items: list[dict[str, Any]], entry: dict[str, Any]) -> None:
    for index, item in enumerate(items):
        if item.get("name") == entry["name"]:
            items[index] = entry
            return
    items.append(entry)


def add_entries(
    doc: dict[str, Any], *, registry_cluster: str, entries: Sequence[KubeEntry], current: str | None, source: str
) -> None:
    """Add or refresh our cluster, context and user entries for ``entries`` and make ``current`` (a kube
    cluster name) the current context. Refuses, changing nothing, when a name is taken by an entry that is
    not ours."""
    user_name = user_entry_name(registry_cluster)
    existing_user = _find(doc["users"], user_name)
    if existing_user is not None and not is_our_user(existing_user, registry_cluster):
        raise BadParameter(_taken(source, "user", user_name))
    for entry in entries:
        name = context_name(registry_cluster, entry.kube_cluster)
        for key, inner in (("clusters", "cluster"), ("contexts", "context")):
            found = _find(doc[key], name)
            if found is not None and not _ours(found, inner, registry_cluster):
                raise BadParameter(_taken(source, inner, name))
    _put(doc["users"], {"name": user_name, "user": {"exec": exec_stanza(registry_cluster)}})
    for entry in entries:
        name = context_name(registry_cluster, entry.kube_cluster)
        marker = [
            {"name": EXTENSION, "extension": {"registry_cluster": registry_cluster, "kube_cluster": entry.kube_cluster}}
        ]
        _put(
            doc["clusters"],
            {
                "name": name,
                "cluster": {"server": entry.server, "certificate-authority-data": entry.ca_data, "extensions": marker},
            },
        )
        _put(doc["contexts"], {"name": name, "context": {"cluster": name, "user": user_name, "extensions": marker}})
    if current is not None:
        doc["current-context"] = context_name(registry_cluster, current)


def _taken(source: str, kind: str, name: str) -> str:
    return (
        f'the kubeconfig {source} already has a {kind} "{name}" that kubeport did not write: it is left as it is; '
        f"rename or remove it (kubectl config delete-{kind} {name}) to log in"
    )


def our_kube_clusters(doc: Mapping[str, Any], registry_cluster: str) -> dict[str, str]:
    """``{context name: kube cluster}`` of our contexts for ``registry_cluster``."""
    found = {}
    for item in doc.get("contexts") or []:
        marker = _marker(item, "context")
        if marker is not None and marker.get("registry_cluster") == registry_cluster:
            found[str(item["name"])] = str(marker.get("kube_cluster", ""))
    return found


def current_kube_cluster(doc: Mapping[str, Any], registry_cluster: str) -> str | None:
    """The kube cluster of the current context when it is one of ours for ``registry_cluster``."""
    current = doc.get("current-context")
    return our_kube_clusters(doc, registry_cluster).get(current) if isinstance(current, str) else None


def remove_entries(doc: dict[str, Any], *, registry_cluster: str, kube_cluster: str | None) -> list[str]:
    """Remove our entries for ``kube_cluster`` (every one of ours for ``registry_cluster`` when None): their
    contexts and clusters, and our user entry once no context of ours needs it. With ``kube_cluster=None``
    every context whose user is our plugin for that registry cluster goes too, marked or not. Returns the
    kube clusters (or context names) removed; NotFound when a named cluster has no entry of ours."""
    users = {str(u["name"]) for u in doc["users"] if is_our_user(u, registry_cluster)}
    ours = our_kube_clusters(doc, registry_cluster)
    if kube_cluster is None:
        doomed = set(ours)
        doomed |= {
            str(c["name"])
            for c in doc["contexts"]
            if isinstance(c.get("context"), Mapping) and c["context"].get("user") in users
        }
    else:
        doomed = {name for name, kube in ours.items() if kube == kube_cluster}
        if not doomed:
            raise NotFound(f'not logged into kubernetes cluster "{kube_cluster}" (see kubeport kube ls)')
    removed = [ours.get(name) or name for name in sorted(doomed)]
    doc["contexts"] = [c for c in doc["contexts"] if c["name"] not in doomed]
    doc["clusters"] = [
        c for c in doc["clusters"] if not (c["name"] in doomed and _ours(c, "cluster", registry_cluster))
    ]
    still_used = {c["context"].get("user") for c in doc["contexts"] if isinstance(c.get("context"), Mapping)}
    doc["users"] = [u for u in doc["users"] if not (u["name"] in users and u["name"] not in still_used)]
    if doc.get("current-context") in doomed:
        doc["current-context"] = ""
    return removed
