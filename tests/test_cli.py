"""The `cairn` command end to end: `dev up --tiny` starts real processes, the object and bucket
commands run against them as a user would type them, `dev down` stops everything."""
import json
import os
import random
import socket
import subprocess
import sys

import pytest

from cluster.commands import config_flags, split_target


def cairn(*args, check=True, cwd=None):
    result = subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True,
                            timeout=120, cwd=cwd)
    if check and result.returncode != 0:
        raise AssertionError(f"cairn {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def free_base():
    """A port base whose meta and data ports (base .. base+36) are all free."""
    for _ in range(50):
        base = random.randrange(20000, 60000, 100)
        with socket.socket() as s:
            if all(s.connect_ex(("127.0.0.1", base + i)) != 0 for i in (0, 10, 11, 15, 30, 35)):
                return base
    raise AssertionError("no free port range")


def test_cli_on_a_tiny_local_cluster(tmp_path):
    directory = tmp_path / "cairn"
    base = free_base()
    up = cairn("--json", "dev", "up", "--tiny", "--dir", str(directory), "--port-base", str(base))
    meta = json.loads(up.stdout)["meta"]
    assert meta == [f"127.0.0.1:{base}"]
    try:
        target = ["--meta", ",".join(meta)]
        cairn(*target, "bucket", "create", "photos", "--profile", "3+2", "--inline", "1KiB")
        source = tmp_path / "in.bin"
        data = random.Random(1).randbytes(3 << 20)
        source.write_bytes(data)
        put = json.loads(cairn(*target, "--json", "put", "photos/a/b.bin", str(source)).stdout)
        assert put["size"] == len(data) and put["fragments_sent"] > 0
        cairn(*target, "get", "photos/a/b.bin", str(tmp_path / "out.bin"))
        assert (tmp_path / "out.bin").read_bytes() == data
        part = cairn(*target, "get", "photos/a/b.bin", str(tmp_path / "part.bin"), "--range", "100-5000")
        assert part.returncode == 0 and (tmp_path / "part.bin").read_bytes() == data[100:5000]
        listing = json.loads(cairn(*target, "ls", "photos", "--json").stdout)
        assert listing["prefixes"] == ["a/"] and listing["objects"] == []
        listing = json.loads(cairn(*target, "ls", "photos/a/", "--json").stdout)
        assert [o["key"] for o in listing["objects"]] == ["a/b.bin"]
        stat = json.loads(cairn(*target, "stat", "photos/a/b.bin", "--json").stdout)
        assert stat["size"] == len(data) and not stat["inline"] and stat["chunks"]
        cairn(*target, "cp", "photos/a/b.bin", "photos/copy.bin")
        copied = subprocess.run([sys.executable, "-m", "cluster.cli", *target, "get", "photos/copy.bin", "-"],
                                capture_output=True, timeout=120)
        assert copied.returncode == 0 and copied.stdout == data
        status = json.loads(cairn(*target, "status", "--json").stdout)
        assert len(status["nodes"]) == 6 and status["objects"] == 2 and status["dedup_ratio"] > 1.9
        cairn(*target, "rm", "photos/a/b.bin")
        missing = cairn(*target, "get", "photos/a/b.bin", str(tmp_path / "x"), check=False)
        assert missing.returncode == 1 and "NoSuchKey" in missing.stderr
        bad = cairn(*target, "put", "photos/../x", str(source), check=False)
        assert bad.returncode == 1 and "InvalidArgument" in bad.stderr
        busy = cairn("dev", "up", "--tiny", "--dir", str(tmp_path / "second"), "--port-base", str(base), check=False)
        assert busy.returncode == 1 and "in use" in busy.stderr
        buckets = json.loads(cairn(*target, "bucket", "ls", "--json").stdout)
        assert [(b["name"], b["k"], b["m"], b["objects"]) for b in buckets] == [("photos", 3, 2, 1)]
    finally:
        down = json.loads(cairn("--json", "dev", "down", "--dir", str(directory)).stdout)
    assert down["stopped"] == 7
    pids = [m["pid"] for m in json.loads((directory / "cluster.json").read_text())["members"]]
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_cli_input_errors(tmp_path):
    assert "expected BUCKET/KEY" in cairn("--meta", "127.0.0.1:1", "rm", "nokey", check=False).stderr
    assert "no such file" in cairn("--meta", "127.0.0.1:1", "put", "b/k", str(tmp_path / "none"), check=False).stderr
    assert "no cluster in" in cairn("dev", "down", "--dir", str(tmp_path), check=False).stderr
    assert "not a size" in cairn("bucket", "create", "x", "--inline", "lots", check=False).stderr
    with pytest.raises(ValueError):
        split_target("bucket-only")


def test_commands_that_pass_their_arguments_on_show_their_own_help():
    assert "--data-listen" in cairn("data", "--help").stdout
    assert "{raft,cluster,durability}" in cairn("simulate", "--help").stdout
    assert "P(loss)/year (Markov)" in cairn("simulate", "durability", "--years", "10").stdout


def test_server_config_files(tmp_path):
    config = tmp_path / "meta.toml"
    config.write_text('id = 2\ndata = "/srv/meta"\nlisten = "10.0.0.2:7400"\n'
                      'peers = { 1 = "10.0.0.1:7400", 2 = "10.0.0.2:7400" }\ntick_seconds = 0.05\n'
                      'label = { host = "a", rack = "r1" }\n')
    assert config_flags(str(config)) == [
        "--id", "2", "--data", "/srv/meta", "--listen", "10.0.0.2:7400",
        "--peers", "1=10.0.0.1:7400,2=10.0.0.2:7400", "--tick-seconds", "0.05",
        "--label", "host=a", "--label", "rack=r1"]
    broken = tmp_path / "broken.toml"
    broken.write_text("id = = 2")
    with pytest.raises(ValueError, match="broken.toml"):
        config_flags(str(broken))


def test_a_local_cluster_whose_data_node_cannot_start_says_so_and_leaves_nothing_running(tmp_path):
    from cluster.dev import DevError, LocalCluster, _alive

    # one data node: with two, whichever exits first is named, and under load that is either
    local = LocalCluster(str(tmp_path / "c"), metas=1, datas=1, port_base=None, data_options=["--stripes", "99"])
    try:
        with pytest.raises(DevError, match="data node 1 exited with code 2"):
            local.start(timeout=60)
    finally:
        local.stop()  # (also when the assertion fails: a failing test must not leave a meta node running)
    assert not any(_alive(m.pid) for m in local.members if m.pid)


def test_a_restart_waits_for_a_node_on_its_way_out_and_refuses_a_running_one(tmp_path):
    """A crashed node's process may still be exiting (no command line, not yet a zombie) when a
    test restarts it: the restart waits for it. A node that is running is refused at once."""
    import subprocess
    import sys
    import time

    from cluster.dev import DevError, LocalCluster, _alive

    local = LocalCluster(str(tmp_path / "c"), metas=1, datas=1, port_base=None)
    os.makedirs(local.directory)
    member = local.member("data", 1)
    exiting = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.0)"])  # (not a Cairn command line)
    member.pid, local._procs[exiting.pid] = exiting.pid, exiting
    started = time.monotonic()
    try:
        local.restart("data", 1)
        assert exiting.poll() is not None and time.monotonic() - started >= 0.5
        assert member.pid != exiting.pid and _alive(member.pid)
        with pytest.raises(DevError, match="data node 1 is running"):
            local.restart("data", 1)
    finally:
        local.stop()


def test_waiting_for_a_cluster_whose_metadata_nodes_never_answer_says_so(tmp_path):
    from cluster.dev import DevError, LocalCluster

    local = LocalCluster(str(tmp_path / "c"), metas=1, datas=1, port_base=None)  # nothing started
    with pytest.raises(DevError, match="no metadata leader answered"):
        local.wait_ready(timeout=0.5)
