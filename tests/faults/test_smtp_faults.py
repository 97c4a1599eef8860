"""Unknown-EPN alerts while the SMTP server is down, refusing, or silent; then up again.

The watch cycles run the sensor's alert requests in-process (`run_cycle`, as
tests/integration/test_alerting.py does). Whatever the outage, once the server is back
every unmapped EPN is in exactly one e-mail: 0 lost, 0 duplicates."""

from __future__ import annotations

import socket
import time
from collections import Counter

from assyncy_dagster.cycle import run_cycle
from assyncy_dagster.names import ALERT_JOB
from assyncy_dagster.state import ALERTED_KEY, read_epns
from assyncy_dagster_demo.testing.smtp_sink import SmtpSink, _FreePortController, _Handler
from tests.support.faultkit import figure

UNMAPPED = ["14500a", "14777a"]  # the demo's unmapped, ended EPNs


class _SamePortSink(SmtpSink):
    """The SMTP sink restarted on the port it had before (a server coming back up)."""

    def __init__(self, port: int):
        super().__init__()
        self._fixed_port = port

    def start(self) -> SmtpSink:
        controller = _FreePortController(_Handler(self), hostname=self.host, port=self._fixed_port)
        controller.start()
        self._controller = controller
        return self


def _alert_cycle(stack):
    report = run_cycle(stack.config_path, stack.instance)
    outcomes = report.by_job(ALERT_JOB)
    assert outcomes or (report.skipped or "").startswith("nothing to do"), report
    return outcomes


def test_alerts_survive_an_smtp_outage_without_loss_or_duplicates(stack):
    stack.configure(**{"smtp-timeout-seconds": 1})
    stack.lay_out("14500a")
    # The alerts' own server, down from the start: its address refuses connections.
    first_run = SmtpSink().start()
    port = first_run.port
    first_run.stop()
    stack.configure(**{"epnalert-email-smtp": f"127.0.0.1:{port}"})
    failures: list[str] = []

    [first] = _alert_cycle(stack)
    assert not first.success and "connection refused" in first.error, first.error
    failures.append("connection refused")
    [again] = _alert_cycle(stack)  # still down: tried again, not forgotten
    assert not again.success
    failures.append("connection refused")

    stack.lay_out("14777a")  # a second unmapped EPN appears during the outage
    silent = socket.socket()  # listening but never answering: no greeting
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    stack.configure(**{"epnalert-email-smtp": f"127.0.0.1:{silent.getsockname()[1]}"})
    started = time.monotonic()
    [hung] = _alert_cycle(stack)
    silent.close()
    assert not hung.success and "within 1 s" in hung.error, hung.error
    assert time.monotonic() - started < 30
    failures.append("no greeting")

    sink = _SamePortSink(port).start()  # back up, at the same address
    try:
        stack.configure(**{"epnalert-email-smtp": f"127.0.0.1:{port}"})
        sink.refuse_next(1, "554 5.6.0 Message refused for testing")
        [refused] = _alert_cycle(stack)
        assert not refused.success and "554" in refused.error, refused.error
        failures.append("554 refused")
        sink.refuse_next(1, "451 4.3.0 Try again later")
        [deferred] = _alert_cycle(stack)
        assert not deferred.success and "451" in deferred.error, deferred.error
        failures.append("451 deferred")
        assert sink.messages == []
        assert read_epns(stack.settings().alerted_path, ALERTED_KEY) == set(), "nothing recorded as alerted yet"

        [sent] = _alert_cycle(stack)  # the server accepts again
        assert sent.success, sent.error
        messages = sink.wait_for(1)
        for _ in range(2):  # later cycles send nothing more
            assert _alert_cycle(stack) == []
        time.sleep(0.5)
        messages = sink.messages
    finally:
        sink.stop()
    text = [m.get_body(("plain",)).get_content() for m in messages]
    seen = Counter(epn for body in text for epn in UNMAPPED if epn in body)
    lost = [epn for epn in UNMAPPED if seen[epn] == 0]
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    figure(
        f"smtp faults: {len(failures)} failed alert runs ({', '.join(failures)}), then {len(messages)} e-mail; "
        f"{len(lost)} lost alerts, {duplicates} duplicates"
    )
    assert lost == [] and duplicates == 0
    assert len(messages) == 1
    assert read_epns(stack.settings().alerted_path, ALERTED_KEY) == set(UNMAPPED)
    assert stack.smtp.messages == []
