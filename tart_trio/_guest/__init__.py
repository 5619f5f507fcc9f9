"""Everything that happens inside the guest, over SSH.

Layers, bottom up: ``ssh`` (the connection: host-key pinning, quoting, commands, streams,
shutdown; the only module that imports asyncssh), ``session`` (commands in their own SSH
session, killed with everything they started when left early; one shared connection per
task), ``cursor`` and ``logs`` (the guest's logs into the task's stdout FIFO, resumable
without gap or duplicate), ``exec`` (ExecTask and ``nomad alloc exec``).
"""
