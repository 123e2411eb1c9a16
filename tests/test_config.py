"""Where the cluster comes from: workers.cfg, the reductio config key, -H, local workers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from invoke import Config

import programs
from reductio.cli import make_program
from reductio.errors import ConfigError
from reductio.head.config import WorkerSpec, load_workers, settings, workers_from_hosts

REPO = Path(__file__).resolve().parent.parent


def test_without_any_config_there_is_one_local_worker_per_core(isolated_home):
    specs = load_workers(Config())
    assert len(specs) == os.cpu_count()
    assert all(spec.is_local for spec in specs)
    assert specs[0].home == str(isolated_home / ".reductio" / "local" / "worker-0")


def test_local_workers_setting_chooses_how_many():
    assert [s.name for s in load_workers(Config(overrides={"reductio": {"local_workers": 3}}))] == [
        "local-0", "local-1", "local-2"]


def test_workers_cfg_in_the_current_folder_wins_over_the_one_in_the_reductio_home(isolated_home):
    (isolated_home / ".reductio").mkdir()
    (isolated_home / ".reductio" / "workers.cfg").write_text("[far]\nhost = far.example\n")
    assert [s.name for s in load_workers(Config())] == ["far"]
    Path("workers.cfg").write_text("[a]\nhost = a.example\nport = 2222\nusername = me\n\n"
                                   "[b]\nlocal = yes\nhome = /srv/b\n")
    specs = load_workers(Config())
    assert specs == [
        WorkerSpec(name="a", home="~/.reductio", host="a.example", port=2222, username="me"),
        WorkerSpec(name="b", home="/srv/b"),
    ]


def test_the_reductio_config_key_wins_over_workers_cfg():
    Path("workers.cfg").write_text("[a]\nhost = a.example\n")
    config = Config(overrides={"reductio": {"workers": [{"name": "x", "host": "x.example", "key_filename": "~/k"}]}})
    (spec,) = load_workers(config)
    assert (spec.name, spec.host, spec.key_filename) == ("x", "x.example", os.path.expanduser("~/k"))


@pytest.mark.parametrize("setting", ["password", "passphrase"])
def test_a_password_in_workers_cfg_is_refused_saying_why(setting):
    Path("workers.cfg").write_text(f"[a]\nhost = a.example\n{setting} = hunter2\n")
    with pytest.raises(ConfigError, match="never reads passwords"):
        load_workers(Config())


def test_a_password_in_fabric_connect_kwargs_config_is_refused(tmp_path):
    config = Config(runtime_path=str(_yaml(tmp_path / "fab.yaml", "connect_kwargs:\n  password: hunter2\n")))
    config.load_runtime()
    with pytest.raises(ConfigError, match="never reads passwords"):
        load_workers(config)


def test_unknown_settings_and_bad_ports_are_clear_errors():
    Path("workers.cfg").write_text("[a]\nhost = a\nhots = typo\n")
    with pytest.raises(ConfigError, match="unknown setting.*hots"):
        load_workers(Config())
    Path("workers.cfg").write_text("[a]\nhost = a\nport = twenty\n")
    with pytest.raises(ConfigError, match="port must be a number"):
        load_workers(Config())
    Path("workers.cfg").write_text("[a]\nusername = me\n")
    with pytest.raises(ConfigError, match="give a host, or local = yes"):
        load_workers(Config())


def test_a_worker_is_local_or_reached_over_ssh_not_both_and_local_is_yes_or_no():
    Path("workers.cfg").write_text("[a]\nlocal = yes\nhost = a.example\n")
    with pytest.raises(ConfigError, match=r"\[a\]: local = yes and a host; a worker is either local"):
        load_workers(Config())
    Path("workers.cfg").write_text("[a]\nlocal = yse\n")
    with pytest.raises(ConfigError, match=r"\[a\]: local must be true or false, not 'yse'"):
        load_workers(Config())
    Path("workers.cfg").write_text("[a]\nlocal = no\nhost = a.example\n")
    assert load_workers(Config())[0].host == "a.example"
    fractional = [{"name": "a", "local": True, "processes": 2.5}]  # as YAML reads processes: 2.5
    with pytest.raises(ConfigError, match=r"worker 0: processes must be a whole number, not 2.5"):
        load_workers(Config(overrides={"reductio": {"workers": fractional}}))


@pytest.mark.parametrize("setting, value, message", [
    ("combine_limt", 5, "unknown reductio setting(s) combine_limt; known: combine_limit, compress, "),
    ("combine_limit", "abc", "reductio.combine_limit must be a whole number, not 'abc'"),
    ("sort_parallel", "many", "reductio.sort_parallel must be a whole number, not 'many'"),
    ("processes", 0, "reductio.processes must be at least 1, not 0"),
    ("retries", 2.5, "reductio.retries must be a whole number, not 2.5"),
    ("retry_delay", "soon", "reductio.retry_delay must be a number of seconds, at least 0, not 'soon'"),
    ("retry_delay", float("inf"), "reductio.retry_delay must be a number of seconds, at least 0, not inf"),
    (1, "x", "unknown reductio setting(s) 1; known: "),  # YAML reads a key like 1: as a number
    ("progress_interval", 0, "reductio.progress_interval must be a number of seconds, more than 0, not 0"),
    ("sort_buffer", "lots", "reductio.sort_buffer must be a size like 256M, 2G or 10%, not 'lots'"),
    ("compress", "maybe", "reductio.compress must be true or false, not 'maybe'"),
    ("log", "/no/such/folder/job.jsonl", "reductio.log: the folder of /no/such/folder/job.jsonl does not exist"),
    ("password", "x", "reductio.password found; reductio never reads passwords"),
])
def test_a_misspelled_or_bad_reductio_setting_is_refused_naming_it(setting, value, message):
    with pytest.raises(ConfigError) as caught:
        settings(Config(overrides={"reductio": {setting: value}}))
    assert message in str(caught.value)


def test_reductio_settings_are_read_as_their_types(isolated_home):
    found = settings(Config(overrides={"reductio": {
        "combine_limit": "500", "compress": "no", "force": "yes", "retry_delay": "0.5", "sort_buffer": "1G",
        "log": "~/job.jsonl", "wheelhouse": "~/wheels", "progress_interval": None}}))
    assert found == {"combine_limit": 500, "compress": False, "force": True, "retry_delay": 0.5, "sort_buffer": "1G",
                     "log": str(isolated_home / "job.jsonl"), "wheelhouse": str(isolated_home / "wheels")}


def test_duplicate_names_and_shared_homes_are_refused():
    twins = [{"name": "a", "local": "yes", "home": "/x"}, {"name": "a", "local": "yes", "home": "/y"}]
    with pytest.raises(ConfigError, match="unique; repeated: a"):
        load_workers(Config(overrides={"reductio": {"workers": twins}}))
    shared = [{"name": "a", "local": "yes", "home": "/x"}, {"name": "b", "local": "yes", "home": "/x"}]
    with pytest.raises(ConfigError, match="share one host and home"):
        load_workers(Config(overrides={"reductio": {"workers": shared}}))


def test_hosts_flag_values_become_workers_named_by_host():
    assert workers_from_hosts("a, me@b:2222") == [
        {"host": "a", "port": None, "username": None, "name": "a"},
        {"host": "b", "port": 2222, "username": "me", "name": "b"},
    ]
    twins = workers_from_hosts("h:2201,h:2202")
    assert [w["name"] for w in twins] == ["h:2201", "h:2202"]
    assert twins[0]["home"] != twins[1]["home"]


def test_hosts_flag_reads_ipv6_addresses_as_fabric_does():
    assert workers_from_hosts("fe80::1,me@::1,you@2001:db8::7") == [
        {"host": "fe80::1", "port": None, "username": None, "name": "fe80::1"},
        {"host": "::1", "port": None, "username": "me", "name": "::1"},
        {"host": "2001:db8::7", "port": None, "username": "you", "name": "2001:db8::7"},
    ]
    program = make_program()
    program.run(["reductio", "-H", "fe80::1%eth0,me@::1", "--list"], exit=False)
    program.update_config()
    assert [(s.name, s.host, s.port, s.username) for s in load_workers(program.config)] == [
        ("fe80::1%eth0", "fe80::1%eth0", None, None), ("::1", "::1", None, "me")]


@pytest.mark.parametrize("hosts, message", [
    ("me@[::1]:2222", "-H: cannot read host 'me@[::1]:2222': Fabric's host strings take no brackets"),
    ("a:twenty", "-H: cannot read host 'a:twenty'; use host, user@host or user@host:port"),
    ("me@:22", "-H: cannot read host 'me@:22'"),
])
def test_hosts_flag_values_fabric_cannot_read_are_refused_saying_how_to_write_them(hosts, message):
    with pytest.raises(ConfigError) as caught:
        workers_from_hosts(hosts)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize("hosts, first, second", [("localhost,127.0.0.1", "localhost", "127.0.0.1"),
                                                   ("127.0.0.1:22,localhost", "127.0.0.1", "localhost"),
                                                   ("::1,0:0:0:0:0:0:0:1", "::1", "0:0:0:0:0:0:0:1")])
def test_two_names_for_one_account_on_one_machine_are_refused_naming_both(hosts, first, second):
    program = make_program()
    program.run(["reductio", "-H", hosts, "--list"], exit=False)
    program.update_config()
    with pytest.raises(ConfigError) as caught:
        load_workers(program.config)
    assert f"workers {first} and {second} are one machine (" in str(caught.value)
    assert "port 22" in str(caught.value) and "would share the home ~/.reductio" in str(caught.value)


def test_a_name_from_ssh_config_is_the_machine_its_hostname_port_and_user_say(isolated_home):
    (isolated_home / ".ssh").mkdir()
    (isolated_home / ".ssh" / "config").write_text("Host box\n  HostName 127.0.0.1\n\nHost far\n  HostName 127.0.0.1\n"
                                                   "  Port 2222\n\nHost other\n  HostName 127.0.0.1\n  User other\n")
    program = make_program()
    program.run(["reductio", "-H", "box,far,other,127.0.0.1", "--list"], exit=False)
    program.update_config()
    with pytest.raises(ConfigError) as caught:
        load_workers(program.config)
    assert str(caught.value).startswith("workers box and 127.0.0.1 are one machine (127.0.0.1 port 22, user ")
    program = make_program()
    program.run(["reductio", "-H", "far,other,127.0.0.1", "--list"], exit=False)
    program.update_config()
    assert [spec.name for spec in load_workers(program.config)] == ["far", "other", "127.0.0.1"]


def test_one_machine_under_two_accounts_ports_or_homes_is_not_refused():
    for workers in ([{"host": "localhost", "username": "me"}, {"host": "127.0.0.1", "username": "you"}],
                    [{"host": "localhost", "port": 2201}, {"host": "127.0.0.1", "port": 2202}],
                    [{"name": "a", "host": "localhost", "home": "~/a"}, {"name": "b", "host": "127.0.0.1"}]):
        assert len(load_workers(Config(overrides={"reductio": {"workers": workers}}))) == 2


def test_two_names_for_one_machine_are_refused_before_setup_does_anything(isolated_home):
    done = programs.reductio("-H", "localhost,127.0.0.1", "setup", env=dict(os.environ, HOME=str(isolated_home)),
                             timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith("reductio: workers localhost and 127.0.0.1 are one machine (")
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr


def test_the_reductio_program_turns_hosts_into_the_cluster_instead_of_running_per_host():
    program = make_program()
    program.run(["reductio", "-f", str(REPO / "fabfile.py"), "-H", "me@a:2200,b", "--list"], exit=False)
    program.update_config()
    specs = load_workers(program.config)
    assert [(s.name, s.host, s.port, s.username) for s in specs] == [("a", "a", 2200, "me"), ("b", "b", None, None)]
    assert program.args.hosts.value is None


def test_reductio_config_key_is_read_from_a_runtime_config_file(tmp_path, isolated_home):
    workers = _yaml(tmp_path / "cluster.yaml",
                    "reductio:\n  workers:\n    - {name: w0, local: yes, home: %s}\n" % (tmp_path / "w0"))
    env = dict(os.environ, HOME=str(isolated_home))
    done = programs.reductio("-f", str(REPO / "fabfile.py"), "--config", str(workers), "setup", "status", env=env)
    assert done.returncode == 0, done.stderr
    assert "1 worker(s) ready: w0" in done.stdout
    assert (tmp_path / "w0" / "data").is_dir()


def test_fab_with_hosts_is_told_to_use_reductio_hosts_instead(isolated_home):
    env = dict(os.environ, HOME=str(isolated_home))
    done = programs.fab("-r", str(REPO), "-H", "127.0.0.1:1", "status", env=env, timeout=120)
    assert done.returncode == 1
    assert "use reductio -H" in done.stderr
    assert "Traceback" not in done.stderr


def _yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
