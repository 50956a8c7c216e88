"""Which programs this agent runs for dynamic labels: the host admin's ``allowed_label_commands``.

A kube_cluster's ``spec.dynamic_labels`` come from the registry, so without a rule here anyone who may
write a kube_cluster could run any program on every agent whose selectors match. The host's admin lists
the programs this agent will run for them (``kubernetes_service.allowed_label_commands``; default:
none); the registry separately requires a grant to set them. Service-level ``commands`` in the agent's
own config are the host admin's and are not restricted (they are only resolved the same way).

Resolution (done once, at agent start, for the allow-list; with the same rules for a label's argv[0]):

* a **bare name** (no ``/``) is looked up on the agent's ``PATH`` as it was at start, absolute
  directories only (an empty or relative ``PATH`` entry would depend on the working directory and is
  skipped): the first directory holding an executable regular file of that name wins. The result is the
  directory joined with the name, *not* resolved through symlinks;
* an **absolute path** must already be in normal form (no ``.``/``..`` components, no doubled or trailing
  slashes) and is taken as written;
* anything else (``./x``, ``bin/x``, ``../x``, ``~/x``, ``.``, ``..``, empty, NUL) is refused: a
  relative path means something different in every working directory.

A label's argv[0] is allowed when its resolution is one of the allowed paths *as strings*; the program
then executed is exactly that path (``CommandSpec.executable``), with argv[0] passed as written, whose
basename equals the path's. Two spellings of the same file are deliberately not equivalent: multi-call
binaries (busybox, single-binary coreutils) choose what to do from argv[0], so allowing
``/usr/bin/uname`` must not allow another name that links to the same file (``sh``). Symlinks *inside* an
allowed path are followed by the kernel at exec time, as the admin wrote it.

An allow-list entry that does not resolve (not found on PATH, not an executable file) is a configuration
error at start: the admin asked for something this host does not have, and silently allowing nothing
would look like a registry problem.

Note that allowing an interpreter (``python3``, ``sh``) allows whatever code its arguments carry: the
registry grant (``kube_cluster_dynamic_labels``) is the other half of the decision.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from registry.core.errors import BadParameter
from registry.core.validation import quote

log = logging.getLogger(__name__)

SETTING = "kubernetes_service.allowed_label_commands"
_CACHE_LIMIT = 4096


def search_path(path_env: str) -> tuple[str, ...]:
    """The absolute, normalised directories of a ``PATH`` value, in order, without duplicates."""
    dirs: list[str] = []
    for entry in path_env.split(os.pathsep):
        if entry and os.path.isabs(entry):
            normal = os.path.normpath(entry)
            if normal not in dirs:
                dirs.append(normal)
    return tuple(dirs)


def is_normal_absolute(path: str) -> bool:
    return os.path.isabs(path) and os.path.normpath(path) == path and not path.startswith("//") and "\0" not in path


def is_bare_name(name: str) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..") and "\0" not in name


def _executable_file(path: str) -> bool:
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISREG(mode) and os.access(path, os.X_OK)


def resolve(name: str, dirs: Sequence[str]) -> str | None:
    """``name`` as an absolute path by the module's rules, or None (not found, or a refused spelling)."""
    if is_bare_name(name):
        for directory in dirs:
            candidate = os.path.join(directory, name)
            if _executable_file(candidate):
                return candidate
        return None
    if is_normal_absolute(name):
        return name
    return None


@dataclass(frozen=True)
class Decision:
    """``executable`` to run (allowed), or ``refusal`` (the label's error value, before `` output: ``)."""

    executable: str | None
    refusal: str | None


class LabelCommandPolicy:
    """The allow-list, resolved at start; :meth:`check` decides one argv[0] (cached, bounded)."""

    def __init__(self, allowed: Iterable[str], dirs: Sequence[str]) -> None:
        self.allowed = frozenset(allowed)
        self.dirs = tuple(dirs)
        self._cache: dict[str, Decision] = {}

    @classmethod
    def from_entries(cls, entries: Sequence[str], *, path_env: str) -> LabelCommandPolicy:
        """Resolve the config's entries against ``path_env``; BadParameter names an entry that does not."""
        dirs = search_path(path_env)
        allowed: list[str] = []
        for index, entry in enumerate(entries):
            resolved = resolve(entry, dirs)
            where = f"{SETTING}[{index}]"
            if resolved is None:
                if is_bare_name(entry):
                    raise BadParameter(
                        f"{where}: {quote(entry)} was not found on the agent's PATH "
                        f"({os.pathsep.join(dirs) or 'empty'}); install it, give its absolute path, or remove it"
                    )
                raise BadParameter(f"{where}: {quote(entry)} must be a bare name or a normalised absolute path")
            if not _executable_file(resolved):
                raise BadParameter(f"{where}: {quote(resolved)} is not an executable file on this host")
            if is_bare_name(entry):
                log.info("dynamic labels may run %s: %s (resolved on PATH at start)", entry, resolved)
            allowed.append(resolved)
        return cls(allowed, dirs)

    def check(self, argv0: str) -> Decision:
        decision = self._cache.get(argv0)
        if decision is None:
            decision = self._decide(argv0)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[argv0] = decision
        return decision

    def _decide(self, argv0: str) -> Decision:
        shown = quote(argv0)
        if not (is_bare_name(argv0) or is_normal_absolute(argv0)):
            return Decision(
                None,
                f"command not allowed on this agent: {shown} (use a bare name or a normalised absolute path; "
                f"relative paths depend on the agent's working directory)",
            )
        resolved = resolve(argv0, self.dirs)
        if resolved is not None and resolved in self.allowed:
            return Decision(resolved, None)
        return Decision(None, f"command not allowed on this agent: {shown} ({SETTING})")


def resolve_service_command(name: str, argv0: str, path_env: str, cwd: str) -> str | None:
    """The executable for a service-level command (the host admin's own ``commands``), fixed at start.

    Bare names are looked up on PATH now; a relative path with a ``/`` is made absolute against the
    agent's working directory now (and a warning says so); None (and a warning) when nothing is found,
    in which case the label's value reports it at every run.
    """
    if is_bare_name(argv0):
        found = resolve(argv0, search_path(path_env))
        if found is None:
            log.warning("service label %s: %s was not found on the agent's PATH at start", name, quote(argv0))
        return found
    if os.path.isabs(argv0):
        return None  # run as written
    absolute = os.path.normpath(os.path.join(cwd, argv0))
    log.warning(
        "service label %s: %s is relative to the agent's working directory; using %s", name, quote(argv0), absolute
    )
    return absolute
