"""``curate`` subcommands too large to live in flows/cli.py; each module holds one topic."""
