"""Exports: one module per target format, each with its parity check (see export_run)."""
