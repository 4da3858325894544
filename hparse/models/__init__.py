"""Models of the four methods, built by name through ``build_model``."""
