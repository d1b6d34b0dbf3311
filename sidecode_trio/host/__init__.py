"""The host the daemon runs on: what it must do to the machine itself (keep it awake)."""
