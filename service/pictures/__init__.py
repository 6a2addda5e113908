"""The pictures the API serves, rendered off the request threads and cached by content."""
