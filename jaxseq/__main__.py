"""``python -m jaxseq``: the ``jaxseq`` command line (see ``jaxseq.cli``)."""
import sys

from jaxseq.cli import main

if __name__ == "__main__":
  sys.exit(main())
