"""Trace-driven simulation of the real scheduler core (the same policies, placement and rounds as live)."""
