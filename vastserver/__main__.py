from vastserver.cli import main

raise SystemExit(main())
