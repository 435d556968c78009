"""`rlir human-eval`: A/B trials of two world models, votes in SQLite, win rates with intervals."""
