"""flowmill."""
