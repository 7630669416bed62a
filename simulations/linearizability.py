"""Linearizability checker for key-value histories (pure: data in, verdict out).

Theory of operation
-------------------
A history is a list of `Operation`s: who called what on which key, when the call was invoked and
when (if ever) it returned, and what it returned. The model is one atomic register per key,
initially None: `put(value)` sets it, `get()` reads it, `cas(expected, new)` sets it to `new` and
returns True when it held `expected`, else leaves it alone and returns False. The history is
linearizable when every operation can be given a single instant between its invocation and its
response such that executing the operations one at a time, in the order of those instants, on the
model gives every result the history recorded.

Operation A precedes B in real time when A returned strictly before B was invoked; equal times
count as concurrent (the lenient reading: a tie never produces a false alarm). Times may be any
totally ordered values, so a simulator that wants ties broken by event order can pass
`(tick, event_index)` tuples.

An operation with no response (timed out, client crashed) may or may not have taken effect, at any
instant after its invocation: its response time is +infinity and its result is unknown. A pending
get constrains nothing and is dropped. A pending put or cas is optional: the search may linearize
it anywhere after its invocation, or never (never is the same as "last", after every response).

Linearizability is local (Herlihy & Wing's P-compositionality): a history is linearizable iff
its restriction to each key is, so every key is checked on its own, in order of first appearance.

Per key the search is Wing & Gong's, with Lowe's improvements (the "WGL" algorithm): the
invocations and responses of the completed operations are put in one doubly linked list ordered by
time. The calls that come before the first response in the list are the *minimal* operations: any
of them may be linearized next. The search takes a minimal call whose model step agrees with the
recorded result, pushes it on a stack, unlinks the call and its response, and carries on from the
new configuration; when no minimal call fits, the response at the head of the list can no longer
be met, and the search backtracks (pops, relinks, tries the next choice). Lowe's memoization keeps
every configuration entered, (set of linearized operations as a bitset, model state), in a cache
and never enters one twice: a configuration seen before and left has been refuted (it cannot be
one being explored, which all have fewer operations linearized). That makes the search polynomial on the
histories real systems produce, although the problem is NP-complete in general; so each key has a
step budget (a step is one look at a minimal call), and running out of it gives the explicit
verdict UNKNOWN rather than a hang or a guess. The search succeeds when every completed operation
is linearized: the pending ones left over can all go last.

Refinements, each of which keeps the verdict exact (tests compare it with brute force):
- a consistent minimal get (or failed cas) can be moved to the front of any linearization of the
  rest, so it is taken at once and is not a choice point;
- values that no get reads and no cas expects are indistinguishable to the model and share one
  state, which merges the cache entries left by different unread writes;
- pending operations are not in the list: pending writes of such unread values are dropped when
  no cas on the key failed (removing one changes the register only while it held a value nobody
  looks at), and the rest are grouped by model step, each group used in invocation order (two
  invoked pending twins are interchangeable forever);
- choices are tried in the order: writes of unread values (best overwritten soon), other
  completed writes, pending operations.
Written values should be unique (e.g. (client, sequence)): checks are then fastest, reports
clearest.

On failure the report names the key, lists its operations, and gives the longest linearizable
prefix the search found and the operation whose response it could not get past after that prefix.

Values are compared by type and value (1, 1.0 and True are three different values; inside a
tuple, Python equality decides), and must be hashable. Nothing here iterates over a set or dict in a way that depends on hash order.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Hashable, Sequence

PUT = "put"
GET = "get"
CAS = "cas"
ARGUMENT_COUNT_BY_KIND = {PUT: 1, GET: 0, CAS: 2}

STEPS_PER_KEY_MAX_DEFAULT = 10_000_000  # about 2-5 s of search, 100-200 MB of cache
EXPLAIN_OPERATIONS_MAX = 40  # operations listed in an explanation (the latest ones before the failure)
EXPLAIN_PREFIX_MAX = 20  # operations of the longest prefix listed in an explanation (its tail)


@dataclasses.dataclass(frozen=True)
class Operation:
    """One call on the store. `returned is None` means no response: pending, effect unknown.

    `args` is `(value,)` for put, `()` for get and `(expected, new)` for cas. `result` is the value
    read for get, the success flag for cas, and None for put and for every pending operation.
    """

    client: Hashable
    kind: str
    key: Hashable
    args: tuple
    invoked: Any
    returned: Any = None
    result: Any = None

    def __post_init__(self) -> None:
        if self.kind not in ARGUMENT_COUNT_BY_KIND:
            raise ValueError(f"unknown operation kind {self.kind!r}; expected put, get or cas")
        if not isinstance(self.args, tuple) or len(self.args) != ARGUMENT_COUNT_BY_KIND[self.kind]:
            raise ValueError(f"{self.kind} takes a tuple of {ARGUMENT_COUNT_BY_KIND[self.kind]} "
                             f"arguments, got {self.args!r}")
        if self.invoked is None:
            raise ValueError("an operation needs an invocation time")
        if self.returned is None:
            if self.result is not None:
                raise ValueError(f"pending {self.kind} has a result {self.result!r}; "
                                 "a pending operation's result is unknown")
            return
        if self.returned < self.invoked:
            raise ValueError(f"{self.kind} returned at {self.returned!r}, "
                             f"before it was invoked at {self.invoked!r}")
        if self.kind == PUT and self.result is not None:
            raise ValueError(f"put returns nothing, got {self.result!r} (a put known to have "
                             "failed should not be recorded as completed)")
        if self.kind == CAS and not isinstance(self.result, bool):
            raise ValueError(f"cas returns a bool, got {self.result!r}")

    @property
    def pending(self) -> bool:
        return self.returned is None

    def describe(self) -> str:
        """`put(1)`, `get() -> 1`, `cas(1, 2) -> False`, `cas(1, 2) -> ?` when pending."""
        call = f"{self.kind}({', '.join(repr(argument) for argument in self.args)})"
        if self.pending:
            return call if self.kind == PUT else f"{call} -> ?"
        return call if self.kind == PUT else f"{call} -> {self.result!r}"


class History:
    """Records operations as a simulator issues them; an op id is an index into `operations()`.

    `now` must never decrease from one call to the next. An operation known not to have taken
    effect (rejected before it reached the log) may be left pending: that is sound, only weaker.
    """

    def __init__(self) -> None:
        self._operations: list[Operation] = []
        self._now_last: Any = None

    def invoke(self, client: Hashable, kind: str, key: Hashable, args: Sequence, now: Any) -> int:
        self._advance(now)
        self._operations.append(Operation(client, kind, key, tuple(args), invoked=now))
        return len(self._operations) - 1

    def complete(self, op_id: int, result: Any, now: Any) -> None:
        if not 0 <= op_id < len(self._operations):
            raise ValueError(f"no operation {op_id}")
        operation = self._operations[op_id]
        if not operation.pending:
            raise ValueError(f"operation {op_id} already completed at {operation.returned!r}")
        self._advance(now)
        self._operations[op_id] = dataclasses.replace(operation, returned=now, result=result)

    def operations(self) -> list[Operation]:
        return list(self._operations)

    def _advance(self, now: Any) -> None:
        if now is None:
            raise ValueError("now must be a time, not None")
        if self._now_last is not None and now < self._now_last:
            raise ValueError(f"time went backwards: {now!r} after {self._now_last!r}")
        self._now_last = now


class Verdict(enum.Enum):
    LINEARIZABLE = "linearizable"
    NOT_LINEARIZABLE = "not linearizable"
    UNKNOWN = "unknown (step budget exhausted)"


@dataclasses.dataclass(frozen=True)
class KeyReport:
    """Why one key was not proven linearizable. Operations are named by their history index."""

    key: Hashable
    verdict: Verdict
    steps: int
    operations: tuple[tuple[int, Operation], ...]  # this key's, by invocation (pending gets too)
    longest_prefix: tuple[int, ...]  # linearization order of the deepest dead end reached
    state_after_prefix: Any  # the register's value after that prefix
    blocked_by: int | None  # the operation whose response the search could not get past

    def explain(self) -> str:
        lines = [f"key {self.key!r}: {self.verdict.value} after {self.steps} search steps "
                 f"({len(self.operations)} operations on this key)"]
        lines += _explain_operations(self.operations, self.blocked_by)
        by_index = dict(self.operations)
        shown = self.longest_prefix[-EXPLAIN_PREFIX_MAX:]
        skipped = len(self.longest_prefix) - len(shown)
        lines.append(f"longest linearizable prefix found ({len(self.longest_prefix)} operations"
                     + (f", first {skipped} not shown" if skipped else "") + "):")
        lines += [f"  #{index} {by_index[index].describe()}" for index in shown]
        lines.append(f"register value after that prefix: {self.state_after_prefix!r}")
        if self.blocked_by is not None:
            blocked = by_index[self.blocked_by]
            lines.append(f"no way found to linearize #{self.blocked_by} {blocked.describe()} "
                         f"(client {blocked.client!r}, returned at {blocked.returned!r}) "
                         "after that prefix")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Result:
    verdict: Verdict
    reports: tuple[KeyReport, ...]  # one per key not proven linearizable, by first appearance
    keys_checked: int
    steps: int  # search steps over all keys

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.LINEARIZABLE

    @property
    def key(self) -> Hashable | None:
        """The first key found not linearizable, else the first left unknown, else None."""
        for wanted in (Verdict.NOT_LINEARIZABLE, Verdict.UNKNOWN):
            for report in self.reports:
                if report.verdict is wanted:
                    return report.key
        return None

    def explain(self) -> str:
        head = f"{self.verdict.value}: {self.keys_checked} keys checked in {self.steps} steps"
        return "\n\n".join([head] + [report.explain() for report in self.reports])


def check(history: Sequence[Operation], *,
          steps_per_key_max: int = STEPS_PER_KEY_MAX_DEFAULT) -> Result:
    """Decide whether `history` is linearizable, one register per key."""
    if steps_per_key_max < 1:
        raise ValueError(f"steps_per_key_max must be at least 1, got {steps_per_key_max}")
    for index, operation in enumerate(history):
        if not isinstance(operation, Operation):
            raise TypeError(f"history[{index}] is a {type(operation).__name__}, not an Operation")
    reports = []
    steps_total = 0
    partitions = _partition_by_key(history)
    for key, indexed in partitions:
        report = _check_key(key, indexed, steps_per_key_max)
        steps_total += report.steps
        if report.verdict is not Verdict.LINEARIZABLE:
            reports.append(report)
    verdict = Verdict.LINEARIZABLE
    if reports:  # a proven violation outranks a key left unknown
        violated = any(report.verdict is Verdict.NOT_LINEARIZABLE for report in reports)
        verdict = Verdict.NOT_LINEARIZABLE if violated else Verdict.UNKNOWN
    return Result(verdict, tuple(reports), len(partitions), steps_total)


def _partition_by_key(history: Sequence[Operation]) -> list[tuple[Hashable, list]]:
    """[(key, [(history index, op), ...])] by first appearance; keys told apart by type too."""
    partitions: dict[tuple, tuple[Hashable, list]] = {}
    for index, operation in enumerate(history):
        identity = _identity(operation.key, "key")
        partitions.setdefault(identity, (operation.key, []))[1].append((index, operation))
    return list(partitions.values())  # insertion order: deterministic


def _identity(value: Any, what: str) -> tuple:
    try:
        hash(value)
    except TypeError:
        raise TypeError(f"{what} {value!r} is not hashable") from None
    return (type(value), value)


def _check_key(key: Hashable, indexed: list, steps_max: int) -> KeyReport:
    by_invocation = sorted(indexed, key=lambda pair: (pair[1].invoked, pair[0]))
    relevant = _relevant(by_invocation)
    problem = _Problem(relevant, _observed_values(relevant))
    outcome = _search(problem, steps_max)
    return KeyReport(
        key=key,
        verdict=outcome.verdict,
        steps=outcome.steps,
        operations=tuple(by_invocation),
        longest_prefix=tuple(relevant[op][0] for op in outcome.prefix),
        state_after_prefix=_replay([relevant[op][1] for op in outcome.prefix]),
        blocked_by=None if outcome.blocked is None else relevant[outcome.blocked][0],
    )


def _replay(linearization: list[Operation]) -> Any:
    """The register's value after these operations (consistent ones) are applied in order."""
    value = None
    for operation in linearization:
        if operation.kind == PUT:
            value = operation.args[0]
        elif operation.kind == CAS and operation.result is not False:
            value = operation.args[1]
    return value


def _relevant(by_invocation: list) -> list:
    """Drop the pending operations that cannot change the verdict.

    A pending get constrains nothing. A pending write whose value nobody observes (no get read it,
    no cas expected it) can be dropped too when no cas failed on this key: taking it out of any
    linearization changes the register only while it held that unobserved value. With unique
    written values, as a simulator should use, this removes almost every pending write.
    """
    observed = _observed_values(by_invocation)
    some_cas_failed = any(operation.kind == CAS and operation.result is False
                          for _, operation in by_invocation)

    def matters(operation: Operation) -> bool:
        if not operation.pending:
            return True
        if operation.kind == GET or (operation.kind == CAS and _identity(
                operation.args[0], "value") == _identity(operation.args[1], "value")):
            return False  # a pending read or no-op
        return some_cas_failed or _identity(operation.args[-1], "value") in observed

    return [pair for pair in by_invocation if matters(pair[1])]


def _observed_values(by_invocation: list) -> set[tuple]:
    """Identities of the values some operation looks at: read by a get, expected by a cas."""
    observed = {_identity(None, "value")}
    for _, operation in by_invocation:
        if operation.kind == GET and not operation.pending:
            observed.add(_identity(operation.result, "value"))
        elif operation.kind == CAS:
            observed.add(_identity(operation.args[0], "value"))
    return observed


# Model step codes. Values are interned to small ints, so a model state is an int (None is 0).
# Every value nobody observes is interned as the same int, _UNOBSERVED_ID: the model cannot tell
# them apart (a get or cas comparing with one would have observed it), and merging them shrinks
# the memo: the configurations after different unread writes become one.
_UNOBSERVED_ID = 1
_SET = 0  # put, and pending cas (which can only matter if it succeeded): needs nothing
_READ = 1  # completed get: the register must hold `a`
_SWAP = 2  # successful or pending cas: the register must hold `a`; it then holds `b`
_REFUSE = 3  # failed cas: the register must not hold `a`
_INCONSISTENT = -1


def _step(code: int, a: int, b: int, state: int) -> int:
    """The model state after the operation, or _INCONSISTENT if its result cannot occur."""
    if code == _SET:
        return a
    if code == _READ:
        return state if state == a else _INCONSISTENT
    if code == _SWAP:
        return b if state == a else _INCONSISTENT
    return state if state != a else _INCONSISTENT


# The order in which the search tries an op, when it is minimal and consistent.
_PRIORITY_FIRST = 0  # writes of a value nobody observes: best placed early, to be overwritten
_PRIORITY_NORMAL = 1
_PRIORITY_LAST = 2  # pending operations: they need not take effect at all
_PRIORITY_READ = 3  # completed ops that leave the register alone: linearized at once


def _priority(code: int, a: int, b: int, completed: bool) -> int:
    if not completed:
        return _PRIORITY_LAST
    if code in (_READ, _REFUSE) or (code == _SWAP and a == b):
        return _PRIORITY_READ
    return _PRIORITY_FIRST if code == _SET and a == _UNOBSERVED_ID else _PRIORITY_NORMAL


class _Problem:
    """One key's operations as arrays: interned values, step codes, and the sorted event list."""

    def __init__(self, indexed: list, observed: set[tuple]) -> None:
        self._value_ids: dict[tuple, int] = {(type(None), None): 0}  # _UNOBSERVED_ID is 1
        self._observed = observed
        self.codes, self.a, self.b = [], [], []
        self.completed: list[bool] = []
        events = []
        for op, (_, operation) in enumerate(indexed):
            self._encode(operation)
            self.completed.append(not operation.pending)
            events.append((operation.invoked, 0, op))
            if not operation.pending:
                events.append((operation.returned, 1, op))
        # Calls before responses at equal times: a tie is concurrency, not precedence.
        events.sort(key=lambda event: (event[0], event[1], event[2]))
        self.event_op = [-1] + [op for _, _, op in events]  # node 0 is the list's sentinel
        self.event_is_return = [False] + [phase == 1 for _, phase, _ in events]
        self.call_node = [0] * len(indexed)
        self.return_node = [0] * len(indexed)  # 0: none (pending)
        for node in range(1, len(self.event_op)):
            nodes = self.return_node if self.event_is_return[node] else self.call_node
            nodes[self.event_op[node]] = node
        # Only completed ops are linked; pending ones are offered by twin group (see below).
        self.linked_nodes = [node for node in range(1, len(self.event_op))
                             if self.completed[self.event_op[node]]]
        self.priority = [_priority(code, a, b, completed)
                         for code, a, b, completed in zip(self.codes, self.a, self.b, self.completed)]
        self.twin_groups, self.group_of = self._twin_groups()
        self.group_first_call = [self.call_node[members[0]] for members in self.twin_groups]

    def _encode(self, operation: Operation) -> None:
        if operation.kind == PUT:
            code, a, b = _SET, self._intern(operation.args[0]), 0
        elif operation.kind == GET:
            code, a, b = _READ, self._intern(operation.result), 0
        elif operation.pending or operation.result:
            code, a, b = _SWAP, self._intern(operation.args[0]), self._intern(operation.args[1])
        else:
            code, a, b = _REFUSE, self._intern(operation.args[0]), 0
        self.codes.append(code)
        self.a.append(a)
        self.b.append(b)

    def _twin_groups(self) -> tuple[list[list[int]], list[int]]:
        """Pending ops grouped by model step, each group in invocation order.

        Two pending twins, once both invoked, are interchangeable forever (neither ever returns),
        so the search uses a group's members in invocation order only: it offers the first unused
        member, once invoked. Unread pending writes all become twins (see _UNOBSERVED_ID).
        """
        group_by_step: dict[tuple[int, int, int], int] = {}
        groups: list[list[int]] = []
        group_of = [-1] * len(self.codes)
        for op, step in enumerate(zip(self.codes, self.a, self.b)):
            if not self.completed[op]:
                group = group_by_step.setdefault(step, len(groups))
                if group == len(groups):
                    groups.append([])
                groups[group].append(op)
                group_of[op] = group
        return groups, group_of

    def _intern(self, value: Any) -> int:
        identity = _identity(value, "value")
        if identity not in self._observed:
            return _UNOBSERVED_ID
        return self._value_ids.setdefault(identity, len(self._value_ids) + 1)


@dataclasses.dataclass
class _Outcome:
    verdict: Verdict
    steps: int
    prefix: list[int]  # ops in linearization order (the whole linearization on success)
    state: int
    blocked: int | None


def _search(problem: _Problem, steps_max: int) -> _Outcome:
    return _Search(problem, steps_max).run()


class _Search:
    """WGL: depth-first over minimal calls, with (linearized bitset, state) memoization.

    Each configuration's minimal calls are scanned once, on arrival; the consistent ones become
    its list of choices, kept on the stack with how far they have been tried, so backtracking
    resumes without rescanning. A consistent minimal call that leaves the register alone (a get,
    a failed cas) is pushed as forced instead: when what follows it fails, the configuration
    before it fails too, so backtracking goes straight past it.
    """

    def __init__(self, problem: _Problem, steps_max: int) -> None:
        self.next_node = [0] * len(problem.event_op)  # a circular list through sentinel 0
        self.prev_node = [0] * len(problem.event_op)
        ring = [0] + problem.linked_nodes
        for position, node in enumerate(ring):
            self.next_node[node] = ring[(position + 1) % len(ring)]
            self.prev_node[node] = ring[position - 1]
        self.group_used = [0] * len(problem.twin_groups)  # members linearized, per twin group
        # The twin groups with members left, in order of first invocation, also a circular list;
        # its sentinel is the index len(twin_groups).
        group_ring = list(range(len(problem.twin_groups) + 1))
        self.next_group = group_ring[1:] + group_ring[:1]
        self.prev_group = group_ring[-1:] + group_ring[:-1]
        self.problem = problem
        self.steps_max = steps_max
        self.steps = 0
        # (call node, state before it, the choices it was taken from or None if forced, how many
        # of them are tried, the op whose response closes that configuration)
        self.stack: list[tuple[int, int, list | None, int, int]] = []
        self.visited: set[tuple[int, int]] = set()
        self.linearized = 0  # bitset of linearized ops
        self.state = 0
        self.returns_left = sum(problem.completed)  # completed ops not yet linearized
        self.deepest = _Outcome(Verdict.NOT_LINEARIZABLE, 0, [], 0, None)

    def run(self) -> _Outcome:
        choices, tried, closing = self._enter()
        while self.returns_left and self.steps < self.steps_max:
            if choices is None or tried == len(choices):  # dead end
                if choices is not None:
                    self._note_dead_end(closing)
                resumed = self._backtrack()
                if resumed is None:
                    self.deepest.steps = self.steps
                    return self.deepest
                choices, tried, closing = resumed
                continue
            self.steps += 1
            node, op, state_after = choices[tried]
            tried += 1
            if _configuration(self.linearized | 1 << op, state_after) not in self.visited:
                self._push(node, op, state_after, choices, tried, closing)
                choices, tried, closing = self._enter()
        return self._finish()

    def _finish(self) -> _Outcome:
        if not self.returns_left:
            return _Outcome(Verdict.LINEARIZABLE, self.steps, self._prefix(), self.state, None)
        self.deepest.verdict = Verdict.UNKNOWN
        if len(self.stack) > len(self.deepest.prefix):
            self.deepest.prefix, self.deepest.state, self.deepest.blocked = (
                self._prefix(), self.state, None)
        self.deepest.steps = self.steps
        return self.deepest

    def _enter(self) -> tuple[list | None, int, int]:
        """Arrive at a new configuration: linearize consistent reads, then list its choices.

        Returns (choices, 0, op whose response closes the configuration), or (None, 0, -1) when
        the configuration is already refuted, or ([], 0, -1) when the step budget ran out."""
        while self.returns_left:
            read_node, choices, first_return = self._scan_minimal_calls()
            if first_return < 0:
                return [], 0, -1
            if not read_node:
                choices += self._pending_choices(first_return)
                return choices, 0, self.problem.event_op[first_return]
            op = self.problem.event_op[read_node]
            if _configuration(self.linearized | 1 << op, self.state) in self.visited:
                return None, 0, -1  # already refuted with this read taken
            self._push(read_node, op, self.state, None, 0, -1)
        return [], 0, -1

    def _scan_minimal_calls(self) -> tuple[int, list, int]:
        """Walk the linked calls before the first response: (the node of a consistent read or 0,
        the consistent writes by priority, the first response's node or -1: out of steps)."""
        problem, next_node, state = self.problem, self.next_node, self.state
        event_op, is_return = problem.event_op, problem.event_is_return
        codes, a, b, priority = problem.codes, problem.a, problem.b, problem.priority
        steps, steps_max = self.steps, self.steps_max
        buckets: tuple[list, list] = ([], [])  # _PRIORITY_FIRST, _PRIORITY_NORMAL
        node = next_node[0]
        while not is_return[node]:
            if steps == steps_max:
                self.steps = steps
                return 0, [], -1
            steps += 1
            op = event_op[node]
            state_after = _step(codes[op], a[op], b[op], state)
            if state_after != _INCONSISTENT:
                if priority[op] == _PRIORITY_READ:
                    self.steps = steps
                    return node, [], node
                buckets[priority[op]].append((node, op, state_after))
            node = next_node[node]
        self.steps = steps
        return 0, buckets[0] + buckets[1], node

    def _pending_choices(self, first_return: int) -> list[tuple[int, int, int]]:
        """The first unused member of each twin group, if invoked before `first_return`."""
        problem, choices, state = self.problem, [], self.state
        call_node, codes, a, b = problem.call_node, problem.codes, problem.a, problem.b
        twin_groups, group_used, next_group = problem.twin_groups, self.group_used, self.next_group
        first_calls, sentinel = problem.group_first_call, len(twin_groups)
        steps, steps_max = self.steps, self.steps_max
        group = next_group[sentinel]
        while group != sentinel and first_calls[group] < first_return and steps < steps_max:
            steps += 1
            op = twin_groups[group][group_used[group]]
            if call_node[op] < first_return:
                state_after = _step(codes[op], a[op], b[op], state)
                if state_after != _INCONSISTENT:
                    choices.append((call_node[op], op, state_after))
            group = next_group[group]
        self.steps = steps
        return choices

    def _use_twin(self, op: int, count: int) -> None:
        """Mark one more (count 1) or one fewer (count -1) member of op's twin group used."""
        group = self.problem.group_of[op]
        exhausted = len(self.problem.twin_groups[group])
        if count < 0 and self.group_used[group] == exhausted:
            _relink(group, 0, self.next_group, self.prev_group)
        self.group_used[group] += count
        if count > 0 and self.group_used[group] == exhausted:
            _unlink(group, 0, self.next_group, self.prev_group)

    def _push(self, node: int, op: int, state_after: int, choices: list | None, tried: int,
              closing: int) -> None:
        self.stack.append((node, self.state, choices, tried, closing))
        self.linearized |= 1 << op
        self.state = state_after
        self.visited.add(_configuration(self.linearized, state_after))
        if self.problem.completed[op]:
            response = self.problem.return_node[op]
            self.returns_left -= _unlink(node, response, self.next_node, self.prev_node)
        else:
            self._use_twin(op, 1)

    def _backtrack(self) -> tuple[list, int, int] | None:
        """Undo up to the last choice point; return its remaining choices, or None: refuted."""
        while self.stack:
            node, self.state, choices, tried, closing = self.stack.pop()
            op = self.problem.event_op[node]
            self.linearized ^= 1 << op
            if self.problem.completed[op]:
                response = self.problem.return_node[op]
                self.returns_left += _relink(node, response, self.next_node, self.prev_node)
            else:
                self._use_twin(op, -1)
            if choices is not None:
                return choices, tried, closing
        return None

    def _note_dead_end(self, closing: int) -> None:
        if len(self.stack) > len(self.deepest.prefix) or self.deepest.blocked is None:
            self.deepest.prefix, self.deepest.state, self.deepest.blocked = (
                self._prefix(), self.state, closing)

    def _prefix(self) -> list[int]:
        return [self.problem.event_op[node] for node, _, _, _, _ in self.stack]


def _configuration(linearized: int, state: int) -> tuple[int, int, int]:
    """The memo key: (k, the bitset shifted right by k, state), where ops 0..k-1 are all linearized.

    Ops are numbered by invocation, so the linearized set is a solid run of low bits plus a few
    above it; dropping the run keeps each cached key small, whatever the history's length."""
    after = linearized + 1  # the lowest clear bit of `linearized` is the lowest set bit of `after`
    frontier = (after & -after).bit_length() - 1
    return frontier, linearized >> frontier, state


def _unlink(call: int, response: int, next_node: list[int], prev_node: list[int]) -> int:
    """Remove a call and its response node (0: none); returns the number of responses removed."""
    next_node[prev_node[call]] = next_node[call]
    prev_node[next_node[call]] = prev_node[call]
    if not response:
        return 0
    next_node[prev_node[response]] = next_node[response]
    prev_node[next_node[response]] = prev_node[response]
    return 1


def _relink(call: int, response: int, next_node: list[int], prev_node: list[int]) -> int:
    """Undo the matching `_unlink` (in reverse order, dancing-links style)."""
    if response:
        next_node[prev_node[response]] = response
        prev_node[next_node[response]] = response
    next_node[prev_node[call]] = call
    prev_node[next_node[call]] = call
    return 1 if response else 0


def _explain_operations(operations: tuple[tuple[int, Operation], ...], blocked: int | None) -> list:
    if blocked is not None:  # what was invoked after the failing response cannot explain it
        horizon = dict(operations)[blocked].returned
        operations = tuple(pair for pair in operations if not horizon < pair[1].invoked)
    shown = operations[-EXPLAIN_OPERATIONS_MAX:]
    skipped = len(operations) - len(shown)
    lines = ["operations on this key by invocation, up to the failure"
             + (f" (first {skipped} not shown)" if skipped else "") + ":"]
    for index, operation in shown:
        returned = "pending" if operation.pending else repr(operation.returned)
        lines.append(f"  #{index} client {operation.client!r}: {operation.describe()}"
                     f"  [{operation.invoked!r}, {returned}]")
    return lines
