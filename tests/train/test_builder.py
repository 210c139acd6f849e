"""What `train.builder` makes from a recipe before the first step."""

from __future__ import annotations

import pytest

from gan_dist.config.recipe import load_recipe


@pytest.fixture
def fresh_accelerate():
    """Accelerate keeps one state per process; each test here starts and leaves it empty."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.mark.parametrize(
    ("settings", "bucket_mb", "hook"),
    [([], 25, "no"), (["launch.bucket_mb=100", "launch.grad_compression=bf16"], 100, "bf16")],
)
def test_the_recipe_sets_ddps_buckets_and_gradient_compression(
    fresh_accelerate, settings, bucket_mb, hook
):
    """launch.bucket_mb and launch.grad_compression are what the scaling model in
    benchmarks/multinode.py tells a user to change; they must reach DDP."""
    from gan_dist.train.builder import accelerator_for

    recipe = load_recipe("quickstart", ["data.train=shards", *settings])
    accelerator, _ = accelerator_for(recipe)
    assert accelerator.ddp_handler.bucket_cap_mb == bucket_mb
    assert accelerator.ddp_handler.comm_hook.value == hook


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("launch.bucket_mb=0", "launch.bucket_mb"),
        ("launch.bucket_mb=true", "launch.bucket_mb"),  # not 1 MB
        ("launch.rank_timeout_s=true", "launch.rank_timeout_s"),  # not a 1 s timeout
        ("launch.grad_compression=fp8", "'bf16'"),
    ],
)
def test_a_wrong_gradient_setting_is_named(value, said):
    from gan_dist.core.errors import RecipeError

    with pytest.raises(RecipeError, match=said):
        load_recipe("quickstart", ["data.train=shards", value])
