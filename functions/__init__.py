"""Deployable functions: one module per endpoint (`app` for Vercel, `lambda_handler` for Lambda;
never `handler`, which Vercel's Python runtime would take before `app`)."""
