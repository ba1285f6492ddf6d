"""Compare runs side by side: `python -m s18exp.report SWEEP_DIR [--baseline LABEL] [--wandb]`.

collect.py reads run dirs (only what runs left on disk, as data; configs through configs.py, without
resolvers), spec.py is what each run's summary.json says of how the report shows its task (metric keys,
picture files, class names, the scores its test_items.npz recomputes), variants.py makes the rows (one per
setting of the config keys the runs differ in), stats.py and comparisons.py say how sure each row's score and
each difference is, table.py puts sections, rows and cells together, figures.py draws, search.py reads the
Optuna study of a hyper-parameter search (its sweep dir's optuna.db), render.py and comparison_text.py write
markdown / HTML / rich tables, report_json.py report.json, wandb_report.py builds the W&B Report, build.py
puts it together, callback.py runs it at the end of every Hydra multirun.
"""
