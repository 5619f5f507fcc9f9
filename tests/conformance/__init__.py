"""Conformance tests that drive the plugin through nomadsim (a Nomad client stand-in)."""
