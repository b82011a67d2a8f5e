"""chipforge: chip-design corpora → instruction data → LoRA specialists, on Ray."""

__version__ = "0.1.0"
