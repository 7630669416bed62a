"""Benchmark of Cairn's Raft key-value service against etcd: three nodes each, loopback, fsync on.

    python ops/bench/raft.py [--quick] [--json PATH] [--loadgen-procs N] [--etcd-clients leader|spread]
                             [--only etcd|cairn] [--dir DIR]

Both clusters run side by side on this machine: three `python -m cluster.raft.server` processes
and three etcd members (Debian's etcd-server, installed here when missing; default settings, so
every commit is fsynced). One load generator (ops/bench/raft_load.py: grpc.aio, closed-loop
clients, 256-byte values, 10,000 keys) drives both, the same way: Cairn through its KV service
(clients at the leader, following redirects, one session each), etcd through its own gRPC KV
API (Put, and Range with serializable=false: linearizable), with messages from etcd_kv.proto
compiled at run time by grpcio-tools. Points: puts at 1, 16, 64 and 256 clients, linearizable
gets at 64; each point runs on both systems back to back, alternating which goes first, for
3 s (--quick, one round) or 10 s (three rounds, medians), after a warm-up.

Besides the result table, it prints where the CPU went during each window (the load generator's
own and each cluster's, in cores out of the machine's), and flags a point where the load
generator used most of a core: there it, not the cluster, may set the figure.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
BENCH = ROOT / "ops" / "bench"
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))  # first: `cluster` is the package, not ops/bench/cluster.py
from common import CpuWindow, bench_parser, pip_install, print_table, progress, row, write_json  # noqa: E402
from raft_clusters import CairnCluster, ClusterError, EtcdCluster, ensure_etcd  # noqa: E402
from raft_load import DRAIN_SECONDS as LOADGEN_DRAIN_SECONDS  # noqa: E402

PUT_CLIENTS = [1, 16, 64, 256]
GET_CLIENTS = [64]
LOADGEN_BUSY_CORES = 0.9  # a load-generator process above this much CPU may be the bottleneck
READY_SECONDS = 60.0
DRAIN_SECONDS = 30.0

_children: list[subprocess.Popen] = []


# ---- set-up

def etcd_stubs(directory: str) -> str:
    try:
        import grpc_tools  # noqa: F401
    except ImportError:
        import grpc

        # The same minor series as grpcio: tools lag grpcio's patch releases on PyPI.
        series = ".".join(grpc.__version__.split(".")[:2])
        progress(f"installing grpcio-tools {series}.* ...")
        pip_install(f"grpcio-tools=={series}.*")
    out = os.path.join(directory, "stubs")
    os.makedirs(out)
    command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{BENCH}", f"--python_out={out}",
               f"--grpc_python_out={out}", str(BENCH / "etcd_kv.proto")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        sys.exit(f"raft.py: generating the etcd stubs failed:\n{done.stderr}")
    return out


def check_etcd_api(cluster: EtcdCluster, stubs: str) -> None:
    """A put and a linearizable range through the generated stubs: the field numbers are right."""
    import grpc

    sys.path.insert(0, stubs)
    import etcd_kv_pb2
    import etcd_kv_pb2_grpc

    with grpc.insecure_channel(cluster.endpoints[0]) as channel:
        stub = etcd_kv_pb2_grpc.KVStub(channel)
        put = stub.Put(etcd_kv_pb2.PutRequest(key=b"bench/check", value=b"v" * 256), timeout=10)
        got = stub.Range(etcd_kv_pb2.RangeRequest(key=b"bench/check"), timeout=10)
    if put.header.revision <= 0 or len(got.kvs) != 1 or got.kvs[0].value != b"v" * 256 \
            or got.kvs[0].mod_revision != put.header.revision:
        sys.exit(f"raft.py: etcd's answers do not decode as expected (put {put}, range {got})")


# ---- one measurement point

def run_point(system: str, cluster, op: str, clients: int, seconds: float, warmup: float, procs: int,
              work: str, stubs: str, client_base: int, etcd_clients: str) -> dict:
    procs = max(1, min(procs, clients))
    shares = [clients // procs + (1 if j < clients % procs else 0) for j in range(procs)]
    leader = cluster.leader() if (system == "cairn" or etcd_clients == "leader") else ""
    loads, base = [], client_base
    for j, share in enumerate(shares):
        latencies = os.path.join(work, f"lat-{system}-{op}-{clients}-{j}.npy")
        argv = [sys.executable, str(BENCH / "raft_load.py"), "--system", system, "--op", op,
                "--targets", ",".join(cluster.endpoints), "--leader", leader or "", "--clients", str(share),
                "--warmup", str(warmup), "--duration", str(seconds), "--latencies", latencies,
                "--etcd-stubs", stubs, "--client-base", str(base), "--seed", str(base)]
        base += share
        loads.append((argv, latencies))
    result = run_loads(system, cluster, loads, seconds, warmup)
    result["clients_used"] = base - client_base
    return result


def run_loads(system: str, cluster, loads: list[tuple[list[str], str]], seconds: float, warmup: float) -> dict:
    """Starts load-generator processes (argv, latencies file), starts them together, measures
    the cluster's CPU in the window, and gathers their results."""
    started: list[tuple[subprocess.Popen, str]] = []
    try:
        for argv, latencies in loads:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, start_new_session=True, cwd=str(ROOT))
            _children.append(proc)
            started.append((proc, latencies))
        for proc, _ in started:
            line = _read_line(proc, READY_SECONDS)
            if line != "ready":
                raise RuntimeError(f"load generator did not get ready: {line!r}\n{_stderr_tail(proc)}")
        start = time.time() + 0.2
        for proc, _ in started:
            proc.stdin.write(f"{start!r}\n")
            proc.stdin.flush()
        time.sleep(max(0.0, start + warmup - time.time()))
        window = CpuWindow({"cluster": [proc.pid for proc in cluster.procs]})
        window.start()
        time.sleep(max(0.0, start + warmup + seconds - time.time()))
        cores = window.stop()
        results, latencies = [], []
        for proc, path in started:
            try:
                out, err = proc.communicate(timeout=DRAIN_SECONDS + 10)
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"{system} load generator did not finish in time") from None
            if proc.returncode != 0:
                cluster.check_alive()
                raise RuntimeError(f"{system} load generator failed ({proc.returncode}):\n{err[-3000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
            latencies.append(np.load(path))
    finally:
        for proc, _ in started:
            _kill(proc)
    lat = np.concatenate(latencies) * 1000.0
    ops = sum(r["ops"] for r in results)
    loadgen = [r["cpu_seconds"] / seconds for r in results]
    return {"per_s": ops / seconds, "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            "retries": sum(r["retries"] for r in results), "stalled": sum(r["stalled"] for r in results),
            "loadgen_cores": loadgen,
            "cluster_cores": cores["cluster"], "busiest_member_cores": cores["cluster_busiest"]}


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            return "(nothing within %.0f s)" % timeout
    return proc.stdout.readline().strip()


def _stderr_tail(proc: subprocess.Popen) -> str:
    _kill(proc)
    try:
        return proc.stderr.read()[-3000:]
    except (OSError, ValueError):
        return ""


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
    if proc in _children:
        _children.remove(proc)


# ---- the run

def measure(clusters: dict, quick: bool, procs: int, work: str, stubs: str, etcd_clients: str) -> dict:
    seconds, warmup, rounds = (3.0, 0.5, 1) if quick else (10.0, 1.0, 3)
    points = [("put", c) for c in PUT_CLIENTS] + [("get", c) for c in GET_CLIENTS]
    samples: dict[tuple[str, str, int], list[dict]] = {}
    client_base, turn = 1000, 0
    for round_number in range(rounds):
        for op, clients in points:
            order = list(clusters) if turn % 2 == 0 else list(reversed(clusters))
            turn += 1
            for system in order:
                progress(f"  round {round_number + 1}/{rounds}: {system} {op} x{clients} ({seconds:.0f} s)")
                result = run_point(system, clusters[system], op, clients, seconds, warmup, procs, work, stubs,
                                   client_base, etcd_clients)
                client_base += result["clients_used"]
                samples.setdefault((system, op, clients), []).append(result)
                progress(f"    {result['per_s']:9.0f} ops/s  p50 {result['p50_ms']:6.2f} ms  "
                         f"p99 {result['p99_ms']:7.2f} ms  loadgen {'+'.join(f'{c:.2f}' for c in result['loadgen_cores'])}"
                         f" cores  cluster {result['cluster_cores']:.2f} cores (busiest member {result['busiest_member_cores']:.2f})"
                         f"  retries {result['retries']}" + (f"  STALLED {result['stalled']}" if result["stalled"] else ""))
    return {key: {"per_s": statistics.median(s["per_s"] for s in runs),
                  "p50_ms": statistics.median(s["p50_ms"] for s in runs),
                  "p99_ms": statistics.median(s["p99_ms"] for s in runs),
                  "retries": sum(s["retries"] for s in runs), "stalled": sum(s["stalled"] for s in runs),
                  "loadgen_cores": max(max(s["loadgen_cores"]) for s in runs),
                  "loadgen_total": statistics.median(sum(s["loadgen_cores"]) for s in runs),
                  "cluster_cores": statistics.median(s["cluster_cores"] for s in runs),
                  "busiest_member_cores": statistics.median(s["busiest_member_cores"] for s in runs)}
            for key, runs in samples.items()}


def result_rows(results: dict) -> list[dict]:
    rows = []
    points = [("put", c) for c in PUT_CLIENTS] + [("get", c) for c in GET_CLIENTS]
    for op, clients in points:
        cairn, etcd = results[("cairn", op, clients)], results[("etcd", op, clients)]
        rows.append(row(f"raft_{op}_per_s_c{clients}", cairn["per_s"], "op/s", "etcd", etcd["per_s"]))
        rows.append(row(f"raft_{op}_p50_ms_c{clients}", cairn["p50_ms"], "ms", "etcd", etcd["p50_ms"], False))
        rows.append(row(f"raft_{op}_p99_ms_c{clients}", cairn["p99_ms"], "ms", "etcd", etcd["p99_ms"], False))
    return rows


def print_diagnostics(results: dict, systems: list[str], procs: int) -> None:
    cores = os.cpu_count() or 1
    print(f"\nWhere the CPU went during the windows (cores, of {cores}: load generator ({procs} process(es)), "
          f"whole cluster, its busiest member)")
    header = f"{'system':<6} {'point':<10} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'loadgen':>8} " \
             f"{'cluster':>8} {'busiest':>8} {'retries':>8} {'stalled':>8}"
    print(header)
    print("-" * len(header))
    flagged, stalls = [], []
    for (system, op, clients), r in sorted(results.items(), key=lambda kv: (kv[0][1] != "put", kv[0][2], kv[0][0])):
        if system not in systems:
            continue
        busy = r["loadgen_cores"] >= LOADGEN_BUSY_CORES
        if busy:
            flagged.append(f"{system} {op} x{clients}")
        print(f"{system:<6} {op + ' x' + str(clients):<10} {r['per_s']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['loadgen_total']:>7.2f}{'!' if busy else ' '} {r['cluster_cores']:>8.2f} "
              f"{r['busiest_member_cores']:>8.2f} {r['retries']:>8} {r['stalled']:>8}")
        if r["stalled"]:
            stalls.append(f"{system} {op} x{clients}")
    if stalls:
        print(f"! operations unanswered {LOADGEN_DRAIN_SECONDS:.0f} s after the window (counted in the latencies at "
              f"the time they had waited, not in the throughput): {', '.join(stalls)}")
    if flagged:
        print(f"! a load-generator process used >= {LOADGEN_BUSY_CORES} of a core: the load generator may bound "
              f"these points: {', '.join(flagged)}")


def main() -> None:
    parser = bench_parser(__doc__, quick_help="reduced run (3 s per point, one round), 1-2 minutes")
    parser.add_argument("--loadgen-procs", type=int, default=1, help="load-generator processes per point (default 1)")
    parser.add_argument("--etcd-clients", choices=("leader", "spread"), default="leader",
                        help="etcd clients all at the leader (default, like Cairn's) or spread over the members")
    parser.add_argument("--only", choices=("etcd", "cairn"), help="run one system (no comparison rows)")
    parser.add_argument("--dir", help="where the clusters keep their data (default: a temp dir)")
    args = parser.parse_args()
    systems = [args.only] if args.only else ["cairn", "etcd"]
    if "cairn" in systems and not (ROOT / "cluster" / "raft" / "server.py").exists():
        sys.exit("raft.py: cluster/raft/server.py is missing: no Cairn node to run (use --only etcd)")

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    work = tempfile.mkdtemp(prefix="cairn-raft-bench-", dir=args.dir)
    clusters: dict = {}
    try:
        stubs = etcd_stubs(work) if "etcd" in systems else ""
        for system in systems:
            directory = os.path.join(work, system)
            os.makedirs(directory)
            progress(f"starting {system} (3 nodes) ...")
            cluster = CairnCluster(directory) if system == "cairn" else EtcdCluster(directory, ensure_etcd())
            clusters[system] = cluster
            cluster.start()
        if "etcd" in clusters:
            check_etcd_api(clusters["etcd"], stubs)
        results = measure(clusters, args.quick, args.loadgen_procs, work, stubs, args.etcd_clients)
    except ClusterError as error:
        sys.exit(f"raft.py: {error}")
    finally:
        for proc in list(_children):
            _kill(proc)
        for cluster in clusters.values():
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    if len(systems) == 2:
        rows = result_rows(results)
        print_table("Raft KV, 3 nodes on loopback, fsync on: Cairn vs etcd "
                    f"({'quick' if args.quick else 'full'}; ratio > 1: Cairn better)", rows)
        write_json(args.json, rows)
    print_diagnostics(results, systems, args.loadgen_procs)


if __name__ == "__main__":
    main()
