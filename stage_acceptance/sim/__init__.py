"""The built-in simulated microscope."""
