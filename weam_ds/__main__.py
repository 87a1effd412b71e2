import sys

from weam_ds.cli import main

sys.exit(main())
