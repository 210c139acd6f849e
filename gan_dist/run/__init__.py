"""The run-directory protocol that training, `gan-dist launch` and the CLI share: the run
lock, status.json, stop signals and their exit codes, and the checkpoint folders."""
