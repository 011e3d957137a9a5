"""State sources: the OSSE nature run and readers for real (ERA5/WeatherBench2) data."""
