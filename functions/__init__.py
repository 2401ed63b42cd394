"""Deployable functions: one module per endpoint (`app` for Vercel, `handler` for Lambda)."""
