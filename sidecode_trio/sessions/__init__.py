"""Session supervision: one supervisor per session, and the registry that owns them."""
