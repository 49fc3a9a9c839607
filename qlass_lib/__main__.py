import sys

from qlass_lib.cli import main

sys.exit(main())
