"""Entry point of the fake guest's init process (see guest.py)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from faketart.guest import main

main()
