"""Predictions and exported models for the API, through the inference helper process."""
