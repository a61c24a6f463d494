"""Arguments shared by several commands (S3 endpoint, Ray address, model description)."""
from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..models import ARCHITECTURES


def add_s3_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--s3-endpoint", default=None,
                   help="S3 endpoint URL (default: $AWS_ENDPOINT_URL; credentials from the standard AWS chain)")


def s3_from_args(args: argparse.Namespace):
    from ..io.fs import S3Config

    return S3Config.from_env(args.s3_endpoint)


def add_ray_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray-address", default=None, help="join this Ray cluster (default: $RAY_ADDRESS, else local)")


def start_ray(args: argparse.Namespace, s3) -> None:
    from ..ray_setup import init_ray

    env = s3.env() if s3 is not None else {}
    init_ray(args.ray_address, runtime_env={"env_vars": env} if env else None)


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model description (default: model.json beside the weights)")
    g.add_argument("--arch", default=None, choices=ARCHITECTURES, metavar="ARCH", help=", ".join(ARCHITECTURES))
    g.add_argument("--num-classes", type=int, default=None)
    g.add_argument("--small-input", action="store_true", help="CIFAR-style stem (~32 px images)")
    g.add_argument("--image-size", type=int, default=None, help="input size in px (default 32 / 224)")


def spec_from_args(args: argparse.Namespace):
    from ..models import ModelSpec

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
