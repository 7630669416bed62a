"""A local cluster on 127.0.0.1: meta and data node processes under one directory.

`cairn dev up` starts 3 meta and 6 data processes (or, with --tiny, 1 meta and 6 small data
nodes), each in its own session so it outlives the command, waits until every data node has
registered, and writes DIR/cluster.json (addresses, pids, logs); `cairn dev down` stops what
that file names. Tests and benchmarks use the same class to run real clusters.

Each data node gets its own failure-domain labels (host h<n>, rack r<n mod 3>), so placement
spreads fragments as it would over real servers.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

DEFAULT_DIRECTORY = ".cairn"
DEFAULT_PORT_BASE = 7400   # meta at base+i, data control at base+10+i, data plane at base+30+i
START_SECONDS = 60.0
STOP_SECONDS = 10.0
STATE_FILE = "cluster.json"


class DevError(RuntimeError):
    pass


@dataclass
class Member:
    role: str          # "meta" or "data"
    number: int        # 1-based within its role
    argv: list[str]
    log: str
    pid: int = 0
    addresses: list[str] = field(default_factory=list)


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out now (held together so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class LocalCluster:
    def __init__(self, directory: str = DEFAULT_DIRECTORY, metas: int = 3, datas: int = 6,
                 port_base: int | None = DEFAULT_PORT_BASE, meta_options: list[str] = (),
                 data_options: list[str] = ()):
        if metas < 1 or datas < 1:
            raise DevError("a cluster needs at least one meta and one data node")
        self.directory = os.path.abspath(directory)
        ports = (free_ports(metas + 2 * datas) if port_base is None else
                 [port_base + i for i in range(metas)] + [port_base + 10 + i for i in range(datas)] +
                 [port_base + 30 + i for i in range(datas)])
        self.meta_addresses = [f"127.0.0.1:{p}" for p in ports[:metas]]
        peers = ",".join(f"{i + 1}={a}" for i, a in enumerate(self.meta_addresses))
        self.members: list[Member] = []
        self._procs: dict[int, subprocess.Popen] = {}  # the members we started: we reap them
        for i, address in enumerate(self.meta_addresses):
            self.members.append(Member("meta", i + 1, [
                "-m", "cluster.meta.server", "--id", str(i + 1), "--data", self._path(f"meta{i + 1}"),
                "--listen", address, "--peers", peers, *meta_options], self._path(f"meta{i + 1}.log"),
                addresses=[address]))
        self.data_options = list(data_options)
        for i in range(datas):
            self._data_member(i + 1, f"127.0.0.1:{ports[metas + i]}", f"127.0.0.1:{ports[metas + datas + i]}")

    def _data_member(self, number: int, control: str, plane: str) -> Member:
        member = Member("data", number, [
            "-m", "cluster.data.server", "--disks", self._path(f"data{number}"), "--listen", control,
            "--data-listen", plane, "--meta", ",".join(self.meta_addresses), "--label", f"host=h{number}",
            "--label", f"rack=r{(number - 1) % 3 + 1}", *self.data_options], self._path(f"data{number}.log"),
            addresses=[control, plane])
        self.members.append(member)
        return member

    def add_data(self) -> Member:
        """Starts one more data node (on free ports); it registers and takes a share of the data."""
        number = 1 + max((m.number for m in self.members if m.role == "data"), default=0)
        member = self._data_member(number, *(f"127.0.0.1:{p}" for p in free_ports(2)))
        self._spawn(member)
        self.save()
        return member

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    # ---- processes

    def start(self, wait: bool = True, timeout: float = START_SECONDS) -> None:
        os.makedirs(self.directory, exist_ok=True)
        self._check_ports()
        for member in self.members:
            self._spawn(member)
        self.save()
        if wait:
            self.wait_ready(timeout)

    def _check_ports(self) -> None:
        for member in self.members:
            for address in member.addresses:
                host, port = address.rsplit(":", 1)
                with socket.socket() as s:
                    if s.connect_ex((host, int(port))) == 0:
                        raise DevError(f"{address} is in use (is a cluster already up? `cairn dev down`, "
                                       "or pick another --port-base)")

    def _spawn(self, member: Member) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")])))
        with open(member.log, "ab") as log:
            proc = subprocess.Popen([sys.executable, *member.argv], stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True, env=env)
        member.pid = proc.pid
        self._procs[member.pid] = proc

    def member(self, role: str, number: int) -> Member:
        for member in self.members:
            if (member.role, member.number) == (role, number):
                return member
        raise DevError(f"no {role} node {number}")

    def kill(self, role: str, number: int, sig: int = signal.SIGKILL) -> None:
        member = self.member(role, number)
        self._signal(member, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self._wait(member, STOP_SECONDS)

    def restart(self, role: str, number: int) -> None:
        member = self.member(role, number)
        # A process on its way out (it crashed or was killed, and the kernel is still tearing
        # it down: no command line any more, not yet a zombie) is waited for, not taken for a
        # running node: under load that takes a while, and a restart came too soon.
        if _alive(member.pid) and (_is_ours(member.pid) or not self._wait(member, STOP_SECONDS)):
            raise DevError(f"{role} node {number} is running (pid {member.pid})")
        self._spawn(member)
        self.save()

    def stop(self) -> None:
        """SIGTERM to every member, SIGKILL to those still up after STOP_SECONDS."""
        for member in self.members:
            self._signal(member, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for member in self.members:
            if not self._wait(member, max(0.1, deadline - time.monotonic())):
                self._signal(member, signal.SIGKILL)
                self._wait(member, STOP_SECONDS)

    def _signal(self, member: Member, sig: int) -> None:
        if member.pid and _alive(member.pid) and _is_ours(member.pid):
            try:
                os.killpg(member.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _wait(self, member: Member, seconds: float) -> bool:
        proc = self._procs.get(member.pid)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None or proc is None and not _alive(member.pid):
                return True
            time.sleep(0.02)
        return False

    def running(self) -> list[Member]:
        return [m for m in self.members if m.pid and _alive(m.pid) and _is_ours(m.pid)]

    # ---- readiness

    def wait_ready(self, timeout: float = START_SECONDS) -> None:
        """Until a leader answers and every running data node is registered with a disk. (On
        synchronous gRPC: an event loop of its own would stay bound to gRPC's asyncio poller,
        which then reports "Event loop is closed" into the caller's loop.)"""
        import grpc

        wanted = {m.addresses[0] for m in self.members if m.role == "data" and m.pid and _alive(m.pid)}
        channels = [grpc.insecure_channel(address) for address in self.meta_addresses]
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._check_alive()
                seen = _registered(channels)
                if seen is not None and wanted <= seen:
                    return
                if time.monotonic() > deadline:
                    what = (f"data nodes {sorted(wanted - seen)} did not register" if seen is not None else
                            f"no metadata leader answered (asked {', '.join(self.meta_addresses)})")
                    raise DevError(f"{what} within {timeout:.0f} s; see the logs in {self.directory}")
                time.sleep(0.1)
        finally:
            for channel in channels:
                channel.close()

    def _check_alive(self) -> None:
        for member in self.members:
            proc = self._procs.get(member.pid)
            if proc is not None and proc.poll() is not None:
                raise DevError(f"{member.role} node {member.number} exited with code {proc.returncode}; "
                               f"log tail:\n{_tail(member.log)}")

    # ---- the state file

    def save(self) -> None:
        state = {"meta": self.meta_addresses, "members": [asdict(m) for m in self.members]}
        path = self._path(STATE_FILE)
        with open(path + ".tmp", "w") as f:
            json.dump(state, f, indent=1)
        os.replace(path + ".tmp", path)

    @classmethod
    def load(cls, directory: str = DEFAULT_DIRECTORY) -> "LocalCluster":
        path = os.path.join(os.path.abspath(directory), STATE_FILE)
        try:
            with open(path) as f:
                state = json.load(f)
        except FileNotFoundError:
            raise DevError(f"no cluster in {directory} (no {STATE_FILE}): start one with `cairn dev up`") from None
        cluster = cls.__new__(cls)
        cluster.directory = os.path.abspath(directory)
        cluster.meta_addresses = state["meta"]
        cluster.members = [Member(**m) for m in state["members"]]
        cluster._procs = {}
        cluster.data_options = []
        return cluster


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _registered(channels) -> set[str] | None:
    """Addresses of the data nodes the meta leader lists as up with a disk; None while no
    leader answers."""
    import grpc

    from cluster.proto import meta_pb2 as pb
    from cluster.proto import meta_pb2_grpc as pb_grpc

    for channel in channels:
        try:
            reply = pb_grpc.MetaStub(channel).Call(pb.MetaOp(list_nodes=pb.ListNodes()), timeout=1.0)
        except grpc.RpcError:
            continue
        if reply.code == pb.OK:
            return {n.address for n in reply.list_nodes.nodes if n.disks and n.state == pb.UP}
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _is_ours(pid: int) -> bool:
    """Whether pid is still a Cairn server (not a stranger that reused the number)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"cluster." in f.read()
    except OSError:
        return False


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            return "\n".join(f.read()[-8192:].decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
