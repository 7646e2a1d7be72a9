"""Alerts reach people where they read them: a JSON webhook (with retries) and Slack, besides
the JSON-lines file; a lost alert is recorded, never raised into the pipeline."""

import datetime as dt
import http.server
import json
import threading

import pytest

from pipeline_patterns.defs.alerts import Notifier
from pipeline_patterns.defs.partitions import REGIONS
from pipeline_patterns.lib.simulated_feed import FeedSettings, region_day_defects
from pipeline_patterns_tests.helpers import TEST_ORDERS_PER_DAY


class Receiver(http.server.ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 that records every POST and answers with `statuses` in turn."""

    def __init__(self, statuses: list[int]):
        self.statuses, self.received = list(statuses), []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((self.path, body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true}')

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def receiver(request):
    server = Receiver(getattr(request, "param", []))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("receiver", [[503, 503]], indirect=True)
def test_a_webhook_event_is_retried_until_delivered_once(receiver, tmp_path):
    notifier = Notifier(path=str(tmp_path / "n.jsonl"), webhook_url=receiver.url + "/hook", webhook_base_delay=0.01)
    notifier.notify("days_held", held={"2024-01-05": ["us-east: quarantined (user_id_not_null)"]})
    assert len(receiver.received) == 3  # two 503s, then delivered
    assert [json.loads(body) for _, body in receiver.received] == lines(tmp_path / "n.jsonl") * 3  # the same record
    payloads = [json.loads(body) for _, body in receiver.received]
    assert {p["event"] for p in payloads} == {"days_held"} and payloads[-1]["held"]["2024-01-05"]
    assert [e["event"] for e in lines(tmp_path / "n.jsonl")] == ["days_held"]


@pytest.mark.parametrize("receiver", [[400]], indirect=True)
def test_an_undeliverable_alert_is_recorded_not_raised(receiver, tmp_path):
    notifier = Notifier(path=str(tmp_path / "n.jsonl"), webhook_url=receiver.url, webhook_base_delay=0.01)
    notifier.notify("final_failure", asset="raw_orders/us_east")  # a 400 is not retried
    assert len(receiver.received) == 1
    undelivered = lines(tmp_path / "n.jsonl")[-1]
    assert undelivered["event"] == "alert_undelivered" and undelivered["of"] == "final_failure"
    assert "400" in undelivered["error"]


def test_slack_gets_one_message_per_event_through_dagster_slack(receiver, tmp_path):
    notifier = Notifier(
        path=str(tmp_path / "n.jsonl"),
        slack_token="xoxb-test",
        slack_channel="#alerts",
        slack_api_url=receiver.url + "/api/",
    )
    notifier.notify("breaker_state_changed", breaker="orders_source", old="closed", new="open")
    ((path, body),) = receiver.received
    assert path == "/api/chat.postMessage"
    message = json.loads(body) if body.startswith(b"{") else dict(p.split("=", 1) for p in body.decode().split("&"))
    assert message["channel"].replace("%23", "#") == "#alerts"
    assert "breaker_state_changed" in message["text"]


def test_a_range_run_reports_each_quarantined_region_day_and_its_held_days_once(default_range):
    """The shared default-config range (conftest.py); the webhook gets these same records (above)."""
    feed = FeedSettings(orders_per_day=TEST_ORDERS_PER_DAY)
    days = [dt.date(2024, 1, 1) + dt.timedelta(i) for i in range(10)]
    bad = sorted(
        (r, d.isoformat())
        for d in days
        for r in REGIONS
        if {"null_user_ids", "collapsed_volume"} & set(region_day_defects(r, d, feed).defects)
    )
    events = lines(default_range.data_dir / "notifications.jsonl")
    quarantined = sorted((e["region"], e["day"]) for e in events if e["event"] == "region_day_quarantined")
    assert quarantined == bad
    held = [e for e in events if e["event"] == "days_held"]
    assert len(held) == 1 and list(held[0]["held"]) == sorted({d for _, d in bad})
