"""flowmill workers: sources."""
