"""The worker's side: claim, heartbeat, fenced endings, hand back, the reaper, the registry, wake-up."""
