"""The breaker opens after exactly N failures, fails fast while open, admits one trial (across
processes), and shares its state through the SQLite store."""

import multiprocessing
import time

import pytest

from pipeline_patterns.lib.backoff import is_retryable
from pipeline_patterns.lib.breaker import (
    BreakerStatus,
    BreakerStoreError,
    CircuitBreaker,
    CircuitOpenError,
    Permit,
    all_statuses,
)

NAME = "orders_source"


class FakeClock:
    """A clock the test advances by hand: no sleeping."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeDependency:
    """Counts its calls; raises `error` when set, else returns the rows."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.calls = 0
        self.error = error

    def __call__(self) -> str:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return "rows"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path):
    return tmp_path / "breakers.sqlite"


def make_breaker(store, clock, **settings) -> CircuitBreaker:
    return CircuitBreaker(NAME, store, **{"failure_threshold": 3, "recovery_timeout": 30.0, "clock": clock, **settings})


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.failure_threshold):
        breaker.record_failure(breaker.acquire())
    assert breaker.status().state == "open"


def test_breaker_opens_after_exactly_failure_threshold_failures(store, clock):
    breaker = make_breaker(store, clock)
    down = FakeDependency(ConnectionError("feed down"))
    for failures in (1, 2):
        with pytest.raises(ConnectionError):
            breaker.call(down)
        assert (breaker.status().state, breaker.status().consecutive_failures) == ("closed", failures)
    with pytest.raises(ConnectionError):
        breaker.call(down)
    status = breaker.status()
    assert (status.state, status.consecutive_failures, status.opened_at, status.retry_after) == (
        "open",
        3,
        clock.now,
        30.0,
    )


def test_open_breaker_fails_fast_without_calling_the_dependency(store, clock):
    breaker = make_breaker(store, clock)
    trip(breaker)
    dependency = FakeDependency()
    clock.advance(10)
    with pytest.raises(CircuitOpenError) as first:
        breaker.call(dependency)
    assert str(first.value) == (
        "circuit breaker 'orders_source' is open after 3 consecutive failures: not calling the dependency; retry in 20.0 s"
    )
    clock.advance(15)
    with pytest.raises(CircuitOpenError) as second:
        breaker.call(dependency)
    assert dependency.calls == 0
    assert (first.value.name, first.value.retry_after, second.value.retry_after) == (NAME, 20.0, 5.0)


def test_after_recovery_timeout_exactly_one_trial_goes_through_and_its_success_closes_the_breaker(store, clock):
    breaker = make_breaker(store, clock)
    trip(breaker)
    clock.advance(30)
    trial = breaker.acquire()
    assert trial.is_trial
    with pytest.raises(
        CircuitOpenError, match="half-open and a trial call is already testing the dependency"
    ) as refused:
        breaker.acquire()
    assert 0 < refused.value.retry_after <= 30
    assert (breaker.status().state, breaker.status().trial_in_flight) == ("half_open", True)
    breaker.record_success(trial)
    status = breaker.status()
    assert (status.state, status.consecutive_failures, status.opened_at, status.trial_in_flight) == (
        "closed",
        0,
        None,
        False,
    )
    assert not breaker.acquire().is_trial


def test_a_failed_trial_reopens_the_breaker_with_a_fresh_recovery_timeout(store, clock):
    breaker = make_breaker(store, clock)
    trip(breaker)
    clock.advance(31)
    down = FakeDependency(ConnectionError("still down"))
    with pytest.raises(ConnectionError):
        breaker.call(down)
    status = breaker.status()
    assert (status.state, status.opened_at, status.retry_after, status.trial_in_flight) == (
        "open",
        clock.now,
        30.0,
        False,
    )
    clock.advance(29)
    with pytest.raises(CircuitOpenError):
        breaker.call(down)
    assert down.calls == 1
    clock.advance(1)
    assert breaker.acquire().is_trial


def test_a_success_in_closed_state_resets_the_consecutive_failure_count(store, clock):
    breaker = make_breaker(store, clock)
    for _ in range(2):
        breaker.record_failure(breaker.acquire())
    assert breaker.call(FakeDependency()) == "rows"
    assert breaker.status().consecutive_failures == 0
    for _ in range(2):
        breaker.record_failure(breaker.acquire())
    assert breaker.status().state == "closed"  # 2 + 2 failures, but never 3 in a row
    breaker.record_failure(breaker.acquire())
    assert breaker.status().state == "open"


def _slow_clock() -> float:
    # Read between loading the state and writing it: holds each worker inside that window long
    # enough that, without the store's lock, every worker would see "open" and take the trial.
    time.sleep(0.1)
    return time.time()


def _acquire_together(store, barrier, results) -> None:
    breaker = CircuitBreaker(NAME, store, recovery_timeout=30.0, clock=_slow_clock)
    barrier.wait(30)
    try:
        results.put(breaker.acquire())
    except Exception as error:  # whatever happened, the parent asserts on it
        results.put(error)


def test_half_open_admits_exactly_one_trial_across_processes(store):
    # Opened a minute ago on the real clock: the recovery timeout has passed for every process.
    opener = CircuitBreaker(NAME, store, failure_threshold=1, recovery_timeout=30.0, clock=lambda: time.time() - 60)
    trip(opener)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    workers = [context.Process(target=_acquire_together, args=(str(store), barrier, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(30)
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
    permits = [o for o in outcomes if isinstance(o, Permit)]
    refusals = [o for o in outcomes if isinstance(o, CircuitOpenError)]
    assert len(permits) == 1 and permits[0].is_trial
    assert len(refusals) == 3 and all("half-open" in str(r) and r.retry_after > 0 for r in refusals)
    assert (opener.status().state, opener.status().trial_in_flight) == ("half_open", True)


def _fail(store, times: int) -> None:
    breaker = CircuitBreaker(NAME, store, failure_threshold=3)
    for _ in range(times):
        breaker.record_failure(breaker.acquire())


def test_state_is_shared_between_processes(store):
    breaker = CircuitBreaker(NAME, store, failure_threshold=3)
    breaker.record_failure(breaker.acquire())
    worker = multiprocessing.get_context("spawn").Process(target=_fail, args=(str(store), 2))
    worker.start()
    worker.join(60)
    assert worker.exitcode == 0
    assert (breaker.status().state, breaker.status().consecutive_failures) == ("open", 3)
    with pytest.raises(CircuitOpenError):
        breaker.acquire()


def test_an_abandoned_trial_lets_a_new_trial_through_after_trial_timeout(store, clock):
    breaker = make_breaker(store, clock, trial_timeout=60.0)
    trip(breaker)
    clock.advance(30)
    abandoned = breaker.acquire()
    clock.advance(59)
    with pytest.raises(CircuitOpenError) as refused:
        breaker.acquire()
    assert refused.value.retry_after == pytest.approx(1.0)  # what is left of the trial's lease
    clock.advance(1)
    status = breaker.status()
    assert (status.state, status.trial_in_flight, status.retry_after) == ("half_open", False, 0.0)
    retried = breaker.acquire()
    assert retried.is_trial and retried.trial_id != abandoned.trial_id
    breaker.record_success(abandoned)  # late news from the superseded trial decides nothing
    assert breaker.status().state == "half_open"
    breaker.record_success(retried)
    assert breaker.status().state == "closed"


def test_reset_closes_an_open_breaker(store, clock):
    breaker = make_breaker(store, clock)
    trip(breaker)
    status = breaker.reset()
    assert (status.state, status.consecutive_failures, status.opened_at, status.retry_after) == ("closed", 0, None, 0.0)
    dependency = FakeDependency()
    assert breaker.call(dependency) == "rows" and dependency.calls == 1


def test_on_change_reports_each_transition_after_it_is_committed(store, clock):
    changes: list[tuple[BreakerStatus, BreakerStatus, str]] = []
    # Reading the state from inside the callback proves the change is committed (and does not deadlock).
    breaker = make_breaker(store, clock, on_change=lambda old, new: changes.append((old, new, breaker.status().state)))
    down, up = FakeDependency(ConnectionError("down")), FakeDependency()
    for _ in range(3):
        with pytest.raises(ConnectionError):
            breaker.call(down)
    opened_at = clock.now
    clock.advance(30)
    with pytest.raises(ConnectionError):
        breaker.call(down)
    clock.advance(30)
    breaker.call(up)
    trip(breaker)
    breaker.reset()
    assert [(old.state, new.state) for old, new, _ in changes] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
        ("closed", "open"),
        ("open", "closed"),
    ]
    assert [committed for _, new, committed in changes] == [new.state for _, new, _ in changes]
    first_old, first_new, _ = changes[0]
    assert (first_old.consecutive_failures, first_new.consecutive_failures, first_new.opened_at) == (2, 3, opened_at)
    assert changes[1][1].trial_in_flight and changes[2][1].opened_at == opened_at + 30


def test_errors_should_count_rejects_neither_trip_the_breaker_nor_hold_the_trial(store, clock):
    breaker = make_breaker(store, clock, should_count=is_retryable)
    bad_data = FakeDependency(ValueError("column 'amount' is not a number"))
    for _ in range(5):
        with pytest.raises(ValueError):
            breaker.call(bad_data)
    assert (breaker.status().state, breaker.status().consecutive_failures) == ("closed", 0)
    trip(breaker)
    clock.advance(30)
    with pytest.raises(ValueError):
        breaker.call(bad_data)  # the trial ends without a verdict
    assert (breaker.status().state, breaker.status().trial_in_flight) == ("half_open", False)
    assert breaker.acquire().is_trial  # the next caller tries at once, not after trial_timeout


def test_by_default_every_exception_counts_but_an_interrupt_does_not(store, clock):
    breaker = make_breaker(store, clock)
    with pytest.raises(KeyboardInterrupt):
        breaker.call(FakeDependency(KeyboardInterrupt()))
    assert breaker.status().consecutive_failures == 0
    with pytest.raises(LookupError):
        breaker.call(FakeDependency(LookupError("no such order")))
    assert breaker.status().consecutive_failures == 1


def test_call_passes_arguments_and_results_through_and_reraises_the_dependencys_error_unchanged(store, clock):
    breaker = make_breaker(store, clock)
    assert (
        breaker.call(lambda day, *, region: f"{region}/{day}", "2024-01-02", region="eu-west") == "eu-west/2024-01-02"
    )
    error = ConnectionResetError("reset by peer")
    with pytest.raises(ConnectionResetError) as raised:
        breaker.call(FakeDependency(error))
    assert raised.value is error


def test_all_statuses_lists_every_breaker_in_the_store(store, clock):
    assert all_statuses(store) == []
    trip(make_breaker(store, clock))
    CircuitBreaker("fx_rates", store, clock=clock).status()
    clock.advance(10)
    statuses = all_statuses(store, clock=clock)
    assert [(s.name, s.state, s.retry_after) for s in statuses] == [("fx_rates", "closed", 0.0), (NAME, "open", 20.0)]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"name": ""}, "non-empty name"),
        ({"failure_threshold": 0}, "failure_threshold must be >= 1"),
        ({"recovery_timeout": -1.0}, "recovery_timeout must be >= 0"),
        ({"trial_timeout": 0.0}, "trial_timeout must be > 0"),
    ],
)
def test_invalid_breaker_settings_are_refused(store, settings, message):
    with pytest.raises(ValueError, match=message):
        CircuitBreaker(**{"name": NAME, "store": store, **settings})


def test_a_permit_is_only_accepted_by_the_breaker_that_issued_it(store, clock):
    permit = CircuitBreaker("fx_rates", store, clock=clock).acquire()
    with pytest.raises(ValueError, match="record a call's result on the breaker that admitted it"):
        make_breaker(store, clock).record_failure(permit)


def test_an_unusable_store_fails_with_what_to_check(tmp_path, clock):
    breaker = make_breaker(tmp_path / "missing" / "breakers.sqlite", clock)
    with pytest.raises(BreakerStoreError, match="check that its directory exists"):
        breaker.acquire()
