"""`rl-service sweep`: hyperparameter sweeps on Ray Tune, each trial a whole training run.

grid.py     --grid KEY=V1,V2 / --samples N -> the list of trial points (overrides), each checked
trial.py    the Tune trainable: one `rl-service train` process per trial, its evals reported
sweep.py    run_sweep: the Tuner (restored when the sweep dir has one), results.csv, the plot
"""
