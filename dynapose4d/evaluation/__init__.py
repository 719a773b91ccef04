"""Scoring a 4D model against a scene's gt/ folder: reading gt, image and pose metrics, the one scorer, reports."""
