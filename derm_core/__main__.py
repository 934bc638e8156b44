import sys

from derm_core.cli import main

sys.exit(main())
