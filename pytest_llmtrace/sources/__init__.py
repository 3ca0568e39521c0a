"""Where golden traces come from: capture from Phoenix, the import formats, redaction."""
