import sys

from crio_fast.cli import main

sys.exit(main())
