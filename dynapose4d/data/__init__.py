"""Scene folders (loading, validation) and synthetic articulated scenes with ground truth."""
