"""Training on Ray Train (``TorchTrainer``, DDP): cross-entropy, ALPA fine-tuning (MODE-F) and SupCon + ALPA
(MODE-T), with pickle-free checkpoints, resumable runs and recovery from worker failures."""
from ood_audit.training.config import MODES, TrainConfig, TrainResult
from ood_audit.training.trainer import train

__all__ = ["MODES", "TrainConfig", "TrainResult", "train"]
