"""KeyFlash's thin core, shared by every HTTP and cron function.

Modules import lazily and only what they use: each function's import set is its cold start.
"""
