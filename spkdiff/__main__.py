from spkdiff.cli import main

raise SystemExit(main())
