"""Compare runs side by side: `python -m s18exp.report SWEEP_DIR [--wandb]`.

collect.py reads run dirs (only what runs left on disk), spec.py is what each run's summary.json says of how
the report shows its task (metric keys, picture files, class names), table.py aggregates runs per task and
combo, figures.py draws, search.py reads the Optuna study of a hyper-parameter search (its sweep dir's
optuna.db), render.py writes markdown / HTML / rich tables, wandb_report.py builds the W&B Report, build.py
puts it together, callback.py runs it at the end of every Hydra multirun.
"""
