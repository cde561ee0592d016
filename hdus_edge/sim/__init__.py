"""Fleet experiments: the in-process demo now; the MQTT fleet simulator and baselines build on it."""
