"""The ground every layer may import: the package's errors, the settings registry, and text and URLs made
safe to print."""
