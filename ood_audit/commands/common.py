"""Arguments shared by several commands (S3 endpoint, Ray address, model description).

Building the parser must stay light: every ``--help`` answers without importing torch, torchvision, Ray,
pyarrow, boto3 or matplotlib. The command modules import those inside their ``run`` functions, and the
vocabularies the options offer are copied here from the modules that own them (each copy is checked
against its source by ``tests/test_cli_help.py``).
"""
from __future__ import annotations

import argparse
import sys

from ood_audit.errors import ConfigError

# ood_audit.models.build.ARCHITECTURES
ARCHITECTURES: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "wide_resnet50_2", "vgg11_bn", "vgg16_bn",
                                  "mobilenet_v2", "mobilenet_v3_large", "densenet121", "resnext50_32x4d",
                                  "resnext101_32x8d", "wide_resnet101_2", "convnext_tiny", "convnext_small",
                                  "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
                                  "efficientnet_v2_s", "regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf",
                                  "regnet_y_3_2gf", "regnet_y_8gf")
# ood_audit.calibration.selection.SELECTORS and DEFAULT_SELECTOR
SELECTORS: tuple[str, ...] = ("normratio", "robust", "validated")
DEFAULT_SELECTOR = "robust"
# ood_audit.scores.probes.DEFAULT_PROBES
DEFAULT_PROBES: tuple[str, ...] = ("jigsaw", "pixel_shuffle", "crop_upscale", "blur", "noise", "mix")
# ood_audit.models.precision.PRECISIONS and DEFAULT_PRECISION
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16")
DEFAULT_PRECISION = "float32"
# ood_audit.report.build.DEFAULT_TOP
DEFAULT_REPORT_TOP = 48
# ood_audit.io.quality.ISSUES (SPEC §14) and ood_audit.sinks.select.ANY_ISSUE
QUALITY_ISSUES: tuple[str, ...] = ("dark", "light", "blurry", "low_information", "grayscale", "odd_aspect_ratio",
                                   "tiny")
ANY_QUALITY_ISSUE = "any"


def add_input_args(p: argparse.ArgumentParser) -> None:
    """What a scan reads, shared by `scan` and `plan` so that a plan sizes exactly what the scan would read."""
    p.add_argument("--bundle", required=True, help="audit bundle directory (local or s3|gs|az://.../bundles/<id>)")
    p.add_argument("--input", action="append", default=[], metavar="PREFIX",
                   help="objects to scan: an s3://, gs:// or az:// prefix, or a local folder; repeatable")
    p.add_argument("--manifest", default=None, help="scan the URIs in this .parquet/.csv manifest instead")


def add_s3_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--s3-endpoint", default=None,
                   help="S3 endpoint URL (default: $AWS_ENDPOINT_URL; credentials from the standard AWS chain)")


def s3_from_args(args: argparse.Namespace):
    from ood_audit.io.fs import S3Config

    return S3Config.from_env(args.s3_endpoint)


def add_ray_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray-address", default=None, help="join this Ray cluster (default: $RAY_ADDRESS, else local)")


def start_ray(args: argparse.Namespace, s3) -> None:
    from ood_audit.ray_setup import init_ray

    env = s3.env() if s3 is not None else {}
    init_ray(args.ray_address, runtime_env={"env_vars": env} if env else None)


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model description (default: model.json beside the weights)")
    g.add_argument("--arch", default=None, choices=ARCHITECTURES, metavar="ARCH", help=", ".join(ARCHITECTURES))
    g.add_argument("--num-classes", type=int, default=None)
    g.add_argument("--small-input", action="store_true", help="CIFAR-style stem (~32 px images)")
    g.add_argument("--image-size", type=int, default=None, help="input size in px (default 32 / 224)")


def spec_from_args(args: argparse.Namespace):
    from ood_audit.models import ModelSpec

    if args.arch is None:
        if args.num_classes is not None or args.image_size is not None:
            raise ConfigError("--num-classes/--image-size need --arch")
        return None
    if args.num_classes is None:
        raise ConfigError("--arch needs --num-classes")
    size = args.image_size or (32 if args.small_input else 224)
    return ModelSpec(args.arch, args.num_classes, args.small_input, size)


def positive(name: str, value: float | int | None) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"--{name} must be > 0, got {value}")


class _DeprecatedAlias(argparse.Action):
    """An option's old name: stores into the new option's ``dest`` and prints a one-line warning to stderr."""

    def __init__(self, option_strings, dest, *, new_name: str, **kwargs) -> None:
        self.new_name = new_name
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"{parser.prog}: warning: {option_string} is deprecated; use {self.new_name}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_deprecated_alias(p: argparse.ArgumentParser, old: str, new: argparse.Action) -> None:
    """Accept ``old`` as a hidden synonym of the option ``new`` (same dest and type; the default is new's)."""
    p.add_argument(old, dest=new.dest, type=new.type, metavar=new.metavar, action=_DeprecatedAlias,
                   new_name=new.option_strings[-1], default=argparse.SUPPRESS, help=argparse.SUPPRESS)
