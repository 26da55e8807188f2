from .torch_compat import patch_checkpoint_loading, safe_checkpoint_globals

__all__ = ['patch_checkpoint_loading', 'safe_checkpoint_globals']
