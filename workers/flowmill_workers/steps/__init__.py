"""flowmill workers: steps."""
