"""Local stand-ins for cloud APIs that have no emulator (the Compute Engine firewall API)."""
