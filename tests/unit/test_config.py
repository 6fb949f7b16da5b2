"""Node configuration: TOML file, RAFTFLOW_* environment, flags; clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raftflow.config import ConfigError, NodeConfig, Peer, SSHConnection, load, to_toml


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


BASE = """
node_id = "n1"
grpc_address = "127.0.0.1:7001"
raft_address = "127.0.0.1:7101"
peer_address = "127.0.0.1:7201"
data_dir = "data"
secret_file = "secret"
slots = 2

[[peers]]
id = "n2"
grpc_address = "127.0.0.1:7002"
raft_address = "127.0.0.1:7102"
peer_address = "127.0.0.1:7202"
"""


def test_file_then_environment_then_flags(tmp_path: Path):
    path = _write(tmp_path, BASE)
    cfg = load(path, environ={})
    assert cfg.node_id == "n1" and cfg.slots == 2
    assert cfg.data_dir == tmp_path / "data", "relative paths resolve against the config file's folder"
    assert cfg.peers == (Peer("n2", "127.0.0.1:7002", "127.0.0.1:7102", "127.0.0.1:7202"),)

    cfg = load(path, environ={"RAFTFLOW_SLOTS": "8", "RAFTFLOW_NODE_ID": "n9"})
    assert cfg.slots == 8 and cfg.node_id == "n9"
    cfg = load(path, flags={"slots": 3, "node_id": None}, environ={"RAFTFLOW_SLOTS": "8"})
    assert cfg.slots == 3 and cfg.node_id == "n1"


def test_environment_alone_is_enough(tmp_path: Path):
    cfg = load(None, environ={
        "RAFTFLOW_NODE_ID": "a", "RAFTFLOW_GRPC_ADDRESS": "10.0.0.1:50051", "RAFTFLOW_RAFT_ADDRESS": "10.0.0.1:50151",
        "RAFTFLOW_PEER_ADDRESS": "10.0.0.1:50251",
        "RAFTFLOW_DATA_DIR": str(tmp_path), "RAFTFLOW_SECRET_FILE": str(tmp_path / "s"),
        "RAFTFLOW_PEERS": "b=10.0.0.2:50051/10.0.0.2:50151/10.0.0.2:50251,"
                          "c=10.0.0.3:50051/10.0.0.3:50151/10.0.0.3:50251",
    })
    assert [p.id for p in cfg.peers] == ["b", "c"]
    assert [n.id for n in cfg.all_nodes] == ["a", "b", "c"]
    assert [n.peer_address for n in cfg.all_nodes] == ["10.0.0.1:50251", "10.0.0.2:50251", "10.0.0.3:50251"]


@pytest.mark.parametrize("text, env, message", [
    (BASE.replace('slots = 2', 'slots = "many"'), {}, "slots from"),
    (BASE.replace('"127.0.0.1:7001"', '"localhost"'), {}, "grpc_address from"),
    ("bogus = 1\n" + BASE, {}, "unknown setting(s) bogus"),
    (BASE + "colour = 'red'\n", {}, "peer n2: unknown setting(s) colour"),
    (BASE.replace('node_id = "n1"', ''), {}, "missing setting(s): node_id"),
    (BASE.replace('id = "n2"', 'id = "n1"'), {}, "node ids must be unique"),
    (BASE, {"RAFTFLOW_PEERS": "n2=nonsense"}, "RAFTFLOW_PEERS item"),
    (BASE, {"RAFTFLOW_PEERS": "n2=h:1/h:2"}, "ID=HOST:GRPC_PORT/HOST:RAFT_PORT/HOST:PEER_PORT"),
    (BASE.replace('peer_address = "127.0.0.1:7201"\n', ''), {}, "missing setting(s): peer_address"),
    (BASE.replace('peer_address = "127.0.0.1:7202"\n', ''), {},
     "needs id, grpc_address, raft_address and peer_address"),
    (BASE.replace('"127.0.0.1:7201"', '"127.0.0.1:7101"'), {}, "must be different addresses"),
    (BASE.replace('"127.0.0.1:7202"', '"nowhere"'), {}, "peer n2 peer_address must be HOST:PORT"),
    ('tls_cert_file = "n1.pem"\n' + BASE, {}, "tls_cert_file set but tls_key_file, tls_ca_file not"),
    (BASE, {"RAFTFLOW_INSECURE": "maybe"}, "insecure from $RAFTFLOW_INSECURE must be true or false"),
    ("node_id = [", {}, "not valid TOML"),
    # fences at 1.6 s: the 1 s fallback, noticed within a 200 ms heartbeat round, plus 0.5 s is 1.7 s
    ("lease_timeout = 3.2\n" + BASE, {}, "fallback (checked every append_entries_period, 0.2s) by 0.5s"),
    (BASE + "[raft]\nappend_entries_period = 0.25\n", {}, "election_timeout_min must be well above"),
])
def test_bad_configs_name_the_setting(tmp_path: Path, text: str, env: dict, message: str):
    with pytest.raises(ConfigError, match=None) as caught:
        load(_write(tmp_path, text), environ=env)
    assert message in str(caught.value)


def test_secret_is_required(tmp_path: Path):
    cfg = load(_write(tmp_path, BASE), environ={})
    with pytest.raises(ConfigError, match="cannot read the cluster secret"):
        cfg.read_secret()
    (tmp_path / "secret").write_text("short\n")
    with pytest.raises(ConfigError, match="shorter than 16"):
        cfg.read_secret()
    (tmp_path / "secret").write_text("x" * 32 + "\n")
    assert cfg.read_secret() == "x" * 32


def test_to_toml_round_trips(tmp_path: Path):
    cfg = load(_write(tmp_path, BASE), environ={})
    again = load(_write(tmp_path, to_toml(cfg)), environ={})
    assert again == cfg
    assert isinstance(again, NodeConfig)


def test_fsync_is_off_by_default_and_set_by_file_or_environment(tmp_path: Path):
    path = _write(tmp_path, BASE)
    assert load(path, environ={}).fsync is False
    assert load(_write(tmp_path, "fsync = true\n" + BASE), environ={}).fsync is True
    assert load(path, environ={"RAFTFLOW_FSYNC": "yes"}).fsync is True
    with pytest.raises(ConfigError, match="fsync from \\$RAFTFLOW_FSYNC must be true or false, got 'maybe'"):
        load(path, environ={"RAFTFLOW_FSYNC": "maybe"})
    cfg = load(path, environ={"RAFTFLOW_FSYNC": "1"})
    assert load(_write(tmp_path, to_toml(cfg)), environ={}).fsync is True


SPARK = """
[connections.spark_master]
host = "namenode.internal"
port = 2222
user = "spark"
key_file = "keys/spark"
known_hosts = "known_hosts"
"""


def _with_key_files(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir(exist_ok=True)
    (tmp_path / "keys" / "spark").write_text("not read until a task connects\n")
    (tmp_path / "known_hosts").write_text("")


def test_a_connection_is_read_with_paths_from_the_config_directory_and_no_secret(tmp_path: Path):
    _with_key_files(tmp_path)
    text = BASE + SPARK + '\n[connections.warehouse]\nhost = "db"\nuser = "etl"\npassword_env = "WH_PASSWORD"\n' \
        'trust_on_first_use = true\nknown_hosts = "new_known_hosts"\n'
    cfg = load(_write(tmp_path, text), environ={"WH_PASSWORD": "hunter2-secret"})
    spark, warehouse = cfg.connections
    assert (spark.name, spark.address, spark.key_file, spark.known_hosts) == (
        "spark_master", "spark@namenode.internal:2222", tmp_path / "keys" / "spark", tmp_path / "known_hosts")
    assert (warehouse.address, warehouse.password_env, warehouse.key_file, warehouse.trust_on_first_use) == (
        "etl@db:22", "WH_PASSWORD", None, True)
    assert "hunter2" not in repr(cfg) and "hunter2" not in to_toml(cfg), "the config holds no secret"
    again = load(_write(tmp_path, to_toml(cfg)), environ={"WH_PASSWORD": "x"})
    assert again == cfg
    assert [SSHConnection.from_json(conn.to_json()) for conn in cfg.connections] == list(cfg.connections), \
        "what the ssh runner process receives"
    assert (spark.auth, warehouse.auth, spark.host_key_name, warehouse.host_key_name) == (
        "key", "password", "[namenode.internal]:2222", "db")


@pytest.mark.parametrize("table, env, message", [
    ('[connections.spark]\nhost = "h"\nuser = "u"\n', {}, "give key_file (a private key) or password_env"),
    ('[connections.spark]\nhost = "h"\nuser = "u"\npassword_env = "PW"\n', {},
     "password_env names $PW, which is not set in this node's environment"),
    ('[connections.spark]\nhost = "h"\nuser = "u"\nkey_file = "missing"\nknown_hosts = "known_hosts"\n', {},
     "cannot read key_file"),
    ('[connections.spark]\nhost = "h"\nuser = "u"\nkey_file = "keys/spark"\nknown_hosts = "nope"\n', {},
     "known_hosts {tmp}/nope does not exist, so the host's key cannot be verified. Add it: ssh-keyscan -p 22 h"),
    ('[connections.spark]\nhost = "h"\nuser = "u"\nport = 70000\nkey_file = "keys/spark"\n', {},
     "[connections.spark]: port must be an integer from 1 to 65535, got 70000"),
    ('[connections.spark]\nhost = ""\nuser = "u"\nkey_file = "keys/spark"\n', {}, "host must be a non-empty string"),
    ('[connections.spark]\nhost = "h"\nuser = "u"\nkey_file = "keys/spark"\npassword = "x"\n', {},
     "[connections.spark]: unknown setting(s) password"),
    ('[connections."bad name"]\nhost = "h"\nuser = "u"\nkey_file = "keys/spark"\n', {}, "connection name is invalid"),
])
def test_bad_connections_name_the_table_and_the_fault(tmp_path: Path, table: str, env: dict, message: str):
    _with_key_files(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load(_write(tmp_path, BASE + table), environ=env)
    assert message.format(tmp=tmp_path) in str(caught.value)


def test_task_log_limit_defaults_to_64_mib_and_is_set_by_file_environment_or_flag(tmp_path: Path):
    path = _write(tmp_path, BASE)
    assert load(path, environ={}).task_log_limit == 64 * 1024 * 1024
    path.write_text("task_log_limit = 1000\n" + BASE)
    cfg = load(path, environ={})
    assert cfg.task_log_limit == 1000
    assert load(path, environ={"RAFTFLOW_TASK_LOG_LIMIT": "2000"}).task_log_limit == 2000
    assert load(path, flags={"task_log_limit": 3000}, environ={}).task_log_limit == 3000
    path.write_text(to_toml(cfg))
    assert load(path, environ={}) == cfg
    with pytest.raises(ConfigError, match="task_log_limit from \\$RAFTFLOW_TASK_LOG_LIMIT must be at least 1"):
        load(path, environ={"RAFTFLOW_TASK_LOG_LIMIT": "0"})


TLS = 'tls_cert_file = "tls/n1.pem"\ntls_key_file = "tls/n1.key"\ntls_ca_file = "tls/ca.pem"\n'


def test_tls_files_resolve_against_the_config_and_round_trip(tmp_path: Path):
    cfg = load(_write(tmp_path, TLS + BASE), environ={})
    assert (cfg.tls_cert_file, cfg.tls_key_file, cfg.tls_ca_file) == \
        (tmp_path / "tls/n1.pem", tmp_path / "tls/n1.key", tmp_path / "tls/ca.pem")
    assert cfg.insecure is False and cfg.peer_address == "127.0.0.1:7201"
    assert load(_write(tmp_path, to_toml(cfg)), environ={}) == cfg
    env = load(_write(tmp_path, BASE), environ={
        "RAFTFLOW_TLS_CERT_FILE": "/x/c.pem", "RAFTFLOW_TLS_KEY_FILE": "/x/k", "RAFTFLOW_TLS_CA_FILE": "/x/ca.pem",
        "RAFTFLOW_INSECURE": "false"})
    assert (env.tls_cert_file, env.tls_ca_file, env.insecure) == (Path("/x/c.pem"), Path("/x/ca.pem"), False)


def test_a_node_without_tls_files_is_told_how_to_make_them_or_to_run_insecure(tmp_path: Path):
    cfg = load(_write(tmp_path, BASE), environ={})
    with pytest.raises(ConfigError) as caught:
        cfg.read_tls()
    message = str(caught.value)
    assert "raftflow certs init --dir DIR" in message and "raftflow certs issue n1" in message
    assert "insecure = true" in message
    insecure = load(_write(tmp_path, BASE), environ={"RAFTFLOW_INSECURE": "1"})
    assert insecure.insecure is True and insecure.read_tls() is None
    assert load(_write(tmp_path, to_toml(insecure)), environ={}).insecure is True


def test_read_tls_checks_the_certificate_names_this_node(tmp_path: Path):
    from raftflow import certs

    tls = tmp_path / "tls"
    certs.init_dir(tls)
    certs.issue_in_dir(tls, "n1", ["127.0.0.1"])
    certs.issue_in_dir(tls, "n2", ["127.0.0.1"])
    material = load(_write(tmp_path, TLS + BASE), environ={}).read_tls()
    assert material is not None and material.ca_pem == (tls / "ca.pem").read_bytes()
    assert material.cert_pem == (tls / "n1.pem").read_bytes() and material.key_pem == (tls / "n1.key").read_bytes()

    wrong = load(_write(tmp_path, TLS.replace("n1.", "n2.") + BASE), environ={})
    with pytest.raises(ConfigError, match="the certificate names node 'n2' .* but this node is 'n1'"):
        wrong.read_tls()
    mixed = load(_write(tmp_path, TLS.replace("n1.key", "n2.key") + BASE), environ={})
    with pytest.raises(ConfigError, match="tls_key_file is not the key of tls_cert_file"):
        mixed.read_tls()
    missing = load(_write(tmp_path, TLS.replace("ca.pem", "nope.pem") + BASE), environ={})
    with pytest.raises(ConfigError, match="cannot read tls_ca_file .*nope.pem"):
        missing.read_tls()


def test_scratch_dir_defaults_to_the_temp_dir_and_gives_each_node_data_dir_its_own_folder(tmp_path: Path):
    import tempfile

    path = _write(tmp_path, BASE)
    cfg = load(path, environ={})
    assert cfg.scratch_dir == Path(tempfile.gettempdir()) and cfg.run_as_user is None and cfg.task_user is None
    assert cfg.scratch.parent == cfg.scratch_dir and cfg.scratch.name.startswith("raftflow-n1-")
    other = load(path, environ={"RAFTFLOW_DATA_DIR": str(tmp_path / "other")})
    assert other.scratch != cfg.scratch, "same node id, another data dir (another cluster): another folder"
    path.write_text('scratch_dir = "scratch"\n' + BASE)
    cfg = load(path, environ={})
    assert cfg.scratch_dir == tmp_path / "scratch", "relative to the config file, like data_dir"
    assert load(path, environ={"RAFTFLOW_SCRATCH_DIR": "/var/tmp"}).scratch_dir == Path("/var/tmp")
    assert load(_write(tmp_path, to_toml(cfg)), environ={}) == cfg
    with pytest.raises(ConfigError, match="scratch_dir from .*node.toml puts the attempts' folders .* inside "
                                          "data_dir"):
        load(_write(tmp_path, 'scratch_dir = "data/tmp"\n' + BASE), environ={})


def test_run_as_user_names_an_existing_user_from_file_or_environment(tmp_path: Path):
    import pwd

    path = _write(tmp_path, 'run_as_user = "root"\n' + BASE)
    me = pwd.getpwuid(os.geteuid()).pw_name
    cfg = load(_write(tmp_path, f'run_as_user = "{me}"\n' + BASE), environ={})
    assert cfg.run_as_user == me and cfg.task_user is not None and cfg.task_user.name == me, \
        "a node may always name its own user"
    assert load(_write(tmp_path, to_toml(cfg)), environ={}) == cfg
    with pytest.raises(ConfigError, match="run_as_user from \\$RAFTFLOW_RUN_AS_USER is 'no-such-user-zz', but "
                                          "there is no such user on this machine: create it \\(useradd --system "
                                          "--no-create-home no-such-user-zz\\)"):
        load(path, environ={"RAFTFLOW_RUN_AS_USER": "no-such-user-zz"})
    with pytest.raises(ConfigError, match="run_as_user from \\$RAFTFLOW_RUN_AS_USER is empty"):
        load(path, environ={"RAFTFLOW_RUN_AS_USER": ""})


def test_a_node_that_is_not_root_refuses_to_run_tasks_as_another_user(tmp_path: Path):
    """Loaded by a real process running as a user that is not root (the throwaway task user)."""
    import subprocess

    from throwaway_user import reachable_dir, task_python, task_user

    user = task_user()
    python = task_python(user)
    with reachable_dir() as folder:
        for name, text in (("other.toml", 'run_as_user = "root"\n' + BASE),
                           ("itself.toml", f'run_as_user = "{user.name}"\n' + BASE)):
            (folder / name).write_text(text)
            os.chmod(folder / name, 0o644)
        probe = ("import sys\nfrom raftflow.config import load, ConfigError\n"
                 "try:\n    print(load(sys.argv[1], environ={}).run_as_user)\n"
                 "except ConfigError as e:\n    print(e)\n")
        said = {name: subprocess.run([python, "-c", probe, str(folder / name)], capture_output=True, text=True,
                                     user=user.uid, group=user.gid, extra_groups=[], cwd="/", timeout=60)
                for name in ("other.toml", "itself.toml")}
    assert said["other.toml"].stdout.strip() == (
        f"run_as_user from {folder}/other.toml is 'root', but this node runs as {user.name!r}, not root, and only "
        "root can start processes as another user: start the node as root (deploy/raftflow.service does) or leave "
        "run_as_user out"), said["other.toml"].stderr
    assert said["itself.toml"].stdout.strip() == user.name, said["itself.toml"].stderr


def test_admin_token_file_is_optional_set_by_file_or_environment_and_read_with_a_clear_error(tmp_path: Path):
    path = _write(tmp_path, BASE)
    cfg = load(path, environ={})
    assert cfg.admin_token_file is None and cfg.read_admin_token() is None
    path.write_text('admin_token_file = "admin.token"\n' + BASE)
    cfg = load(path, environ={})
    assert cfg.admin_token_file == tmp_path / "admin.token"      # relative to the config file
    assert load(path, environ={"RAFTFLOW_ADMIN_TOKEN_FILE": "/etc/rf/a"}).admin_token_file == Path("/etc/rf/a")
    path.write_text(to_toml(cfg))
    assert load(path, environ={}) == cfg
    with pytest.raises(ConfigError, match="cannot read admin_token_file .*admin.token"):
        cfg.read_admin_token()
    (tmp_path / "admin.token").write_text("short\n")
    with pytest.raises(ConfigError, match="shorter than 16 characters"):
        cfg.read_admin_token()
    (tmp_path / "admin.token").write_text("a-long-enough-admin-token\n")
    assert cfg.read_admin_token() == "a-long-enough-admin-token"


WORKER = """
node_id = "w1"
role = "worker"
join = ["127.0.0.1:7201", "127.0.0.1:7202"]
grpc_address = "127.0.0.1:7005"
peer_address = "127.0.0.1:7205"
data_dir = "data"
secret_file = "secret"
"""


def test_a_worker_joins_by_voters_peer_addresses_and_has_no_raft_port(tmp_path: Path):
    cfg = load(_write(tmp_path, WORKER), environ={})
    assert cfg.is_worker and cfg.raft_address == "" and cfg.peers == ()
    assert cfg.join == ("127.0.0.1:7201", "127.0.0.1:7202")
    assert load(_write(tmp_path, to_toml(cfg)), environ={}) == cfg
    env = load(None, environ={"RAFTFLOW_NODE_ID": "w2", "RAFTFLOW_ROLE": "worker", "RAFTFLOW_JOIN": "h:1, h:2",
                              "RAFTFLOW_GRPC_ADDRESS": "h:3", "RAFTFLOW_PEER_ADDRESS": "h:4",
                              "RAFTFLOW_DATA_DIR": str(tmp_path), "RAFTFLOW_SECRET_FILE": str(tmp_path / "s")})
    assert env.join == ("h:1", "h:2") and env.is_worker
    assert not load(_write(tmp_path, BASE), environ={}).is_worker


@pytest.mark.parametrize("text, message", [
    (WORKER.replace('role = "worker"', 'role = "boss"'), "role from"),
    (WORKER.replace('join = ["127.0.0.1:7201", "127.0.0.1:7202"]', ''), "a worker needs `join`"),
    (WORKER.replace('"127.0.0.1:7202"]', '"nohost"]'), "join from"),
    (WORKER + 'raft_address = "127.0.0.1:7105"\n', "a worker has no Raft vote"),
    (WORKER + '[[peers]]\nid = "n2"\ngrpc_address = "h:1"\nraft_address = "h:2"\npeer_address = "h:3"\n',
     "a worker has no Raft vote"),
    (WORKER.replace('"127.0.0.1:7205"', '"127.0.0.1:7005"'), "must be different addresses"),
    ('join = ["127.0.0.1:7201"]\n' + BASE, "a voter either names the others in [[peers]]"),
])
def test_bad_worker_settings_say_what_is_wrong(tmp_path: Path, text: str, message: str):
    with pytest.raises(ConfigError) as caught:
        load(_write(tmp_path, text), environ={})
    assert message in str(caught.value)


def test_a_voter_added_live_joins_instead_of_naming_peers(tmp_path: Path):
    text = BASE[:BASE.index("[[peers]]")] + 'join = ["127.0.0.1:7202"]\n'
    cfg = load(_write(tmp_path, text), environ={})
    assert not cfg.is_worker and cfg.join == ("127.0.0.1:7202",) and cfg.peers == () and cfg.raft_address
    assert load(_write(tmp_path, to_toml(cfg)), environ={}) == cfg
