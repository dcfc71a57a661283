"""A development stand-in for the central platform: a tus upload server and its helpers."""
