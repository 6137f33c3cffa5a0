"""Generation: the long-lived inference process, and the server's handle on it."""
