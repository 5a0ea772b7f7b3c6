"""flowmill workers: sinks."""
