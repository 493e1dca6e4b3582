"""server-hardening: keeps a CircleCI Server installation hardened as CircleCI's guide prescribes.

Data flows one way (docs/architecture.md has the layers, the flow and where each finding is
produced and shown; docs/guide.md the guide itself):

    model -> guide -> compiler -> renderers -> policy, planners -> drift plan
          -> targets (observe, apply) -> reconcile -> service -> handlers
                                                  -> metrics, cli

``model``, ``guide``, ``compiler``, ``renderers``, ``policy``, ``planners`` and ``drift`` are pure:
no I/O, no clock, no SDK. Only ``targets`` talk to APIs; only ``handlers`` and ``runner`` import
kopf. The developer tools are not in this package (``dev/server_hardening_dev``).
"""

__version__ = "0.1.0"
