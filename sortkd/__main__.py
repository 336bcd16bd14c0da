import sys

from sortkd.cli import main

sys.exit(main())
