"""flowmill workers: runtime."""
