"""``python -m tart_trio``: the same as the ``nomad-driver-tart`` executable."""

from tart_trio._main import main

main()
