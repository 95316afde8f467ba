"""``python -m videoopd.tiny``: write a tiny random Qwen-VL checkpoint for dry runs (:mod:`videoopd.qwen.tiny`)."""
import sys

from videoopd.qwen.tiny import main

if __name__ == "__main__":
    sys.exit(main())
