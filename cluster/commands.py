"""The cluster subcommands of `cairn`: objects (put, get, ls, rm, cp, stat), buckets, status,
the two servers (meta, data) and the local cluster (dev up/down/tour).

Objects are named BUCKET/KEY. Long transfers draw a progress bar on stderr when it is a
terminal; --json prints one JSON document on stdout instead of text, for scripts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib

DEFAULT_META = "127.0.0.1:7400"
PROGRESS_EVERY_SECONDS = 0.2


def add_commands(commands) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--meta", default=argparse.SUPPRESS, metavar="ADDRS", help="comma-separated meta addresses")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")

    def command(name: str, run, help: str, parent=commands):
        sub = parent.add_parser(name, help=help, parents=[common], description=help)
        sub.set_defaults(run=run)
        return sub

    put = command("put", cmd_put, "store a file (or - for stdin) as BUCKET/KEY")
    put.add_argument("target", metavar="BUCKET/KEY")
    put.add_argument("source", metavar="FILE", help="a file path, or - for standard input")
    put.add_argument("--content-type", default="")
    get = command("get", cmd_get, "read BUCKET/KEY into a file (or - for stdout)")
    get.add_argument("source", metavar="BUCKET/KEY")
    get.add_argument("dest", metavar="FILE", nargs="?", help="default: the key's last path segment")
    get.add_argument("--range", metavar="START-END", help="bytes START to END-1 only")
    ls = command("ls", cmd_ls, "list buckets, or the objects under BUCKET[/PREFIX]")
    ls.add_argument("path", metavar="BUCKET[/PREFIX]", nargs="?")
    ls.add_argument("-r", "--recursive", action="store_true", help="every key, not one directory level")
    command("rm", cmd_rm, "delete BUCKET/KEY").add_argument("target", metavar="BUCKET/KEY")
    cp = command("cp", cmd_cp, "copy an object (no data moves: the copy shares its chunks)")
    cp.add_argument("source", metavar="BUCKET/KEY")
    cp.add_argument("target", metavar="BUCKET/KEY")
    command("stat", cmd_stat, "an object's size, hash, version and chunks").add_argument("target", metavar="BUCKET/KEY")
    command("status", cmd_status, "the cluster: leader, data nodes, capacity, chunks, dedup ratio")

    buckets = commands.add_parser("bucket", help="create, list and delete buckets").add_subparsers(
        dest="bucket_command", required=True)
    create = command("create", cmd_bucket_create, "create a bucket", buckets)
    create.add_argument("name")
    create.add_argument("--profile", type=_profile, default=(4, 2), help="erasure profile K+M (default 4+2)")
    create.add_argument("--inline", type=_size, default=4096, help="objects up to this size live in the "
                        "metadata (default 4096)")
    create.add_argument("--versioning", action="store_true")
    create.add_argument("--quota-bytes", type=_size, default=0)
    create.add_argument("--quota-objects", type=int, default=0)
    command("ls", cmd_bucket_ls, "list buckets", buckets)
    command("rm", cmd_bucket_rm, "delete an empty bucket", buckets).add_argument("name")
    from cluster.tier_commands import add_tier_commands
    add_tier_commands(commands, buckets, command)

    node = commands.add_parser("node", help="data node operations").add_subparsers(dest="node_command", required=True)
    for name, drain, help_text in (("drain", True, "move every fragment off a data node (then it can leave)"),
                                   ("undrain", False, "put a draining data node back in service")):
        sub = command(name, cmd_node_drain, help_text, node)
        sub.add_argument("id", type=int)
        sub.set_defaults(drain=drain)

    for role in ("meta", "data"):
        server = commands.add_parser(role, help=f"run a {role} node (flags, or --config FILE.toml)", add_help=False)
        server.add_argument("rest", nargs=argparse.REMAINDER)
        server.set_defaults(run=cmd_server, role=role)

    simulate = commands.add_parser("simulate", help="failure-injection simulations (python -m simulations)",
                                   add_help=False)
    simulate.add_argument("rest", nargs=argparse.REMAINDER)
    simulate.set_defaults(run=cmd_simulate)

    dev = commands.add_parser("dev", help="a local cluster on 127.0.0.1").add_subparsers(dest="dev_command",
                                                                                        required=True)
    up = command("up", cmd_dev_up, "start 3 meta and 6 data nodes under --dir, wait until healthy", dev)
    up.add_argument("--dir", default=".cairn")
    up.add_argument("--tiny", action="store_true", help="1 meta node and 6 small data nodes (a laptop)")
    up.add_argument("--port-base", type=int, default=7400, help="meta at BASE+i, data at BASE+10+i and BASE+30+i")
    down = command("down", cmd_dev_down, "stop the local cluster", dev)
    down.add_argument("--dir", default=".cairn")
    tour = command("tour", cmd_dev_tour, "a short tour on the local cluster: dataset, dedup, a node down", dev)
    tour.add_argument("--dir", default=".cairn")
    tour.add_argument("--size", type=_size, default=64 << 20, help="dataset size (default 64MiB)")


# ---- helpers

def _size(text: str) -> int:
    from cluster.cli import parse_size

    return parse_size(text)


def _profile(text: str) -> tuple[int, int]:
    from cluster.cli import parse_profile

    return parse_profile(text)


def meta_addresses(args) -> list[str]:
    if getattr(args, "meta", None):
        return args.meta.split(",")
    if os.environ.get("CAIRN_META"):
        return os.environ["CAIRN_META"].split(",")
    state = os.path.join(".cairn", "cluster.json")
    if os.path.exists(state):
        with open(state) as f:
            return json.load(f)["meta"]
    return [DEFAULT_META]


def connect(args):
    import cluster

    return cluster.connect(meta_addresses(args), timeout=15.0)


def split_target(text: str, key_required: bool = True) -> tuple[str, str]:
    bucket, _, key = text.partition("/")
    if not bucket or (key_required and not key):
        raise ValueError(f"{text!r}: expected BUCKET/KEY")
    return bucket, key


def emit(args, document, text: str) -> None:
    print(json.dumps(document, indent=1) if getattr(args, "json", False) else text)


class Progress:
    """A one-line progress bar on stderr (only when stderr is a terminal and output is not JSON)."""

    def __init__(self, label: str, total: int | None, args):
        self.label, self.total, self.done = label, total, 0
        self.enabled = sys.stderr.isatty() and not getattr(args, "json", False)
        self.started = self.shown = time.monotonic()

    def __call__(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.enabled and now - self.shown >= PROGRESS_EVERY_SECONDS:
            self.shown = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self.started, 1e-9)
        if self.total:
            filled = int(30 * min(1.0, self.done / self.total))
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {_human(self.done)}/{_human(self.total)}"
        else:
            bar = _human(self.done)
        sys.stderr.write(f"\r{self.label} {bar} {_human(rate)}/s   ")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            sys.stderr.write("\n")


def _human(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return str(count)


def _head(head) -> dict:
    return {"size": head.size, "blake3": head.blake3.hex(), "version": head.version,
            "modified_ms": head.modified_ms, "content_type": head.content_type}


# ---- objects

def cmd_put(args) -> int:
    bucket, key = split_target(args.target)
    if args.source == "-":
        source, total = sys.stdin.buffer, None
    else:
        if not os.path.isfile(args.source):
            raise ValueError(f"{args.source}: no such file")
        source, total = args.source, os.path.getsize(args.source)
    progress = Progress(f"put {bucket}/{key}", total, args)
    with connect(args) as client:
        head = client.put(bucket, key, source, content_type=args.content_type, progress=progress)
        progress.finish()
        sent = client.fragments_sent
    emit(args, {"bucket": bucket, "key": key, **_head(head), "fragments_sent": sent},
         f"{bucket}/{key}: {head.size} bytes, blake3 {head.blake3.hex()[:16]}…, {sent} fragments sent")
    return 0


def cmd_get(args) -> int:
    bucket, key = split_target(args.source)
    start, end = 0, None
    if args.range:
        first, _, last = args.range.partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise ValueError(f"--range {args.range!r}: expected START-END in bytes")
        start, end = int(first), int(last) if last else None
    dest = args.dest or key.rsplit("/", 1)[-1]
    with connect(args) as client:
        head = client.head(bucket, key)
        total = (end if end is not None else head.size) - start
        progress = Progress(f"get {bucket}/{key}", max(0, total), args)
        sink = sys.stdout.buffer if dest == "-" else dest
        size = client.get(bucket, key, sink, start=start, end=end, progress=progress)
        progress.finish()
    if dest != "-":
        emit(args, {"bucket": bucket, "key": key, "file": dest, "bytes": size}, f"{bucket}/{key} -> {dest}: {size} bytes")
    return 0


def cmd_ls(args) -> int:
    if not args.path:
        return cmd_bucket_ls(args)
    bucket, prefix = split_target(args.path, key_required=False)
    rows, prefixes = [], []
    with connect(args) as client:
        for page in client.list_pages(bucket, prefix, "" if args.recursive else "/"):
            rows += [{"key": e.key, **_head(e.head)} for e in page.entries]
            prefixes += page.prefixes
    text = "\n".join([f"{'':>12}  {'DIR':<13}  {p}" for p in prefixes] +
                     [f"{r['size']:>12}  {time.strftime('%Y-%m-%d %H:%M', time.localtime(r['modified_ms'] / 1000))}  "
                      f"{r['key']}" for r in rows])
    emit(args, {"bucket": bucket, "prefixes": prefixes, "objects": rows}, text or "(nothing)")
    return 0


def cmd_rm(args) -> int:
    bucket, key = split_target(args.target)
    with connect(args) as client:
        client.delete(bucket, key)
    emit(args, {"deleted": f"{bucket}/{key}"}, f"deleted {bucket}/{key}")
    return 0


def cmd_cp(args) -> int:
    (sb, sk), (db, dk) = split_target(args.source), split_target(args.target)
    with connect(args) as client:
        head = client.copy(sb, sk, db, dk)
    emit(args, {"bucket": db, "key": dk, **_head(head)}, f"{sb}/{sk} -> {db}/{dk}: {head.size} bytes, no data moved")
    return 0


def cmd_stat(args) -> int:
    bucket, key = split_target(args.target)
    with connect(args) as client:
        manifest = client.manifest(bucket, key)
    document = {"bucket": bucket, "key": key, **_head(manifest.head), "inline": not manifest.chunks,
                "chunks": [{"id": c.id.hex(), "length": c.length} for c in manifest.chunks],
                "metadata": dict(manifest.metadata)}
    text = (f"{bucket}/{key}\n  size     {manifest.head.size}\n  blake3   {manifest.head.blake3.hex()}\n"
            f"  version  {manifest.head.version}\n  modified {time.ctime(manifest.head.modified_ms / 1000)}\n"
            f"  stored   {'inline, in the metadata' if not manifest.chunks else f'{len(manifest.chunks)} chunks'}")
    emit(args, document, text)
    return 0


# ---- buckets and status

def cmd_bucket_create(args) -> int:
    k, m = args.profile
    with connect(args) as client:
        client.create_bucket(args.name, k=k, m=m, inline_max_bytes=args.inline, versioning=args.versioning,
                             quota_bytes=args.quota_bytes, quota_objects=args.quota_objects)
    emit(args, {"created": args.name, "k": k, "m": m}, f"created bucket {args.name} ({k}+{m})")
    return 0


def cmd_bucket_ls(args) -> int:
    with connect(args) as client:
        buckets = client.buckets()
    rows = [{"name": b.name, "k": b.profile.k, "m": b.profile.m, "objects": b.objects, "bytes": b.bytes,
             "versioning": b.versioning} for b in buckets]
    emit(args, rows, "\n".join(f"{r['name']:<24} {r['k']}+{r['m']}  {r['objects']:>10} objects  "
                               f"{_human(r['bytes']):>10}" for r in rows) or "(no buckets)")
    return 0


def cmd_bucket_rm(args) -> int:
    with connect(args) as client:
        client.delete_bucket(args.name)
    emit(args, {"deleted": args.name}, f"deleted bucket {args.name}")
    return 0


def cmd_status(args) -> int:
    from cluster.proto import meta_pb2 as pb

    with connect(args) as client:
        status = client.status()
    nodes = [{"id": n.id, "address": n.address, "state": pb.NodeState.Name(n.state), "labels": dict(n.labels),
              "capacity_bytes": sum(d.capacity_bytes for d in n.disks),
              "free_bytes": sum(d.free_bytes for d in n.disks),
              "disks": len(n.disks), "healthy_disks": sum(d.healthy for d in n.disks)} for n in status.nodes]
    repair = status.repair
    redundancy = {("full" if lost == 0 else f"-{lost}"): count for lost, count in sorted(repair.chunks_by_lost.items())}
    pending_bytes = sum(count for lost, count in repair.chunks_by_lost.items() if lost) * (
        status.chunk_bytes / status.chunks if status.chunks else 0)
    eta = pending_bytes / repair.bytes_per_second if repair.bytes_per_second else None
    document = {"leader": status.leader, "nodes": nodes, "buckets": len(status.buckets),
                "objects": sum(b.objects for b in status.buckets), "logical_bytes": status.logical_bytes,
                "chunks": status.chunks, "chunk_bytes": status.chunk_bytes, "dedup_ratio": round(status.dedup_ratio, 3),
                "redundancy": redundancy, "unrepairable": repair.unrepairable, "repair_queue": repair.queued,
                "repaired": repair.repaired, "repair_bytes_per_second": repair.bytes_per_second,
                "draining_fragments": repair.draining, "rebalance_bytes": repair.rebalance_bytes,
                "seconds_to_full_redundancy": eta, "audited_fragments": repair.audited,
                "audit_missing": repair.audit_missing, "audit_passes": repair.audit_passes}
    lines = [f"leader     {status.leader}",
             f"objects    {document['objects']} in {document['buckets']} buckets, {_human(status.logical_bytes)}",
             f"chunks     {status.chunks} distinct, {_human(status.chunk_bytes)} (dedup ratio "
             f"{status.dedup_ratio:.2f})",
             f"redundancy {', '.join(f'{k}: {v}' for k, v in redundancy.items()) or 'no chunks'}"
             f"{f', lost: {repair.unrepairable}' if repair.unrepairable else ''}",
             f"repair     {repair.queued} queued, {repair.repaired} done, {_human(repair.bytes_per_second)}/s, "
             f"{repair.draining} fragments left on draining nodes, {_human(repair.rebalance_bytes)} to rebalance ({repair.moved} fragments moved)"
             f"{f', about {eta:.0f} s to full redundancy' if eta else ''}",
             f"audit      {repair.audited} fragments asked about, {repair.audit_missing} found missing, "
             f"{repair.audit_passes} passes", "data nodes"]
    for n in nodes:
        labels = ",".join(f"{k}={v}" for k, v in sorted(n["labels"].items()))
        lines.append(f"  {n['id']:>3} {n['address']:<21} {n['state']:<8} {labels:<18} "
                     f"{_human(n['free_bytes'])} free of {_human(n['capacity_bytes'])}, "
                     f"{n['healthy_disks']}/{n['disks']} disks healthy")
    from cluster.tier_commands import status_lines
    tier_document, tier_lines = status_lines(status.tier)
    document.update(tier_document)
    emit(args, document, "\n".join(lines + tier_lines))
    return 0


def cmd_node_drain(args) -> int:
    with connect(args) as client:
        client.drain_node(args.id, drain=args.drain)
    if args.drain:
        emit(args, {"draining": args.id}, f"data node {args.id} is draining: `cairn status` shows the fragments left")
    else:
        emit(args, {"up": args.id}, f"data node {args.id} is back in service")
    return 0


# ---- servers

def cmd_server(args) -> int:
    """`cairn meta|data [--config FILE.toml] [flags]`: the TOML's keys are the flags' names."""
    rest = list(args.rest)
    if "--config" in rest:
        at = rest.index("--config")
        if at + 1 >= len(rest):
            raise ValueError("--config needs a FILE.toml")
        rest = config_flags(rest[at + 1]) + rest[:at] + rest[at + 2:]
    if args.role == "meta":
        from cluster.meta.server import main as server_main
    else:
        from cluster.data.server import main as server_main
    server_main(rest)
    return 0


def cmd_simulate(args) -> int:
    """`cairn simulate cluster|raft ...`: the simulations' own command (python -m simulations)."""
    from simulations.__main__ import main as simulations_main, with_fixed_hash_seed

    with_fixed_hash_seed(args.rest)
    return simulations_main(args.rest)


def config_flags(path: str) -> list[str]:
    """A TOML table of flag values as argv: {"id" = 1, "label" = ["host=a"]} -> --id 1 --label host=a."""
    with open(path, "rb") as f:
        try:
            table = tomllib.load(f)
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{path}: {error}") from None
    flags = []
    for key, value in table.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, dict):
            value = [f"{k}={v}" for k, v in value.items()]  # peers = {1 = "h:p"} or label = {host = "a"}
            if key == "peers":
                value = [",".join(value)]
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, bool):
                flags += [flag] if item else []
            else:
                flags += [flag, str(item)]
    return flags


# ---- the local cluster

def cmd_dev_up(args) -> int:
    from cluster.dev import LocalCluster

    metas = 1 if args.tiny else 3
    data_options = ["--scrub-mb-per-s", "5"] if args.tiny else []
    local = LocalCluster(args.dir, metas=metas, datas=6, port_base=args.port_base, data_options=data_options)
    print(f"starting {metas} meta and 6 data nodes in {local.directory} ...", file=sys.stderr)
    try:
        local.start()
    except BaseException:
        local.stop()
        raise
    addresses = ",".join(local.meta_addresses)
    emit(args, {"meta": local.meta_addresses, "directory": local.directory},
         f"Cairn is up: {metas} meta, 6 data nodes.\n"
         f"  cairn --meta {addresses} status        (or export CAIRN_META={addresses})\n"
         f"  python: cluster.connect({local.meta_addresses!r})\n"
         f"  stop:   cairn dev down --dir {args.dir}")
    return 0


def cmd_dev_down(args) -> int:
    from cluster.dev import LocalCluster

    local = LocalCluster.load(args.dir)
    running = local.running()
    local.stop()
    emit(args, {"stopped": len(running)}, f"stopped {len(running)} processes")
    return 0


def cmd_dev_tour(args) -> int:
    from cluster import tour
    from cluster.dev import LocalCluster

    return tour.run(LocalCluster.load(args.dir), args.size)
