"""Backends: where experiments change traffic and generate load (the local mesh or a cluster)."""
