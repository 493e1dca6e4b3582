"""Developer tools for a source checkout: the local control plane and the demo.

Not part of the product: the wheel and the image hold the operator and its CLI only. Installed
editable by ``scripts/test``; the ``server_hardening.cli`` entry point adds ``hardening dev`` and
``hardening demo`` to the product's CLI when this package is present.
"""
