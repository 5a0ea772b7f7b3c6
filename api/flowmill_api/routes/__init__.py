"""Routes, one module per concern: catalog, windows, latest-state, live, health,
dashboard."""
