from .random_state_hook import RandomStateHook, preserved_rng

__all__ = ['RandomStateHook', 'preserved_rng']
