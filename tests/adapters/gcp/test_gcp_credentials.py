"""A GCP target without credentials: the SDK raises as its clients are built, before any call;
the adapter says what to configure, and the pipeline makes that the target's status."""

from __future__ import annotations

import pytest
from google.auth.exceptions import DefaultCredentialsError

from adapters.gcp.gcp_support import Recorder, fake, gcp_spec, recorder
from builders import OWNER
from fakes.gcp_compute import FakeCompute
from server_hardening.compiler import compile_intent
from server_hardening.model import GcpSpec
from server_hardening.reconcile import Event, run_target
from server_hardening.targets.base import PermanentTargetError
from server_hardening.targets.gcp import GcpClients, GcpTarget

__all__ = ["fake", "recorder"]  # fixtures


def no_credentials(gcp: GcpSpec) -> GcpClients:
    # What google.auth.default() raises on a cluster without Workload Identity or a key file.
    raise DefaultCredentialsError(
        "Your default credentials were not found. To set up Application Default Credentials, "
        "see https://cloud.google.com/docs/authentication/external/set-up-adc"
    )


def test_missing_credentials_are_a_permanent_error_naming_what_to_configure(
    fake: FakeCompute, recorder: Recorder
) -> None:
    spec = gcp_spec(fake)
    assert spec.gcp is not None
    target = GcpTarget.from_rules(
        compile_intent(spec).cloud_rules("gcp"),
        spec.gcp,
        OWNER,
        client_factory=no_credentials,
        record_call=recorder,
    )
    with pytest.raises(PermanentTargetError) as raised:
        target.observe()
    text = str(raised.value)
    assert "no GCP credentials for project circleci-test-1" in text
    assert "Workload Identity" in text and "GOOGLE_APPLICATION_CREDENTIALS" in text
    assert recorder.calls == []  # refused before any call


def test_the_pipeline_reports_it_as_the_targets_error_with_an_event(
    fake: FakeCompute, recorder: Recorder
) -> None:
    spec = gcp_spec(fake)
    gcp = spec.gcp
    assert gcp is not None
    events: list[Event] = []
    report = run_target(
        "gcp",
        lambda: GcpTarget.from_rules(
            compile_intent(spec).cloud_rules("gcp"),
            gcp,
            OWNER,
            client_factory=no_credentials,
            record_call=recorder,
        ),
        spec,
        0,
        events,
    )
    assert not report.observed and "no GCP credentials" in report.last_error
    assert [(e.reason, e.message.split(":")[0]) for e in events] == [("TargetError", "gcp")]
