"""Stand-in for transformers_stream_generator (oracle tests only; streaming chat is never used)."""
