"""The torch-free contract between the server process and the job processes: hyperparameters, the job spec, row formats, event lines, the memory estimate."""
