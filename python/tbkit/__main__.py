import sys

from tbkit.cli import main

sys.exit(main())
