"""The built-in demo: its data (real cubes, synthetic images) and the end-to-end run."""
