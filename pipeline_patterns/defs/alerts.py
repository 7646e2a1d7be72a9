"""Alerts: the `notifier` resource (a JSON-lines file, a webhook, Slack) and the `notify_run_failure`
sensor; the delivery itself is lib/alerts.py. See docs/alerts.md."""

import datetime as dt
import json
import pathlib
import urllib.error

import dagster as dg
from dagster_slack import SlackResource
from pydantic import Field
from slack_sdk.errors import SlackClientError

from pipeline_patterns.lib import alerts
from pipeline_patterns.lib.backoff import BackoffPolicy

WEBHOOK_RETRIES = 3  # a webhook POST that failed transiently is retried this often, then recorded as undelivered


class Notifier(dg.ConfigurableResource):
    """Where alerts go: always one JSON line per event in `path`; also a JSON POST to
    `webhook_url` and a Slack message (dagster-slack) when those are configured."""

    path: str = Field(
        description="The JSON-lines file events are appended to (default <data dir>/notifications.jsonl)."
    )
    webhook_url: str = Field(default="", description="POST every event as JSON here; empty: off.")
    webhook_base_delay: float = Field(
        default=0.5, description="Seconds before the first webhook retry (doubling, cap 10 s)."
    )
    slack_token: str = Field(
        default="", description="Slack bot token, as dg.EnvVar('SLACK_BOT_TOKEN'); empty: Slack off."
    )
    slack_channel: str = Field(default="#data-alerts", description="The Slack channel events are posted to.")
    slack_api_url: str = Field(default="https://slack.com/api/", description="The Slack Web API base URL.")

    def notify(self, event: str, **fields: object) -> None:
        record = {"at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "event": event, **fields}
        self._append(record)
        if self.webhook_url:
            policy = BackoffPolicy(base_delay=self.webhook_base_delay, max_delay=10.0, max_retries=WEBHOOK_RETRIES)
            attempts, error = alerts.post_json(self.webhook_url, record, policy)
            if error:
                self._append(
                    {
                        **record,
                        "event": "alert_undelivered",
                        "channel": "webhook",
                        "of": event,
                        "attempts": attempts,
                        "error": error,
                    }
                )
        if self.slack_token:
            client = SlackResource(token=self.slack_token).get_client()
            client.base_url = self.slack_api_url
            try:
                client.chat_postMessage(channel=self.slack_channel, text=alerts.slack_text(record))
            except (SlackClientError, urllib.error.URLError, TimeoutError, ConnectionError) as error:
                self._append(
                    {**record, "event": "alert_undelivered", "channel": "slack", "of": event, "error": repr(error)}
                )

    def _append(self, record: dict[str, object]) -> None:
        target = pathlib.Path(self.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("a") as handle:
            handle.write(json.dumps(record, default=str) + "\n")


@dg.run_failure_sensor(
    description="Sends every failed run to the notifier (final failures, held days).",
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def notify_run_failure(context: dg.RunFailureSensorContext, notifier: Notifier) -> None:
    notifier.notify(
        "run_failed",
        run_id=context.dagster_run.run_id,
        job=context.dagster_run.job_name,
        error=context.failure_event.message,
    )
