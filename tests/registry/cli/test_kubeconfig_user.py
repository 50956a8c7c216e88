"""kubeport's entries in the user's kubeconfig: kubectl's merge rules, never clobbering, refusing what must
not be rewritten (symlinked, unreadable, malformed, huge), and removing only our own entries."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from registry.cli import kubeconfig_user as kc
from registry.core.errors import BadParameter, NotFound, TooLarge

ENTRY = kc.KubeEntry("prod", "https://door:3026/v1/clusters/cHJvZA", "Q0E=")
DEV = kc.KubeEntry("dev", "https://door:3026/v1/clusters/ZGV2", "Q0E=")


def others() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "work", "cluster": {"server": "https://work:6443"}}],
        "contexts": [{"name": "work", "context": {"cluster": "work", "user": "me", "namespace": "ns"}}],
        "users": [{"name": "me", "user": {"token": "secret-token"}}],
        "current-context": "work",
        "preferences": {},
        "extensions": [{"name": "someone-elses", "extension": {"x": 1}}],
    }


def login(path: Path, *entries: kc.KubeEntry, cluster: str = "reg", current: str | None = "prod") -> None:
    kc.update(
        path,
        lambda doc: kc.add_entries(
            doc, registry_cluster=cluster, entries=list(entries) or [ENTRY], current=current, source=str(path)
        ),
    )


def test_kubeconfig_path_follows_kubectl(tmp_path: Path) -> None:
    assert kc.kubeconfig_path({"KUBECONFIG": f":{tmp_path}/a:{tmp_path}/b", "HOME": "/h"}) == tmp_path / "a"
    assert kc.kubeconfig_path({"HOME": str(tmp_path)}) == tmp_path / ".kube" / "config"
    assert kc.kubeconfig_path({"KUBECONFIG": "", "HOME": str(tmp_path)}) == tmp_path / ".kube" / "config"


def test_a_new_file_is_created_0600_in_a_private_dir(tmp_path: Path) -> None:
    path = tmp_path / "new" / ".kube" / "config"
    login(path)
    assert path.stat().st_mode & 0o777 == 0o600
    doc = yaml.safe_load(path.read_text())
    assert doc["current-context"] == "reg-prod"
    assert doc["contexts"] == [
        {
            "name": "reg-prod",
            "context": {
                "cluster": "reg-prod",
                "user": "kubeport-reg",
                "extensions": [{"name": "kubeport", "extension": {"registry_cluster": "reg", "kube_cluster": "prod"}}],
            },
        }
    ]
    assert doc["clusters"][0]["cluster"]["server"] == ENTRY.server
    assert kc.current_kube_cluster(doc, "reg") == "prod"


def test_other_entries_and_unknown_keys_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(others()))
    login(path)
    login(path, DEV, current="dev")
    doc = yaml.safe_load(path.read_text())
    base = others()
    for key in ("clusters", "contexts", "users"):
        assert base[key][0] in doc[key], f"{key}: another tool's entry is untouched"
    assert doc["extensions"] == base["extensions"]
    assert {c["name"] for c in doc["contexts"]} == {"work", "reg-prod", "reg-dev"}
    assert doc["current-context"] == "reg-dev"
    assert [u["name"] for u in doc["users"]].count("kubeport-reg") == 1


def test_a_second_registry_cluster_gets_its_own_entries(tmp_path: Path) -> None:
    path = tmp_path / "config"
    login(path, cluster="reg")
    login(path, cluster="other-reg")
    doc = yaml.safe_load(path.read_text())
    assert {u["name"] for u in doc["users"]} == {"kubeport-reg", "kubeport-other-reg"}
    kc.update(path, lambda d: kc.remove_entries(d, registry_cluster="reg", kube_cluster=None))
    doc = yaml.safe_load(path.read_text())
    assert {c["name"] for c in doc["contexts"]} == {"other-reg-prod"}
    assert {u["name"] for u in doc["users"]} == {"kubeport-other-reg"}


@pytest.mark.parametrize("kind", ["cluster", "context", "user"])
def test_a_name_taken_by_someone_else_is_refused_and_nothing_changes(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "config"
    doc = others()
    name = "kubeport-reg" if kind == "user" else "reg-prod"
    body = {"user": {"token": "t"}} if kind == "user" else {kind: {"server": "https://x"} if kind == "cluster" else {}}
    doc[kind + "s"].append({"name": name, **body})
    path.write_text(yaml.safe_dump(doc))
    before = path.read_bytes()
    with pytest.raises(BadParameter, match=f'{kind} "{name}" that kubeport did not write'):
        login(path)
    assert path.read_bytes() == before


def test_a_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "shared-config"
    target.write_text(yaml.safe_dump(others()))
    link = tmp_path / "config"
    link.symlink_to(target)
    with pytest.raises(BadParameter, match="symbolic link"):
        login(link)
    assert link.is_symlink() and yaml.safe_load(target.read_text()) == others()


def test_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    with pytest.raises(BadParameter, match="not a regular file"):
        login(tmp_path / "config")


def test_an_unreadable_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(others()))
    real_open = os.open

    def deny(file: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if Path(file) == path and not flags & (os.O_WRONLY | os.O_RDWR):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(kc.os, "open", deny)  # root reads any mode; refuse the read itself
    with pytest.raises(BadParameter, match=r"cannot read the kubeconfig .*Permission denied"):
        login(path)
    assert yaml.safe_load(path.read_text()) == others()


@pytest.mark.parametrize(
    "text",
    [
        "clusters: [",  # bad YAML
        "- a\n- b\n",  # not a mapping
        "clusters: {a: 1}\n",  # not a list
        "contexts:\n- context: {}\n",  # an entry without a name
        "users:\n- name: x\n  user: [1]\n",
        "current-context: [1]\n",
        "a: &a [*a]\n",  # a self-referencing alias
        "\xff\xfe",
    ],
)
def test_a_malformed_kubeconfig_is_refused_and_kept(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config"
    path.write_bytes(text.encode("latin-1"))
    before = path.read_bytes()
    with pytest.raises(BadParameter, match="not one kubeport can update"):
        login(path)
    assert path.read_bytes() == before


def test_deeply_nested_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("x: " + "[" * 50_000 + "]" * 50_000)
    with pytest.raises(BadParameter):
        login(path)


def test_a_huge_kubeconfig_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config"
    with path.open("wb") as handle:
        handle.truncate(kc.MAX_KUBECONFIG_BYTES + 1)
    with pytest.raises(TooLarge):
        login(path)


def test_an_empty_file_is_an_empty_kubeconfig(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("")
    login(path)
    assert yaml.safe_load(path.read_text())["current-context"] == "reg-prod"


def test_remove_one_cluster_then_all(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(others()))
    login(path, ENTRY, DEV)
    assert kc.update(path, lambda d: kc.remove_entries(d, registry_cluster="reg", kube_cluster="prod")) == ["prod"]
    doc = yaml.safe_load(path.read_text())
    assert {c["name"] for c in doc["contexts"]} == {"work", "reg-dev"}
    assert doc["current-context"] == "", "the current context was removed"
    with pytest.raises(NotFound, match='not logged into kubernetes cluster "prod"'):
        kc.update(path, lambda d: kc.remove_entries(d, registry_cluster="reg", kube_cluster="prod"))
    with pytest.raises(NotFound):
        kc.update(path, lambda d: kc.remove_entries(d, registry_cluster="reg", kube_cluster="work"))
    kc.update(path, lambda d: kc.remove_entries(d, registry_cluster="reg", kube_cluster=None))
    doc = yaml.safe_load(path.read_text())
    base = others()
    assert (doc["clusters"], doc["contexts"], doc["users"]) == (base["clusters"], base["contexts"], base["users"])


def test_full_logout_removes_contexts_using_our_plugin_even_without_our_marker(tmp_path: Path) -> None:
    """A context someone made by hand (kubectl config set-context) with our user entry is ours to remove."""
    path = tmp_path / "config"
    login(path)
    doc = yaml.safe_load(path.read_text())
    doc["contexts"].append({"name": "handmade", "context": {"cluster": "reg-prod", "user": "kubeport-reg"}})
    doc["current-context"] = "handmade"
    path.write_text(yaml.safe_dump(doc))
    kc.update(path, lambda d: kc.remove_entries(d, registry_cluster="reg", kube_cluster=None))
    doc = yaml.safe_load(path.read_text())
    assert doc["contexts"] == [] and doc["users"] == [] and doc["clusters"] == []
    assert doc["current-context"] == ""


def test_a_held_lock_is_waited_for_then_reported(tmp_path: Path) -> None:
    path = tmp_path / "config"
    lock = tmp_path / "config.lock"
    lock.write_text("")
    with pytest.raises(BadParameter, match="locked"), kc.locked(path, wait=0.2):
        pass
    released = threading.Event()

    def release() -> None:
        released.set()  # before the unlink: the waiter may take the lock the moment the file is gone
        lock.unlink()

    timer = threading.Timer(0.1, release)
    timer.start()
    with kc.locked(path, wait=10):
        assert released.is_set()
    timer.join()
    assert not lock.exists(), "our own lock is removed"


def test_plugin_entry_records_home_and_runs_this_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBEPORT_HOME", str(tmp_path / "kp"))
    monkeypatch.setattr(kc.sys, "argv", ["/somewhere/pytest"])
    stanza = kc.exec_stanza("reg")
    env = {item["name"]: item["value"] for item in stanza["env"]}
    assert env["KUBEPORT_HOME"] == str((tmp_path / "kp").resolve())
    assert stanza["command"] == kc.sys.executable
    assert stanza["args"][-4:] == ["kube", "credentials", "--cluster", "reg"]
    script = tmp_path / "bin" / "kubeport"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    monkeypatch.setattr(kc.sys, "argv", [str(script)])
    monkeypatch.delenv("KUBEPORT_HOME")
    stanza = kc.exec_stanza("reg")
    assert stanza["command"] == str(script.resolve()) and "env" not in stanza
    assert kc.is_our_user({"name": "u", "user": {"exec": stanza}}, "reg")
    assert not kc.is_our_user({"name": "u", "user": {"exec": stanza}}, "other")
