import pytest


@pytest.fixture(scope="package")
def ray_local():
    """One local Ray for the calibration tests (logical CPUs > cores, so actor pools never starve)."""
    import ray

    from ood_audit.ray_setup import init_ray

    init_ray(num_cpus=4, object_store_memory=256 * 2**20)
    yield ray
    ray.shutdown()
