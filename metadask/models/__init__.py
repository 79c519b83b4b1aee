"""Models: one-vs-rest boosters, linear models, calibration, ensembles, thresholds and the model bundle."""
