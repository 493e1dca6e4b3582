"""Per-target pure planners: a drift :class:`~server_hardening.drift.Plan` becomes the ordered
writes one target's API needs (batching, quota, add before remove). Pure: no I/O, no SDK; the
adapters execute what these return and nothing else decides the order."""
