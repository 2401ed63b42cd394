"""Scheduled functions: one module per job (`handler`: Lambda schedules, `app`: Vercel Cron)."""
