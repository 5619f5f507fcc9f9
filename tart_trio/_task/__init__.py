"""One task: a VM's life from StartTask to DestroyTask, in one cancel scope.

``context`` (what a task gets from the driver), ``runner`` (the life and the stop ladder),
``boot`` (from a configured clone to a guest that answers SSH), ``provision`` (the VM
bundle), ``job`` (the task's ``command``, which is not a Nomad job), ``exec`` (ExecTask and
``nomad alloc exec``), ``recovery`` (RecoverTask), ``pull_only``, ``state`` (the handle's
``driver_state``), ``slots`` (macOS VM slots). Below ``_driver``; uses ``_images``,
``_guest``, ``_tart`` and ``_host``.
"""
