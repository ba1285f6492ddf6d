"""The LR range test: `python -m s18exp.lr_find [overrides]`, and `trainer.lr=auto` in every training run.

- `range_test`: the test and its pick, with no output of its own (the method is described there);
- `display`: the terminal table and warnings, `lr_find.json` and `lr_find.png`, and the W&B logging;
- `auto`: the test of a composed config on its training split, and what `trainer.lr=auto` does in a run;
- `__main__`: the command.
"""
