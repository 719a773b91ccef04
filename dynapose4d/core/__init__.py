"""The lowest layer: errors, file and image I/O, cameras, rotations, precision, memory, seeding, typed
settings. Imports nothing above it."""
