import sys

from kitchen_lib.frontend.cli import main

sys.exit(main())
