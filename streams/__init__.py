"""Event I/O: versioned event schemas, the event bus adapters and the decision/feedback joiner."""
