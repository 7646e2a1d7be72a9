"""Failure handling around external dependencies: a `Dependency` resource carries its own retry and
breaker settings, `call_dependency` applies them (and tells the `Notifier`, defs/alerts.py).
See docs/retries_and_breaker.md and docs/alerts.md."""

import dataclasses
import inspect
import pathlib
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import dagster as dg
from pydantic import Field

from pipeline_patterns.defs.alerts import Notifier
from pipeline_patterns.lib.backoff import BackoffPolicy, is_retryable
from pipeline_patterns.lib.breaker import BreakerStatus, CircuitBreaker, CircuitOpenError, is_postgres

T = TypeVar("T")
_BACKOFF = BackoffPolicy()
_BREAKER_DEFAULTS = {
    name: p.default for name, p in inspect.signature(CircuitBreaker).parameters.items() if p.default is not p.empty
}


class RetrySettings(dg.Config):
    """Capped exponential backoff for one dependency: retry n waits
    min(max_delay, base_delay * backoff_factor^(n-1)) seconds, times a jitter factor."""

    base_delay: float = Field(default=_BACKOFF.base_delay, description="Seconds before the first retry.")
    backoff_factor: float = Field(
        default=_BACKOFF.backoff_factor, description="Each retry waits this many times longer."
    )
    max_delay: float = Field(default=_BACKOFF.max_delay, description="The cap on any one wait, in seconds.")
    jitter: float = Field(
        default=_BACKOFF.jitter, description="Each wait is spread by up to this fraction, up or down."
    )
    max_retries: int = Field(default=_BACKOFF.max_retries, description="Retries before the step fails.")

    def policy(self) -> BackoffPolicy:
        return BackoffPolicy(**{f.name: getattr(self, f.name) for f in dataclasses.fields(BackoffPolicy)})


class Breaker(dg.Config):
    """A circuit breaker around one dependency: opens after `failure_threshold` consecutive
    failures, fails calls fast while open, admits one trial call after `recovery_timeout`
    seconds. Its state lives in `store`, shared by every process and run."""

    store: str = Field(
        description=(
            "Where every breaker's state lives: a SQLite file (one machine), or a postgresql:// URL "
            "(one breaker seen by every machine; e.g. the Dagster instance's database)."
        )
    )
    failure_threshold: int = Field(
        default=_BREAKER_DEFAULTS["failure_threshold"], description="Consecutive failures that open the breaker."
    )
    recovery_timeout: float = Field(
        default=_BREAKER_DEFAULTS["recovery_timeout"],
        description="Seconds the breaker stays open before one trial call.",
    )


class Dependency(dg.ConfigurableResource):
    """An external system, called through its own circuit breaker with its own capped-backoff
    retries (`call_dependency`). Subclasses name the breaker (`breaker_name`)."""

    breaker_name: ClassVar[str]
    breaker: Breaker = Field(description="The dependency's circuit breaker.")
    retries: RetrySettings = Field(default=RetrySettings(), description="Step retries after a failed call.")

    def circuit(self, on_change: Callable[[BreakerStatus, BreakerStatus], None] | None = None) -> CircuitBreaker:
        if not is_postgres(self.breaker.store):
            pathlib.Path(self.breaker.store).parent.mkdir(parents=True, exist_ok=True)
        return CircuitBreaker(
            self.breaker_name,
            self.breaker.store,
            failure_threshold=self.breaker.failure_threshold,
            recovery_timeout=self.breaker.recovery_timeout,
            on_change=on_change,
            # A data or credentials error says nothing about the dependency's health.
            should_count=is_retryable,
        )

    def breaker_metadata(self) -> dict[str, Any]:
        status = self.circuit().status()
        return {
            f"breaker/{k}": v
            for k, v in dataclasses.asdict(status).items()
            if k in ("name", "state", "consecutive_failures")
        }


def call_dependency(
    context: dg.AssetExecutionContext,
    what: str,
    fn: Callable[[], T],
    *,
    dependency: Dependency,
    notifier: Notifier,
) -> T:
    """Call `fn` through the dependency's breaker; on failure, retry the step with capped backoff or fail."""
    policy = dependency.retries.policy()
    retry = context.retry_number + 1
    asset = context.asset_key.to_user_string() if len(context.assets_def.keys) == 1 else context.op_def.name

    def on_change(old: BreakerStatus, new: BreakerStatus) -> None:
        context.log.warning(
            f"circuit breaker {new.name}: {old.state} -> {new.state} ({new.consecutive_failures} failures)"
        )
        notifier.notify("breaker_state_changed", breaker=new.name, old=old.state, new=new.state, asset=asset)
        # The asset page shows the breaker as it is now, also when the step then fails and
        # records no materialization (whose metadata would still say "closed").
        for key in context.selected_asset_keys:
            context.log_event(
                dg.AssetObservation(
                    asset_key=key,
                    metadata={
                        "breaker/name": new.name,
                        "breaker/state": new.state,
                        "breaker/consecutive_failures": new.consecutive_failures,
                    },
                )
            )

    try:
        return dependency.circuit(on_change).call(fn)
    except CircuitOpenError as error:
        if retry > policy.max_retries:
            notifier.notify("final_failure", asset=asset, what=what, error=str(error), retries=policy.max_retries)
            raise dg.Failure(
                description=f"{what}: {error}; gave up after {policy.max_retries} retries", allow_retries=False
            ) from error
        wait = max(error.retry_after, 0.1)
        context.log.warning(f"{what}: {error}; retrying the step in {wait:.1f} s ({retry}/{policy.max_retries})")
        notifier.notify("retry", asset=asset, what=what, error=str(error), retry=retry, seconds_to_wait=wait)
        raise dg.RetryRequested(max_retries=policy.max_retries, seconds_to_wait=wait) from error
    except Exception as error:
        if not is_retryable(error):
            notifier.notify("final_failure", asset=asset, what=what, error=repr(error), retryable=False)
            raise dg.Failure(
                description=f"{what} failed with a non-retryable error: {error!r}", allow_retries=False
            ) from error
        if retry > policy.max_retries:
            notifier.notify("final_failure", asset=asset, what=what, error=str(error), retries=policy.max_retries)
            raise dg.Failure(
                description=f"{what} failed: {error}; gave up after {policy.max_retries} retries", allow_retries=False
            ) from error
        wait = policy.delay(retry)
        schedule = ", ".join(f"{nominal:.1f}" for nominal, _, _ in policy.schedule())
        context.log.warning(
            f"{what} failed ({error}); retry {retry}/{policy.max_retries} in {wait:.1f} s "
            f"(nominal schedule s: {schedule}; cap {policy.max_delay} s, jitter ±{policy.jitter:.0%})"
        )
        notifier.notify("retry", asset=asset, what=what, error=str(error), retry=retry, seconds_to_wait=round(wait, 3))
        raise dg.RetryRequested(max_retries=policy.max_retries, seconds_to_wait=wait) from error
