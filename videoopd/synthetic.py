"""``python -m videoopd.synthetic``: write synthetic grounding videos with known event spans
(:mod:`videoopd.data.synthetic`)."""
import sys

from videoopd.data.synthetic import main

if __name__ == "__main__":
    sys.exit(main())
