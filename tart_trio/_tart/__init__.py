"""The tart adapter: the only code that runs the ``tart`` executable."""
