"""The plugin's version, reported to Nomad in PluginInfo (must be semver)."""

__version__ = "0.1.0"
