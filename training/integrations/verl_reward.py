"""The file verl's ``custom_reward_function.path`` points at: verl loads it by its path, so it
only re-exports :func:`training.integrations.verl_loop.compute_score` (repository on PYTHONPATH)."""

from training.integrations.verl_loop import compute_score

__all__ = ["compute_score"]
