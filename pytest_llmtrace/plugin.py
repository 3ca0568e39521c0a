"""pytest hooks only; the work is done in the modules these hooks call."""
