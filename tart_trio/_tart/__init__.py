"""The tart adapter: the only code that runs the ``tart`` executable.

``cli`` (where tart is, its environment, its errors), ``argv`` (the argv builders),
``images`` (how Tart stores and pulls images), ``vms``, ``processes`` (processes acting on
one VM), ``versions``, ``softnet`` (whether softnet can get root for tart's user).
"""
