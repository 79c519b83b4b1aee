"""Post-training analysis: pure metric functions, then artifacts rendered from results."""
