"""The two clusters of ops/bench/raft.py: three etcd members and three Cairn Raft nodes on loopback.

Each member is a child process in its own process group, logging to a file in the cluster's
directory; `stop()` sends SIGTERM to the group, then SIGKILL after a grace period, and is safe
to call twice. Every wait has a deadline, and a member that exits or never becomes ready raises
ClusterError with the tail of its log.
"""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
START_SECONDS = 60.0
STOP_SECONDS = 5.0


from cluster.dev import free_ports  # noqa: E402


class ClusterError(RuntimeError):
    pass


def ensure_etcd() -> str:
    found = shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)
    if found:
        return found
    if os.geteuid() != 0:
        sys.exit("raft.py: needs etcd (apt-get install etcd-server) and is not root to install it")
    print("installing etcd-server ...", file=sys.stderr, flush=True)
    install = ["apt-get", "install", "-y", "-q", "etcd-server"]
    if subprocess.run(install, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
        subprocess.run(install, check=True, capture_output=True)
    found = shutil.which("etcd") or "/usr/bin/etcd"
    if not os.path.exists(found):
        sys.exit("raft.py: etcd-server installed but no etcd binary found")
    return found


class Cluster:
    name = "cluster"

    def __init__(self, directory: str):
        self.directory = directory
        self.procs: list[subprocess.Popen] = []
        self.logs: list[str] = []

    def _spawn(self, argv: list[str], log_name: str, **kwargs) -> None:
        log_path = os.path.join(self.directory, log_name)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, **kwargs)
        self.procs.append(proc)
        self.logs.append(log_path)

    def tail(self, index: int, lines: int = 25) -> str:
        try:
            with open(self.logs[index], "rb") as f:
                text = f.read()[-16384:].decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None:
                raise ClusterError(f"{self.name} member {i + 1} exited with code {proc.returncode}; "
                                   f"log tail:\n{self.tail(i)}")

    def fail(self, message: str) -> ClusterError:
        tails = "\n".join(f"--- {self.name} member {i + 1} log tail:\n{self.tail(i)}" for i in range(len(self.procs)))
        return ClusterError(f"{message}\n{tails}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + STOP_SECONDS
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # the group too: nothing it started may outlive it
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                pass
        self.procs = []


class EtcdCluster(Cluster):
    """Three etcd members with default durability (fsync on every commit, no --unsafe-no-fsync)."""

    name = "etcd"

    def __init__(self, directory: str, binary: str):
        super().__init__(directory)
        self.binary = binary
        ports = free_ports(6)
        self.client_ports, self.peer_ports = ports[:3], ports[3:]
        self.endpoints = [f"127.0.0.1:{p}" for p in self.client_ports]

    def start(self) -> None:
        initial = ",".join(f"m{i + 1}=http://127.0.0.1:{p}" for i, p in enumerate(self.peer_ports))
        token = f"bench-{os.getpid()}-{time.time_ns()}"
        for i in range(3):
            client, peer = f"http://127.0.0.1:{self.client_ports[i]}", f"http://127.0.0.1:{self.peer_ports[i]}"
            self._spawn([self.binary, "--name", f"m{i + 1}", "--data-dir", os.path.join(self.directory, f"m{i + 1}"),
                         "--listen-client-urls", client, "--advertise-client-urls", client,
                         "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                         "--initial-cluster", initial, "--initial-cluster-token", token,
                         "--initial-cluster-state", "new", "--logger", "zap", "--log-outputs", "stderr",
                         "--log-level", "warn"], f"etcd-{i + 1}.log")
        deadline = time.monotonic() + START_SECONDS
        while True:
            self.check_alive()
            if all(self._healthy(p) for p in self.client_ports) and self.leader() is not None:
                return
            if time.monotonic() > deadline:
                raise self.fail(f"etcd not healthy within {START_SECONDS:.0f} s")
            time.sleep(0.2)

    @staticmethod
    def _get(port: int, path: str) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                return response.read().decode()
        except OSError:
            return None

    def _healthy(self, port: int) -> bool:
        body = self._get(port, "/health")
        return body is not None and '"health":"true"' in body.replace(" ", "")

    def leader(self) -> str | None:
        """The leader's client endpoint, from each member's etcd_server_is_leader gauge."""
        for port in self.client_ports:
            body = self._get(port, "/metrics") or ""
            if re.search(r"^etcd_server_is_leader 1(\.0+)?$", body, re.M):
                return f"127.0.0.1:{port}"
        return None


class CairnCluster(Cluster):
    """Three `python -m cluster.raft.server` nodes (fsync on: the server syncs every Ready)."""

    name = "cairn"

    def __init__(self, directory: str):
        super().__init__(directory)
        self.endpoints = [f"127.0.0.1:{p}" for p in free_ports(3)]

    MODULE, PREFIX = "cluster.raft.server", "n"  # the node process and its data/log names
    EXTRA_ARGS: tuple[str, ...] = ()

    def start(self) -> None:
        self._spawn_members()
        self.leader_address = self.leader()

    def _spawn_members(self) -> None:
        peers = ",".join(f"{i + 1}={a}" for i, a in enumerate(self.endpoints))
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        for i, address in enumerate(self.endpoints):
            self._spawn([sys.executable, "-m", self.MODULE, "--id", str(i + 1),
                         "--data", os.path.join(self.directory, f"{self.PREFIX}{i + 1}"), "--listen", address,
                         "--peers", peers, *self.EXTRA_ARGS], f"{self.PREFIX}{i + 1}.log", cwd=str(ROOT), env=env)

    def leader(self) -> str:
        """The address of a node that commits a put now (probed: leadership may have moved)."""
        import grpc

        from cluster.proto import raft_pb2, raft_pb2_grpc

        deadline, last = time.monotonic() + START_SECONDS, "no answer"
        channels = {a: grpc.insecure_channel(a) for a in self.endpoints}
        answered: set[str] = set()  # every node must serve, not just a quorum
        try:
            while True:
                self.check_alive()
                leader = None
                for address, channel in channels.items():
                    stub = raft_pb2_grpc.KVStub(channel)
                    try:
                        response = stub.Put(raft_pb2.PutRequest(key=b"bench/probe", value=b"x"), timeout=2.0)
                    except grpc.RpcError as error:
                        last = f"{address}: {error.code().name} {error.details()}"
                        continue
                    answered.add(address)
                    if response.ok:
                        leader = address
                    else:
                        last = f"{address}: {response.error or 'not ok'} (leader {response.leader_address or '?'})"
                if leader and len(answered) == len(channels):
                    return leader
                if time.monotonic() > deadline:
                    raise self.fail(f"cairn had no leader that commits, or a node that did not answer, within "
                                    f"{START_SECONDS:.0f} s (answered: {sorted(answered)}; last: {last})")
                time.sleep(0.2)
        finally:
            for channel in channels.values():
                channel.close()


class CairnMetaCluster(CairnCluster):
    """Three `python -m cluster.meta.server` nodes (fsync on), with a bucket and six registered
    data nodes (records only: the benchmark measures the metadata path)."""

    name = "cairn-meta"
    BUCKET = "bench"
    MODULE, PREFIX = "cluster.meta.server", "m"
    # its data nodes are records only and never heartbeat: keep the failure detector from
    # marking them SUSPECT (placement would then refuse every BeginPut)
    EXTRA_ARGS = ("--suspect-after-seconds", "1e9", "--dead-after-seconds", "2e9")

    def start(self) -> None:
        self._spawn_members()
        import asyncio

        asyncio.run(self._set_up())

    async def _set_up(self) -> None:
        from cluster.client.meta import ClusterUnavailable, MetaClient
        from cluster.proto import meta_pb2 as pb

        client = MetaClient(self.endpoints, timeout=START_SECONDS)
        try:
            reply = await client.command(create_bucket=pb.CreateBucket(
                name=self.BUCKET, profile=pb.ErasureProfile(k=4, m=2), inline_max_bytes=4096))
            if reply.code not in (pb.OK, pb.BUCKET_EXISTS):
                raise self.fail(f"creating the bench bucket failed: {reply.message}")
            for n in range(6):
                node = pb.Node(address=f"127.0.0.1:{20000 + n}", labels={"host": f"h{n}"},
                               disks=[pb.Disk(path="/d", capacity_bytes=1 << 42, free_bytes=1 << 42, healthy=True)])
                reply = await client.command(register_node=pb.RegisterNode(node=node))
                if reply.code != pb.OK:
                    raise self.fail(f"registering a data node failed: {reply.message}")
            self.leader_address = client.leader
        except ClusterUnavailable as error:
            raise self.fail(f"cairn meta had no leader: {error}") from None
        finally:
            await client.close()

    def leader(self) -> str:
        return self.leader_address
