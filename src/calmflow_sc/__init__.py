"""calmflow-sc."""
