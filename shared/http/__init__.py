"""The HTTP layer every function shares: app factory, error envelope, guards, usage records."""
