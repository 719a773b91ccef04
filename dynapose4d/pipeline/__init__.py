"""The run: its config, the run folder and manifest, the plan (hashes; skip, resume or rerun), the stage runner,
the other ranks of a multi-device run, RUN/export, `run` command lines, evaluate, experiments, showcase."""
