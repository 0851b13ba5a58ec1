from bsnet.cli import main

raise SystemExit(main())
