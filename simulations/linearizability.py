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
invocations and responses are put in one doubly linked list ordered by time. The calls that come
before the first response in the list are the *minimal* operations: any of them may be linearized
next. The search takes the first minimal call whose model step agrees with the recorded result,
pushes (call, model state) on a stack, unlinks the call and its response, and starts again from
the head of the list. Reaching a response means its operation should already have been linearized:
the search backtracks (pops, relinks, tries the next minimal call). Lowe's memoization keeps every
configuration visited, (set of linearized operations as a bitset, model state), in a cache, and
never enters one twice: a configuration is either a dead end or was not yet finished, so entering
it again cannot help. That makes the search polynomial on the histories real systems produce,
although the problem is NP-complete in general; so each key has a step budget, and running out of
it gives the explicit verdict UNKNOWN rather than a hang or a guess.

The search succeeds when every completed operation is linearized (the pending ones that are left
can all go last). On failure the report names the key, lists its operations, and gives the longest
linearizable prefix the search found and the operation it could not place after that prefix.

Values are compared by type and value (1, 1.0 and True are three different values), and must be
hashable. Nothing here iterates over a set or dict in a way that depends on hash order.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Hashable, Sequence

PUT = "put"
GET = "get"
CAS = "cas"
ARGUMENT_COUNT_BY_KIND = {PUT: 1, GET: 0, CAS: 2}

STEPS_PER_KEY_MAX_DEFAULT = 2_000_000
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
    problem = _Problem(relevant)
    outcome = _search(problem, steps_max)
    return KeyReport(
        key=key,
        verdict=outcome.verdict,
        steps=outcome.steps,
        operations=tuple(by_invocation),
        longest_prefix=tuple(relevant[op][0] for op in outcome.prefix),
        state_after_prefix=problem.values[outcome.state],
        blocked_by=None if outcome.blocked is None else relevant[outcome.blocked][0],
    )


def _relevant(by_invocation: list) -> list:
    """Drop the pending operations that cannot change the verdict.

    A pending get constrains nothing. A pending write whose value nobody observes (no get read it,
    no cas expected it) can be dropped too when no cas failed on this key: taking it out of any
    linearization changes the register only while it held that unobserved value. With unique
    written values, as a simulator should use, this removes almost every pending write.
    """
    observed = set()
    for _, operation in by_invocation:
        if operation.kind == GET and not operation.pending:
            observed.add(_identity(operation.result, "value"))
        elif operation.kind == CAS:
            observed.add(_identity(operation.args[0], "value"))
    some_cas_failed = any(operation.kind == CAS and operation.result is False
                          for _, operation in by_invocation)

    def matters(operation: Operation) -> bool:
        if not operation.pending:
            return True
        if operation.kind == GET:
            return False
        return some_cas_failed or _identity(operation.args[-1], "value") in observed

    return [pair for pair in by_invocation if matters(pair[1])]


# Model step codes. Values are interned to small ints, so a model state is an int (None is 0).
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


class _Problem:
    """One key's operations as arrays: interned values, step codes, and the sorted event list."""

    def __init__(self, indexed: list) -> None:
        self.values: list[Any] = [None]
        self._value_ids: dict[tuple, int] = {(type(None), None): 0}
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
        self.earlier_twin = self._earlier_twins()
        self.return_node = [0] * len(indexed)
        for node in range(1, len(self.event_op)):
            if self.event_is_return[node]:
                self.return_node[self.event_op[node]] = node

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

    def _earlier_twins(self) -> list[int]:
        """For each pending op, the previous pending op with the same step (-1: none).

        Two such twins, once both invoked, are interchangeable forever (neither ever returns), so
        the search only uses them in invocation order: a pending op waits for its earlier twin.
        """
        last_by_step: dict[tuple[int, int, int], int] = {}
        earlier_twin = []
        for op, step in enumerate(zip(self.codes, self.a, self.b)):
            earlier_twin.append(-1 if self.completed[op] else last_by_step.get(step, -1))
            if not self.completed[op]:
                last_by_step[step] = op
        return earlier_twin

    def _intern(self, value: Any) -> int:
        identity = _identity(value, "value")
        if identity not in self._value_ids:
            self._value_ids[identity] = len(self.values)
            self.values.append(value)
        return self._value_ids[identity]


@dataclasses.dataclass
class _Outcome:
    verdict: Verdict
    steps: int
    prefix: list[int]  # ops in linearization order (the whole linearization on success)
    state: int
    blocked: int | None


def _search(problem: _Problem, steps_max: int) -> _Outcome:
    """WGL: depth-first over minimal calls, with (linearized bitset, state) memoization."""
    node_count = len(problem.event_op)
    next_node = [(node + 1) % node_count for node in range(node_count)]  # circular, sentinel 0
    prev_node = [(node - 1) % node_count for node in range(node_count)]
    event_op, is_return, return_node = problem.event_op, problem.event_is_return, problem.return_node
    codes, a, b, completed = problem.codes, problem.a, problem.b, problem.completed
    earlier_twin = problem.earlier_twin
    returns_left = sum(completed)
    stack: list[tuple[int, int]] = []  # (call node, state before the call)
    visited: set[tuple[int, int]] = set()
    deepest = _Outcome(Verdict.NOT_LINEARIZABLE, 0, [], 0, None)
    linearized, state, node, steps = 0, 0, next_node[0], 0
    while returns_left:  # a response is still in the list: a completed op is not linearized
        if steps == steps_max:
            if len(stack) > len(deepest.prefix):
                deepest.prefix, deepest.state, deepest.blocked = _ops_of(stack, event_op), state, None
            deepest.verdict = Verdict.UNKNOWN
            break
        steps += 1
        op = event_op[node]
        if is_return[node]:  # op should have been linearized by now: backtrack
            if len(stack) > len(deepest.prefix) or deepest.blocked is None:
                deepest.prefix, deepest.state, deepest.blocked = _ops_of(stack, event_op), state, op
            if not stack:
                break
            node, state = stack.pop()
            op = event_op[node]
            linearized ^= 1 << op
            returns_left += _relink(node, return_node[op] if completed[op] else 0, next_node, prev_node)
            node = next_node[node]
            continue
        twin = earlier_twin[op]
        state_after = _step(codes[op], a[op], b[op], state)
        if state_after != _INCONSISTENT and (twin < 0 or linearized >> twin & 1):
            configuration = (linearized | 1 << op, state_after)
            if configuration not in visited:
                visited.add(configuration)
                stack.append((node, state))
                linearized, state = configuration
                returns_left -= _unlink(node, return_node[op] if completed[op] else 0, next_node, prev_node)
                node = next_node[0]
                continue
        node = next_node[node]
    deepest.steps = steps
    if not returns_left:
        return _Outcome(Verdict.LINEARIZABLE, steps, _ops_of(stack, event_op), state, None)
    return deepest


def _ops_of(stack: list[tuple[int, int]], event_op: list[int]) -> list[int]:
    return [event_op[node] for node, _ in stack]


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
