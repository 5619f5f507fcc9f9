"""Everything that happens inside the guest, over SSH.

Layers, bottom up: ``ssh`` (the connection: host-key pinning, quoting, commands, streams,
shutdown; the only module that imports asyncssh), ``session`` (commands in their own SSH
session, killed with everything they started when left early; one shared connection per
task), ``sink`` (a task's log FIFO: backpressure instead of loss, cursors saved once
delivered), ``cursor`` and ``logs`` (the guest's logs into the stdout sink, resumable
without gap, or repeat but the one write a kill interrupts), ``scripts`` (the runner's
POSIX ``sh`` scripts, pure text), ``command`` (a task's command, detached in the guest
and followed from files).
ExecTask is an operation on a task: ``_task.exec``.
"""
