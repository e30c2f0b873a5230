"""``python -m arcforge.pipelines.demo.labels [--dest CORPUS_DIR] [--force]``."""

import sys

from arcforge.pipelines.demo.labels.build import main

sys.exit(main())
