from vastserver.launch import main

raise SystemExit(main())
