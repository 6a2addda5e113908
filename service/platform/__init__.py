"""Shared by every part: settings, the database and its tables, errors, callers, events, logs, metrics."""
