"""Forecast models: the background generator of the cycle (contract in `base`)."""
