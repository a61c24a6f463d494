"""Models: builders, block taps and safetensors weights."""
from ood_audit.models.arch import ArchSpec, arch_spec, block_candidates, check_blocks
from ood_audit.models.build import ARCHITECTURES, build_model, skeleton
from ood_audit.models.spec import ModelSpec
from ood_audit.models.taps import IMAGENET_MEAN, IMAGENET_STD, TapModel, Taps
from ood_audit.models.weights import infer_num_classes, load_state_strict, load_weights, read_state, save_weights

__all__ = [
    "ARCHITECTURES", "ArchSpec", "ModelSpec", "IMAGENET_MEAN", "IMAGENET_STD", "TapModel", "Taps", "arch_spec",
    "block_candidates", "build_model", "check_blocks", "infer_num_classes", "load_state_strict",
    "load_weights", "read_state", "save_weights", "skeleton",
]
