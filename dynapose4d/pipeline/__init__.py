"""The run: its config, the run folder and manifest, the stage runner, `run` command lines, evaluate,
experiments, showcase."""
