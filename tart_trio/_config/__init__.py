"""Configuration: the job's ``config { }`` and the agent's plugin block.

``task`` and ``plugin`` (msgspec Structs, the single source of truth, each next to its
validation), ``decode`` (msgpack to Structs, errors naming the field), ``base`` (the common
Struct), ``hclspec`` (the hclspec Nomad parses HCL with, derived from the Structs),
``durations``.
"""
