"""Serving: a TF Serving SavedModel of a run's encoder and classifier
(`export`)."""
