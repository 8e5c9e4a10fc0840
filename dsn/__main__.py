import sys

from dsn.cli import main

sys.exit(main())
