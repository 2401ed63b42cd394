"""Scheduled functions: one module per job (`lambda_handler`: Lambda schedules, `app`:
Vercel Cron)."""
