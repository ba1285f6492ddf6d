"""s18exp's Optuna sweeper for Hydra (`hydra/sweeper=s18exp_optuna`); see optuna_sweeper.py."""
