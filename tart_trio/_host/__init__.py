"""The host OS: processes, files, FIFOs, users, the login session, disk space, helpers.

``proc`` (process identity and exit), ``safefs`` (files root writes beside Nomad's
world-writable directories), ``fifo`` (Nomad's log FIFOs), ``diskspace``, ``login`` (the GUI
login session), and the two helper processes, started as subcommands of the plugin's own
executable (``helpers``): ``supervisor`` (keeps ``tart run``'s exit status) and ``runas``
(becomes the tart user). ``helpers``, ``supervisor``, ``runas``, ``fifo`` and ``safefs``
import only the standard library and each other: the helpers run without the rest.

This ``__init__`` imports nothing: the helper processes import this package first.
"""
