"""Decisions: the append-only decision log and override tables that serving writes and
monitoring, governance and audits read."""
