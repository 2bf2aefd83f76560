from mpcs.cli import main

raise SystemExit(main())
