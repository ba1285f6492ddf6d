"""The values some config keys may take, as plain data: the config checks (s18exp/config.py) read them here
without loading the code that acts on them (the LR range test, W&B), and the commands that read a checkpoint
without loading the training code."""

from __future__ import annotations

AUTO = "auto"  # the value of trainer.lr that asks for an LR range test before training (s18exp/lr_find/)
TEST_WEIGHTS = ("best", "last")  # eval.weights: checkpoints/best.pt (best validation score) or last.pt (end of training)
WANDB_MODES = ("auto", "online", "offline", "disabled")  # wandb.mode (s18exp/tracking.py)
LR_FIND_RULES = ("min_div10", "steepest")  # trainer.lr_find.rule, the LR range test's pick (s18exp/lr_find/)
