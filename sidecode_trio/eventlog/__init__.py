"""The epoch+cursor event log: pure rules and fold, SQLite store, Trio writer and fan-out."""
