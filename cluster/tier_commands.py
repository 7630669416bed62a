"""The `cairn` commands of the cold tier: targets, bucket lifecycle rules, restore; and the
tier's part of `cairn status`.

    cairn tier add cloud --url https://s3.example.com --bucket cairn-cold --credentials env:COLD
    cairn bucket lifecycle set frames --rule target=cloud,prefix=raw/,after-read=30d,reheat
    cairn restore frames/raw/2026-11/
"""
from __future__ import annotations

import argparse
import re

from cluster.commands import Progress, _human, connect, emit, split_target

DURATION = re.compile(r"^(\d+)([smhd]?)$")
UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}
RULE_FIELDS = {"target", "prefix", "min-size", "after-created", "after-read", "reheat"}


def parse_duration(text: str) -> int:
    """Seconds in '45', '45s', '90m', '12h' or '30d'."""
    match = DURATION.match(text.strip())
    if not match:
        raise ValueError(f"bad duration {text!r}: a number with s, m, h or d")
    return int(match.group(1)) * UNIT_SECONDS[match.group(2)]


def parse_rule(text: str) -> dict:
    """A lifecycle rule from 'target=NAME,prefix=P,min-size=SIZE,after-created=D,after-read=D,reheat'
    (LifecycleRule fields)."""
    from cluster.cli import parse_size

    rule = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, equals, value = part.partition("=")
        if name not in RULE_FIELDS:
            raise ValueError(f"unknown rule field {name!r}: one of {', '.join(sorted(RULE_FIELDS))}")
        if name == "reheat":
            if equals and value not in ("yes", "no", "true", "false"):
                raise ValueError(f"reheat takes no value, or yes/no, not {value!r}")
            rule["reheat_on_read"] = value in ("", "yes", "true")
        elif not equals or not value:
            raise ValueError(f"rule field {name!r} needs a value ({name}=...)")
        elif name in ("target", "prefix"):
            rule[name] = value
        elif name == "min-size":
            try:
                rule["min_size"] = parse_size(value)
            except argparse.ArgumentTypeError as error:
                raise ValueError(str(error)) from None
        else:
            rule[name.replace("-", "_") + "_seconds"] = parse_duration(value)
    if "target" not in rule:
        raise ValueError("a rule needs target=NAME (a tier from `cairn tier ls`)")
    if not (rule.get("after_created_seconds") or rule.get("after_read_seconds")):
        raise ValueError("a rule needs after-created=DURATION or after-read=DURATION")
    return rule


def _rule_argument(text: str) -> dict:
    try:
        return parse_rule(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def describe_rule(rule) -> str:
    parts = [f"target={rule.target}"]
    if rule.prefix:
        parts.append(f"prefix={rule.prefix}")
    if rule.min_size:
        parts.append(f"min-size={rule.min_size}")
    if rule.after_created_seconds:
        parts.append(f"after-created={rule.after_created_seconds}s")
    if rule.after_read_seconds:
        parts.append(f"after-read={rule.after_read_seconds}s")
    if rule.reheat_on_read:
        parts.append("reheat")
    return ",".join(parts)


def add_tier_commands(commands, buckets, command) -> None:
    tier = commands.add_parser("tier", help="cold tiers: S3 buckets that cold chunks move to").add_subparsers(
        dest="tier_command", required=True)
    add = command("add", cmd_tier_add, "add or change a cold tier (an S3 endpoint and bucket)", tier)
    add.add_argument("name")
    add.add_argument("--url", required=True, help="the S3 endpoint, http(s)://host[:port]")
    add.add_argument("--bucket", required=True)
    add.add_argument("--prefix", default="", help="chunks go under PREFIX/chunks/")
    add.add_argument("--credentials", default="", help="env:NAME or file:PATH on the data nodes (never the keys)")
    add.add_argument("--addressing", choices=("path", "virtual"), default="path")
    add.add_argument("--region", default="us-east-1")
    command("ls", cmd_tier_ls, "list cold tiers", tier)
    command("rm", cmd_tier_rm, "remove a cold tier that holds nothing", tier).add_argument("name")

    lifecycle = buckets.add_parser("lifecycle", help="which objects of a bucket go cold").add_subparsers(
        dest="lifecycle_command", required=True)
    set_ = command("set", cmd_lifecycle_set, "replace a bucket's lifecycle rules (the first match wins)", lifecycle)
    set_.add_argument("bucket")
    set_.add_argument("--rule", action="append", default=[], type=_rule_argument,
                      help="target=TIER[,prefix=P][,min-size=SIZE][,after-created=30d][,after-read=7d][,reheat]")
    set_.add_argument("--clear", action="store_true", help="no rules: nothing goes cold")
    command("show", cmd_lifecycle_show, "a bucket's lifecycle rules", lifecycle).add_argument("bucket")

    restore = command("restore", cmd_restore, "bring the cold objects under BUCKET[/PREFIX] back to the data nodes")
    restore.add_argument("path", metavar="BUCKET[/PREFIX]")


def cmd_tier_add(args) -> int:
    with connect(args) as client:
        client.set_tier_target(args.name, args.url, args.bucket, args.prefix, args.credentials, args.addressing,
                               args.region)
    emit(args, {"tier": args.name}, f"tier {args.name}: {args.url} bucket {args.bucket}")
    return 0


def cmd_tier_ls(args) -> int:
    with connect(args) as client:
        targets = client.tier_targets()
        cold = client.status().tier.cold_chunks
    rows = [{"name": t.name, "url": t.url, "bucket": t.bucket, "prefix": t.prefix, "credentials": t.credentials,
             "addressing": t.addressing, "cold_chunks": cold.get(t.name, 0)} for t in targets]
    emit(args, rows, "\n".join(f"{r['name']:<16} {r['url']} s3://{r['bucket']}/{r['prefix']} "
                               f"({r['credentials'] or 'default credentials'}), {r['cold_chunks']} cold chunks"
                               for r in rows) or "(no tiers)")
    return 0


def cmd_tier_rm(args) -> int:
    with connect(args) as client:
        client.remove_tier_target(args.name)
    emit(args, {"removed": args.name}, f"removed tier {args.name}")
    return 0


def cmd_lifecycle_set(args) -> int:
    if bool(args.rule) == args.clear:
        raise ValueError("give --rule (one or more) or --clear")
    with connect(args) as client:
        client.set_lifecycle(args.bucket, args.rule)
    emit(args, {"bucket": args.bucket, "rules": args.rule}, f"bucket {args.bucket}: {len(args.rule)} lifecycle rules")
    return 0


def cmd_lifecycle_show(args) -> int:
    with connect(args) as client:
        rules = client.lifecycle(args.bucket)
    document = [{"target": r.target, "prefix": r.prefix, "min_size": r.min_size,
                 "after_created_seconds": r.after_created_seconds, "after_read_seconds": r.after_read_seconds,
                 "reheat_on_read": r.reheat_on_read} for r in rules]
    emit(args, document, "\n".join(describe_rule(r) for r in rules) or "(no rules: nothing goes cold)")
    return 0


def cmd_restore(args) -> int:
    bucket, prefix = split_target(args.path, key_required=False)
    progress = Progress(f"restore {args.path}", None, args)
    with connect(args) as client:
        restored = client.restore(bucket, prefix, progress=progress)
    progress.finish()
    emit(args, {"restored_bytes": restored}, f"{args.path}: {_human(restored)} brought back from the tier")
    return 0


def status_lines(tier) -> tuple[dict, list[str]]:
    """The tier's part of `cairn status`: (JSON fields, text lines)."""
    document = {"cold_chunks": dict(tier.cold_chunks), "transitions_pending": tier.transitions_pending,
                "transitioned": tier.transitioned, "transitioned_bytes": tier.transitioned_bytes,
                "recalls": tier.recalls, "reheats_pending": tier.reheats_pending, "reheated": tier.reheated,
                "tier_garbage": tier.garbage, "tier_deleted": tier.deleted, "tier_failures": tier.failures,
                "buckets": {name: {"hot_bytes": b.hot_bytes, "cold_bytes": b.cold_bytes}
                            for name, b in tier.buckets.items()}}
    lines = [f"cold tier  {', '.join(f'{n}: {c} chunks' for n, c in sorted(tier.cold_chunks.items())) or 'none'}; "
             f"{tier.transitions_pending} transitions pending, {tier.transitioned} done "
             f"({_human(tier.transitioned_bytes)}), {tier.recalls} recalls, {tier.reheats_pending} re-heats pending, "
             f"{tier.reheated} done, {tier.garbage} to delete, {tier.failures} failures"]
    for name, b in sorted(tier.buckets.items()):
        lines.append(f"  {name:<24} {_human(b.hot_bytes)} hot, {_human(b.cold_bytes)} cold (last lifecycle pass)")
    return {"tier": document}, lines
