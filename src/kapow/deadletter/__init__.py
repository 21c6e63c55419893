"""Error topics: publishing failed packets, and the dead-letter queue operations on system errors."""
