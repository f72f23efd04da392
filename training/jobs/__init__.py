"""Training jobs: a folder per job, its own process, the machine-wide GPU queue and the run that trains it."""
