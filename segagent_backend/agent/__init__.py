"""The agent layer: what segments, knowing nothing of HTTP, Redis or Label Studio."""
