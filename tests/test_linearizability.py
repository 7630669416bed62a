"""Linearizability checker: hand-written verdicts, a simulated atomic register, planted bugs."""
import ast
import dataclasses
import itertools
import pathlib
import random
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from simulations import linearizability
from simulations.linearizability import History, Operation, Verdict, check

NEVER_WRITTEN = "never-written"


def op(client, kind, key, args, invoked, returned=None, result=None):
    return Operation(client, kind, key, tuple(args), invoked, returned, result)


def put(client, key, value, invoked, returned=None):
    return op(client, "put", key, (value,), invoked, returned)


def get(client, key, invoked, returned=None, result=None):
    return op(client, "get", key, (), invoked, returned, result)


def cas(client, key, expected, new, invoked, returned=None, result=None):
    return op(client, "cas", key, (expected, new), invoked, returned, result)


def assert_linearizable(history):
    result = check(history)
    assert result.ok, result.explain()
    assert result.verdict is Verdict.LINEARIZABLE and result.key is None and result.reports == ()


def assert_violation(history, key):
    result = check(history)
    assert result.verdict is Verdict.NOT_LINEARIZABLE, result.explain()
    assert not result.ok
    assert result.key == key
    return result


# --- linearizable by hand ------------------------------------------------------------------------

def test_empty_history_and_initial_none():
    assert_linearizable([])
    assert_linearizable([get("a", "x", 0, 1, None)])


def test_sequential_history():
    assert_linearizable([
        put("a", "x", 1, 0, 1), get("a", "x", 2, 3, 1),
        put("b", "x", 2, 4, 5), get("c", "x", 6, 7, 2),
        cas("a", "x", 2, 3, 8, 9, True), cas("b", "x", 2, 4, 10, 11, False), get("c", "x", 12, 13, 3),
    ])


@pytest.mark.parametrize("seen", [1, 2])
def test_concurrent_puts_then_a_get_seeing_either(seen):
    assert_linearizable([put("a", "x", 1, 0, 10), put("b", "x", 2, 1, 9), get("c", "x", 11, 12, seen)])


def test_reads_concurrent_with_puts_may_flip_between_values():
    assert_linearizable([
        put("a", "x", 1, 0, 10), put("b", "x", 2, 0, 10),
        get("c", "x", 1, 2, 1), get("c", "x", 3, 4, 2), get("d", "x", 5, 6, 2), get("c", "x", 11, 12, 2),
    ])


def test_pending_put_that_took_effect():
    assert_linearizable([put("a", "x", 1, 0), get("b", "x", 5, 6, 1), get("b", "x", 7, 8, 1)])


def test_pending_put_that_did_not_take_effect_yet_or_ever():
    assert_linearizable([put("a", "x", 1, 0), get("b", "x", 5, 6, None)])
    assert_linearizable([put("a", "x", 1, 0), get("b", "x", 5, 6, None), get("b", "x", 7, 8, 1)])


def test_pending_put_may_take_effect_long_after_the_client_moved_on():
    assert_linearizable([
        put("a", "x", 1, 0), put("a", "x", 2, 5, 6),  # client a timed out, then wrote 2
        get("b", "x", 7, 8, 2), get("b", "x", 9, 10, 1),  # the lost put lands last
    ])


def test_pending_cas_and_pending_get():
    assert_linearizable([cas("a", "x", None, 5, 0), get("b", "x", 3, 4, 5), get("c", "x", 0)])
    assert_linearizable([cas("a", "x", None, 5, 0), get("b", "x", 3, 4, None)])


def test_many_pending_writes_of_unread_values_cost_little():
    history = [put(f"crashed{value}", "x", ("lost", value), value) for value in range(300)]
    history += [put("a", "x", 1, 0, 1000), get("b", "x", 1001, 1002, 1)]
    history += [put("a", "x", 2, 1003 + 2 * step, 1004 + 2 * step) for step in range(300)]
    result = check(history)
    assert result.ok and result.steps < 5000, result.explain()


def test_a_pending_write_of_an_unread_value_can_explain_a_failed_cas():
    history = [put("a", "x", 1, 0, 1), cas("b", "x", 1, 2, 3, 4, False)]
    assert_violation(history, "x")
    assert_linearizable(history + [put("c", "x", 7, 2)])


def test_pending_writes_of_the_same_value_can_each_take_effect_once():
    history = [get("c", "x", 1, 2, 1), put("c", "x", 2, 3, 4), get("c", "x", 5, 6, 2), get("c", "x", 7, 8, 1)]
    assert_violation([put("a", "x", 1, 0)] + history, "x")
    assert_linearizable([put("a", "x", 1, 0), put("b", "x", 1, 0)] + history)
    assert_linearizable([put("a", "x", 1, 0), cas("b", "x", 2, 1, 0)] + history)


def test_equal_times_count_as_concurrent():
    assert_linearizable([put("a", "x", 1, 0, 5), get("b", "x", 5, 6, None)])


def test_tuple_times_break_ties_by_event_order():
    history = [put("a", "x", 1, (0, 0), (5, 0)), get("b", "x", (5, 1), (6, 0), None)]
    assert_violation(history, "x")


# --- not linearizable by hand --------------------------------------------------------------------

def test_stale_read_after_completed_put():
    result = assert_violation([put("a", "x", 1, 0, 1), put("a", "x", 2, 2, 3), get("b", "x", 4, 5, 1)], "x")
    report, = result.reports
    assert report.blocked_by == 2 and report.state_after_prefix == 2
    assert report.longest_prefix == (0, 1)
    text = result.explain()
    assert "register value after that prefix: 2" in text
    assert "no way found to linearize #2 get() -> 1 (client 'b', returned at 5)" in text


def test_read_of_a_value_never_written():
    assert_violation([put("a", "x", 1, 0, 10), get("b", "x", 1, 2, 7)], "x")
    assert_violation([get("b", "x", 1, 2, 0)], "x")


def test_new_then_old_reads_by_different_clients():
    assert_violation([
        put("a", "x", 1, 0, 1), put("a", "x", 2, 2, 20),
        get("b", "x", 3, 4, 2), get("c", "x", 5, 6, 1),
    ], "x")


def test_read_of_pending_value_then_the_old_one():
    assert_violation([put("a", "x", 1, 0), get("b", "x", 5, 6, 1), get("b", "x", 7, 8, None)], "x")


def test_inconsistent_cas_results():
    assert_violation([put("a", "x", 1, 0, 1), cas("b", "x", 1, 2, 2, 3, False)], "x")
    assert_violation([put("a", "x", 1, 0, 1), cas("b", "x", 0, 2, 2, 3, True)], "x")
    assert_violation([cas("a", "x", None, 1, 0, 5, True), cas("b", "x", None, 2, 0, 5, True)], "x")
    assert_violation([cas("a", "x", None, 1, 0, 1, True), get("b", "x", 2, 3, None)], "x")


def test_values_are_compared_by_type():
    assert_violation([put("a", "x", 1, 0, 1), get("b", "x", 2, 3, True)], "x")
    assert_violation([put("a", "x", b"v", 0, 1), get("b", "x", 2, 3, "v")], "x")


def test_the_violating_key_is_reported_among_good_ones():
    history = [
        put("a", "x", 1, 0, 1), put("a", "y", 1, 2, 3), put("b", "z", 9, 0, 10),
        get("b", "x", 4, 5, 1), put("a", "y", 2, 6, 7), get("c", "y", 8, 9, 1), get("c", "z", 11, 12, 9),
    ]
    result = assert_violation(history, "y")
    assert result.keys_checked == 3 and [report.key for report in result.reports] == ["y"]
    text = result.explain()
    assert "key 'y'" in text and "#5 client 'c': get() -> 1" in text and "key 'x'" not in text


def test_every_violating_key_gets_a_report_in_first_appearance_order():
    history = [get("a", "q", 0, 1, 1), get("a", "p", 2, 3, 1), put("a", "r", 1, 4, 5)]
    result = assert_violation(history, "q")
    assert [report.key for report in result.reports] == ["q", "p"]


# --- a simulated atomic register -----------------------------------------------------------------

KINDS = ["put", "get", "cas"]
KEYS = ["x", "y"]
FATES = ["ok", "ok", "ok", "ok", "lost", "dropped"]  # lost: took effect, no reply; dropped: neither

plan_entries = st.tuples(
    st.sampled_from(KINDS), st.sampled_from(KEYS), st.integers(0, 3), st.integers(0, 3),
    st.integers(0, 4), st.integers(0, 4), st.integers(0, 4), st.sampled_from(FATES))
plans = st.lists(st.lists(plan_entries, max_size=6), min_size=1, max_size=4)


def simulate_register(client_plans):
    """Run each client's ops against atomic registers, each taking effect at an instant in its
    interval; a lost op takes effect up to well after its client gave up on it."""
    operations, effects = [], []
    for client, plan in enumerate(client_plans):
        now = 0
        for kind, key, value, new, gap, to_effect, to_return, fate in plan:
            invoked = now + gap
            effect_at = invoked + to_effect + (3 * to_return if fate == "lost" else 0)
            returned = invoked + to_effect + to_return
            args = {"put": (value,), "get": (), "cas": (value, new)}[kind]
            operations.append([client, kind, key, args, invoked, returned, fate])
            if fate != "dropped":
                effects.append((effect_at, client, len(operations) - 1))
            now = returned
    registers = {}
    for _, _, index in sorted(effects):
        entry = operations[index]
        entry.append(_apply(registers, entry[1], entry[2], entry[3]))
    return [_as_operation(entry) for entry in operations]


def _apply(registers, kind, key, args):
    current = registers.get(key)
    if kind == "put":
        registers[key] = args[0]
        return None
    if kind == "get":
        return current
    if current == args[0]:
        registers[key] = args[1]
        return True
    return False


def _as_operation(entry):
    client, kind, key, args, invoked, returned, fate = entry[:7]
    if fate != "ok":
        return Operation(client, kind, key, args, invoked)
    return Operation(client, kind, key, args, invoked, returned, entry[7])


@settings(max_examples=300, deadline=None)
@given(plans)
def test_simulated_atomic_register_is_linearizable(client_plans):
    assert_linearizable(simulate_register(client_plans))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(plans, st.integers(0, 1000))
def test_a_read_of_a_never_written_value_is_detected(client_plans, choice):
    history = simulate_register(client_plans)
    gets = [index for index, operation in enumerate(history)
            if operation.kind == "get" and not operation.pending]
    assume(gets)
    index = gets[choice % len(gets)]
    mutated = list(history)
    mutated[index] = dataclasses.replace(history[index], result=NEVER_WRITTEN)
    result = assert_violation(mutated, history[index].key)
    assert result.reports[0].blocked_by is not None


@settings(max_examples=100, deadline=None)
@given(plans, st.randoms(use_true_random=False))
def test_verdict_and_report_do_not_depend_on_history_order(client_plans, rng):
    history = simulate_register(client_plans)
    history.append(get("z", "x", 100, 101, NEVER_WRITTEN))
    shuffled = list(history)
    rng.shuffle(shuffled)
    first, second = check(history), check(shuffled)
    assert first.verdict == second.verdict == Verdict.NOT_LINEARIZABLE
    assert first.key == second.key == "x"


def random_plans(seed, clients, ops_per_client):
    rng = random.Random(seed)
    return [[(rng.choice(KINDS), f"k{rng.randrange(10)}", rng.randrange(4), rng.randrange(4),
              rng.randrange(5), rng.randrange(5), rng.randrange(5), rng.choice(FATES[:5]))
             for _ in range(ops_per_client)] for _ in range(clients)]


def test_a_few_thousand_operations_check_quickly():
    history = simulate_register(random_plans(seed=7, clients=8, ops_per_client=400))
    assert len(history) == 3200
    result = check(history)
    assert result.ok, result.explain()
    assert result.keys_checked == 10
    assert result.steps < 10 * len(history)  # near-linear: barely any backtracking


# --- against a brute-force reference --------------------------------------------------------------

def brute_force_linearizable(history):
    """Try every subset of the pending operations with every order of everything taken."""
    operations = [operation for operation in history if not (operation.kind == "get" and operation.pending)]
    completed = [operation for operation in operations if not operation.pending]
    pending = [operation for operation in operations if operation.pending]
    for taken in range(1 << len(pending)):
        chosen = completed + [operation for bit, operation in enumerate(pending) if taken >> bit & 1]
        if any(_legal(order) for order in itertools.permutations(chosen)):
            return True
    return False


def _legal(order):
    for position, later in enumerate(order):
        if any(later.returned is not None and later.returned < earlier.invoked
               for earlier in order[:position]):
            return False
    registers = {}
    for operation in order:
        result = _apply(registers, operation.kind, operation.key, operation.args)
        if not operation.pending and operation.kind != "put" and result != operation.result:
            return False
    return True


ARBITRARY_KEYS = ["x", "x", "x", "y"]  # mostly one key, so that each key's history is not tiny


@st.composite
def arbitrary_histories(draw):
    """Small histories with arbitrary results: linearizable or not, about half and half."""
    history = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(KINDS))
        args = {"put": (draw(st.integers(0, 2)),), "get": (),
                "cas": (draw(st.sampled_from([None, 0, 1, 2])), draw(st.integers(0, 2)))}[kind]
        invoked = draw(st.integers(0, 6))
        if draw(st.integers(0, 4)) == 0:
            history.append(Operation(draw(st.integers(0, 3)), kind, draw(st.sampled_from(ARBITRARY_KEYS)), args, invoked))
            continue
        result = {"put": None, "get": draw(st.sampled_from([None, 0, 1, 2])), "cas": draw(st.booleans())}[kind]
        history.append(Operation(draw(st.integers(0, 3)), kind, draw(st.sampled_from(ARBITRARY_KEYS)), args,
                                 invoked, invoked + draw(st.integers(0, 4)), result))
    return history


@settings(max_examples=600, deadline=None)
@given(arbitrary_histories())
def test_verdict_matches_brute_force(history):
    result = check(history)
    assert result.ok == brute_force_linearizable(history), result.explain()


# --- the work bound ------------------------------------------------------------------------------

def adversarial_history(puts):
    """Concurrent puts of distinct values, then a read of none of them: refuting it means trying
    every subset of puts as the ones linearized so far."""
    history = [put(f"c{value}", "x", value, 0, 10) for value in range(puts)]
    return history + [get("reader", "x", 11, 12, NEVER_WRITTEN)]


def test_tiny_step_budget_gives_unknown_not_a_guess():
    result = check(adversarial_history(16), steps_per_key_max=1000)
    assert result.verdict is Verdict.UNKNOWN and not result.ok and result.key == "x"
    assert result.steps == 1000 and result.reports[0].steps == 1000
    assert "unknown" in result.explain()


def test_unknown_on_one_key_is_outranked_by_a_violation_on_another():
    history = adversarial_history(16) + [get("d", "y", 0, 1, 5)]
    result = check(history, steps_per_key_max=1000)
    assert result.verdict is Verdict.NOT_LINEARIZABLE and result.key == "y"
    assert [report.verdict for report in result.reports] == [Verdict.UNKNOWN, Verdict.NOT_LINEARIZABLE]


def test_the_same_history_is_refuted_with_enough_budget():
    result = check(adversarial_history(8))
    assert result.verdict is Verdict.NOT_LINEARIZABLE and result.key == "x"


def test_step_budget_must_be_positive():
    with pytest.raises(ValueError):
        check([], steps_per_key_max=0)


# --- the recorder and input checks ---------------------------------------------------------------

def test_history_recorder():
    history = History()
    first = history.invoke("a", "put", "x", [1], now=0)
    second = history.invoke("b", "get", "x", (), now=1)
    third = history.invoke("c", "cas", "x", (1, 2), now=1)
    history.complete(second, 1, now=3)
    history.complete(first, None, now=4)
    assert (first, second, third) == (0, 1, 2)
    operations = history.operations()
    assert operations[0] == Operation("a", "put", "x", (1,), 0, 4, None)
    assert operations[1] == Operation("b", "get", "x", (), 1, 3, 1)
    assert operations[2].pending and operations[2].result is None
    operations.clear()
    assert len(history.operations()) == 3
    assert_linearizable(history.operations())


def test_history_recorder_refuses_misuse():
    history = History()
    op_id = history.invoke("a", "put", "x", (1,), now=5)
    with pytest.raises(ValueError):
        history.invoke("a", "get", "x", (), now=4)
    with pytest.raises(ValueError):
        history.complete(op_id + 1, None, now=6)
    history.complete(op_id, None, now=6)
    with pytest.raises(ValueError):
        history.complete(op_id, None, now=7)
    with pytest.raises(ValueError):
        history.invoke("a", "delete", "x", (), now=8)


@pytest.mark.parametrize("fields", [
    dict(kind="delete", args=()),
    dict(kind="put", args=()),
    dict(kind="get", args=(1,)),
    dict(kind="cas", args=[1, 2]),
    dict(kind="put", args=(1,), returned=3, invoked=4),
    dict(kind="put", args=(1,), returned=5, result="error"),
    dict(kind="cas", args=(1, 2), returned=5, result=1),
    dict(kind="get", args=(), result=1),
])
def test_malformed_operations_are_refused(fields):
    base = dict(client="a", key="x", invoked=0, returned=None, result=None)
    with pytest.raises(ValueError):
        Operation(**{**base, **fields})


def test_unhashable_values_and_non_operations_are_refused():
    with pytest.raises(TypeError):
        check([put("a", "x", [1], 0, 1)])
    with pytest.raises(TypeError):
        check([("a", "put", "x", (1,), 0, 1, None)])


# --- determinism and purity ----------------------------------------------------------------------

def test_report_is_identical_under_different_hash_seeds():
    program = (
        "from simulations.linearizability import Operation as O, check\n"
        "h = [O(c, 'put', k, (v,), 0, 10) for c, k, v in [('a','x','1'), ('b','y','2'), ('c','x','3')]]\n"
        "h += [O('d', 'get', k, (), 11, 12, v) for k, v in [('x','3'), ('y','9'), ('x','1')]]\n"
        "print(check(h).explain())\n")
    root = pathlib.Path(__file__).resolve().parent.parent
    outputs = {subprocess.run([sys.executable, "-c", program], cwd=root, check=True, text=True,
                              capture_output=True, env={"PYTHONHASHSEED": seed}).stdout
               for seed in ("1", "2", "3")}
    assert len(outputs) == 1
    assert "key 'y'" in outputs.pop()


def test_module_is_pure():
    tree = ast.parse(pathlib.Path(linearizability.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "dataclasses", "enum", "typing"}
