"""server-hardening: keeps a CircleCI Server installation hardened as CircleCI's guide prescribes.

Data flows one way (see README.md, "How it maps the guide", and docs/guide.md):

    model -> guide -> compiler -> renderers -> drift -> targets -> reconcile -> handlers
                                                                             -> metrics, cli

``model``, ``guide``, ``compiler``, ``renderers`` and ``drift`` are pure: no I/O, no clock, no SDK.
"""

__version__ = "0.1.0"
