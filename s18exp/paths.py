"""Where the package finds its Hydra configs, whatever the working directory."""

from pathlib import Path

# conf/ sits at the top of the repository, beside this package (an editable or source install).
CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"
