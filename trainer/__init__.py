"""The training/evaluation layer: datasets, simulated-click evaluation; imports the agent layer only."""
