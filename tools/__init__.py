"""The foblab command line: the only place that combines firmware_sim and validator, and that prints."""
