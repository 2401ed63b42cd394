"""Request and response shapes of the original KeyFlash API (spec §2), with its messages."""
