"""The policy layer: who owns each observed rule and what it exposes. Pure: no I/O, no SDK.

One chain of named pure checks per target (:mod:`.networkpolicy`, :mod:`.aws`, :mod:`.gcp`) over
rules the adapters have already normalised, all speaking one vocabulary
(:class:`server_hardening.rules.FindingCode`). What every target shares lives in
:mod:`.exposure`: the guide's sensitive ports and "open to the whole internet", judged by what
the addresses mean (the union of a rule's sources), not by how they are spelled. So the same
situation gives the same finding, severity and metric on every target. See docs/architecture.md.
"""
