"""Artifacts: the store interface and the local filesystem behind it, with verified reads."""
