"""Where test spans go: the Phoenix export's naming, spans, REST calls and OTLP sender."""
