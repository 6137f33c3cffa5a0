"""PII scrubbing: finding identifiers in text and redacting or refusing them."""
