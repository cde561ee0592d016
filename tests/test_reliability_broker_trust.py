"""The broker-trust cases of ``hdus-edge bench reliability`` at small size: every must-be-zero count is 0,
and the takeover they count is real (it succeeds on logins whose client ids are not bound)."""

from __future__ import annotations

from hdus_edge.reliability.cases_broker_trust import (
    forgotten_revoked,
    session_takeover,
    tls_only,
)
from hdus_edge.reliability.runner import summarize


def test_session_takeover_is_refused_on_the_generated_config_and_real_without_binding(tmp_path):
    figures = session_takeover(tmp_path, n=2)
    assert figures["attempts"] == 4
    assert figures["accepted"] == figures["victims_kicked"] == figures["victim_messages_lost"] == 0, figures
    assert figures["accepted_without_binding"] == 4 and figures["kicked_without_binding"] > 0, figures


def test_forgotten_device_is_revoked_and_tls_is_the_only_listener(tmp_path):
    revoked = forgotten_revoked(tmp_path / "revoked", wait_s=3.0)
    tls = tls_only(tmp_path / "tls")
    assert revoked["logins_deleted"] == 2 and revoked["away_holder_forgot"], revoked
    out = summarize({"forgotten_revoked": revoked, "tls_only": tls})
    assert out["failed_checks"] == [] and out["totals"]["revocation_failures"] == 0, out
    assert tls["listeners"] == 1 and tls["tls_with_client_cert_accepted"] == 1
