"""Reading ``pkiform.toml``: presets, for_each expansion, interpolation, references, checks."""

from pkiform.config.loader import CONFIG_FILE, load_config

__all__ = ["CONFIG_FILE", "load_config"]
