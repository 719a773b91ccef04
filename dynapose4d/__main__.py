import sys

from dynapose4d.cli import main

sys.exit(main())
