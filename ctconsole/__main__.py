import sys

from ctconsole.cli import main

sys.exit(main())
