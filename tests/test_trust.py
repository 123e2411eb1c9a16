"""One cluster key, many projects: its line serves every home any setup authorized, a new key takes those
homes from an old one, and revoke takes them from every key. On a file, then on real sshd."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from invoke import Exit

from conftest import WORDJOBS, make_context, write_lines
from reductio import tasks
from reductio.wire.gate_request import request
from reductio.worker.authorized_keys import COMMENT, _served, step_authorize

KEY_1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOne reductio-cluster"
KEY_2 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITwo reductio-cluster"
MINE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMine me@laptop"
ATTEMPT = "20261202T040135-2f3c96b7"


def authorize(path: Path, public, homes) -> dict:
    return step_authorize({"path": str(path), "public": public, "homes": homes,
                           "pythons": [f"{home}/venv/bin/python" for home in homes or []]})


def served(path: Path) -> dict:
    """Per cluster key in the file, the homes its line serves."""
    lines = [line for line in path.read_text().splitlines() if line.endswith(COMMENT)]
    return {line.split()[-2]: [home for _, home in _served(line)] for line in lines}


def test_a_keys_line_serves_every_home_any_setup_authorized_newest_first(tmp_path):
    keys = tmp_path / "authorized_keys"
    keys.write_text(MINE + "\n")
    authorize(keys, KEY_1, ["~/project-a/w0", "/srv/a with space"])
    authorize(keys, KEY_1, ["~/project-b/w0"])
    assert served(keys) == {KEY_1.split()[1]: ["~/project-b/w0", "~/project-a/w0", "/srv/a with space"]}
    authorize(keys, KEY_1, ["~/project-a/w0", "/srv/a with space"])  # setup of A again: nothing is lost
    assert served(keys) == {KEY_1.split()[1]: ["~/project-a/w0", "/srv/a with space", "~/project-b/w0"]}
    assert keys.read_text().splitlines()[0] == MINE
    (line,) = [line for line in keys.read_text().splitlines() if line.endswith(COMMENT)]
    assert _served(line)[0] == ("~/project-a/w0/venv/bin/python", "~/project-a/w0")


def test_a_new_key_takes_its_homes_from_every_earlier_key_and_an_emptied_line_goes(tmp_path):
    keys = tmp_path / "authorized_keys"
    keys.write_text(MINE + "\n" + "ssh-ed25519 AAAAOld reductio-cluster\n")  # before the gate: unrestricted
    authorize(keys, KEY_1, ["~/a", "~/b", "~/c"])
    assert served(keys) == {KEY_1.split()[1]: ["~/a", "~/b", "~/c"]}
    authorize(keys, KEY_2, ["~/a", "~/b"])  # rotated after dropping worker c: the old key keeps only c
    assert served(keys) == {KEY_1.split()[1]: ["~/c"], KEY_2.split()[1]: ["~/a", "~/b"]}
    authorize(keys, KEY_2, [os.path.expanduser("~/c")])  # the same home however it is spelt
    assert served(keys) == {KEY_2.split()[1]: ["/".join([os.path.expanduser("~"), "c"]), "~/a", "~/b"]}
    assert keys.read_text().splitlines()[0] == MINE


def test_revoke_takes_the_homes_from_every_key_or_every_cluster_line_and_leaves_the_users_keys(tmp_path):
    keys = tmp_path / "authorized_keys"
    keys.write_text(MINE + "\n")
    authorize(keys, KEY_1, ["~/a", "~/b"])
    authorize(keys, KEY_2, ["~/c"])
    assert authorize(keys, None, ["~/b", "~/c"])["removed"] == 2
    assert served(keys) == {KEY_1.split()[1]: ["~/a"]}
    authorize(keys, KEY_2, ["~/c"])
    assert authorize(keys, None, None)["removed"] == 2
    assert keys.read_text() == MINE + "\n"


def ssh_gate(key: Path, port: int, user: str, home: Path) -> subprocess.CompletedProcess:
    """Deliver nothing through the gate: what it says to a request into ``home``."""
    known = Path(os.environ["HOME"]) / ".ssh" / "known_hosts"
    argv = ["ssh", "-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={known}", "-o", "ConnectTimeout=10", "-p", str(port), f"{user}@127.0.0.1",
            request(ATTEMPT, 30, str(home))]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def scatter_job(c, tmp_path: Path, tag: str) -> None:
    """Load, map, scatter and merge 300 keys; the merged file holds each once."""
    tasks.load(c, str(write_lines(tmp_path / f"{tag}.txt", [f"{tag}{i}\t1" for i in range(300)])), "input")
    tasks.map(c, "wordjobs.identity", "input", "pairs", force=True)
    tasks.scatter(c, "pairs", "here", force=True)
    tasks.merge(c, "here", str(tmp_path / f"{tag}.tsv"))
    assert sorted((tmp_path / f"{tag}.tsv").read_text().splitlines()) == sorted(f"{tag}{i}\t1" for i in range(300))


def test_two_projects_on_one_account_alternate_scatters_with_no_setup_between(ssh_workers, sshd_cluster, tmp_path):
    ssh_workers(2)
    project_a = Path("workers.cfg").read_text()
    project_b = sshd_cluster.workers_cfg(sshd_cluster.homes / f"b-{tmp_path.name}", count=2)  # the account's
    c = make_context(project=WORDJOBS)
    tasks.setup(c)
    Path("workers.cfg").write_text(project_b)
    tasks.setup(c)
    for round_, config in enumerate([project_a, project_b, project_a, project_b]):
        Path("workers.cfg").write_text(config)
        scatter_job(c, tmp_path, f"r{round_}k")


def test_a_rotated_key_is_refused_by_the_gate_and_revoke_refuses_the_current_one(ssh_workers, sshd_cluster,
                                                                                  tmp_path):
    ssh_workers(2)
    c = make_context(project=WORDJOBS)
    tasks.setup(c)
    homes = [sshd_cluster.homes / "ssh-0", sshd_cluster.homes / "ssh-1"]
    old_key = tmp_path / "old_key"
    old_key.write_bytes((homes[0] / "cluster_key").read_bytes())
    old_key.chmod(0o600)
    on_head = Path(os.environ["HOME"]) / ".reductio" / "cluster_key"
    on_head.unlink()
    Path(str(on_head) + ".pub").unlink()
    ssh_workers(1)  # the second worker dropped (say it was broken into), then the key rotated
    tasks.setup(c)
    port, user = sshd_cluster.daemons[0].port, sshd_cluster.user
    refused = ssh_gate(old_key, port, user, homes[0])
    assert refused.returncode != 0 and ("Permission denied" in refused.stderr
                                        or "a home this key does not serve" in refused.stderr), refused.stderr
    current = homes[0] / "cluster_key"
    let_in = ssh_gate(current, port, user, homes[0])
    assert let_in.returncode != 255 and "Permission denied" not in let_in.stderr, let_in.stderr
    shutil.rmtree(homes[0] / "tmp" / ATTEMPT, ignore_errors=True)
    tasks.revoke(c)  # this cluster's home only: the old key's line keeps the dropped worker's home
    done = ssh_gate(current, port, user, homes[0])
    assert done.returncode == 255 and "Permission denied" in done.stderr, done.stderr
    left = [line for line in sshd_cluster.authorized_keys.read_text().splitlines() if line.endswith(COMMENT)]
    still = [home for line in left for _, home in _served(line)]  # earlier tests' keys may serve other homes
    assert str(homes[1]) in still and str(homes[0]) not in still, still
    tasks.revoke(c, everywhere=True)
    for key in (old_key, current):
        done = ssh_gate(key, port, user, homes[1])
        assert done.returncode == 255 and "Permission denied" in done.stderr, done.stderr
    assert not [line for line in sshd_cluster.authorized_keys.read_text().splitlines() if line.endswith(COMMENT)]


def test_a_scatter_after_revoke_fails_in_sshs_own_words_without_its_crlf_line_end(ssh_workers, tmp_path):
    ssh_workers(2)
    c = make_context(project=WORDJOBS)
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", [f"k{i}\t1" for i in range(300)])), "input")
    tasks.map(c, "wordjobs.identity", "input", "pairs")
    tasks.revoke(c)
    with pytest.raises(Exit) as failure:
        tasks.scatter(c, "pairs", "here")
    message = failure.value.message  # ssh ends its stderr lines in CR LF: the CR is no part of what it said
    assert "Permission denied (" in message and "\\x0d" not in message, message
