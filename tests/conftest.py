"""Shared pytest settings. Tiers: unit (pure), golden, adapters (moto, the GCP fake), e2e (real
kube-apiserver), packaging (helm, promtool)."""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile("ci")
