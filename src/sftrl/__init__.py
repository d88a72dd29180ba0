"""sftrl: SFT vs RL fine-tuning, OOD forgetting and singular-vector rotation on the 24-point game."""

__version__ = "0.1.0"
