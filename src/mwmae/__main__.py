import sys

from mwmae.cli import main

sys.exit(main())
