"""``python -m emofuse …`` (also ``torchrun … -m emofuse extract-embeddings …``)."""

import sys

from .cli import main

sys.exit(main())
