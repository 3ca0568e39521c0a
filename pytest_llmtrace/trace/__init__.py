"""The trace model and its on-disk and import formats."""
