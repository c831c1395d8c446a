import sys

from kitchen_lib.cli import main

sys.exit(main())
