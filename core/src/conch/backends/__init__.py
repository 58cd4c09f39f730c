"""Backends built into the core, registered through the same hooks as any plugin."""
