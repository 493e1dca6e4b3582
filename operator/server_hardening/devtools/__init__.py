"""Development tools: local control plane; not used by the operator at run time."""
