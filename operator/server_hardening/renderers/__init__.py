"""Rules -> what each target takes: NetworkPolicy manifests, EC2 IpPermissions, GCP Firewalls.

Pure: no I/O, no SDK imports here. Every rendered rule carries the guide rows it implements (an
annotation, a description).
"""
