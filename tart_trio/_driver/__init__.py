"""The driver: what Nomad's DriverPlugin methods do, for every task at once.

``driver`` (the task table and the driver-wide nursery), ``names`` (which VM name a task
gets, whose VM a name is), ``fingerprint``, ``capabilities`` (what this host can do for a
job), ``policy`` (the operator's controls), ``events``, ``stats``, ``reconcile`` (VMs no task
owns). Below ``_rpc``; uses ``_task`` for each task's life and everything below it.
"""
