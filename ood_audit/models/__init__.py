"""Models: builders, block taps and safetensors weights."""
from .arch import ArchSpec, arch_spec, block_candidates, check_blocks
from .build import ARCHITECTURES, build_model
from .spec import ModelSpec
from .taps import IMAGENET_MEAN, IMAGENET_STD, TapModel, Taps
from .weights import infer_num_classes, load_state_strict, load_weights, read_state, save_weights

__all__ = [
    "ARCHITECTURES", "ArchSpec", "ModelSpec", "IMAGENET_MEAN", "IMAGENET_STD", "TapModel", "Taps", "arch_spec",
    "block_candidates", "build_model", "check_blocks", "infer_num_classes", "load_state_strict",
    "load_weights", "read_state", "save_weights",
]
