"""Jobs: spec schemas, admission (queue room, cost), enqueue / get / cancel / delete, search, reuse."""
