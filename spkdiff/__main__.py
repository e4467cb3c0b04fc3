import os
import sys

from spkdiff.cli import main

rc = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # A torchrun rank: everything is written and the process group destroyed; skip interpreter teardown,
    # where gloo's and numba's worker threads can race the C++ static destructors ("terminate called").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)
raise SystemExit(rc)
